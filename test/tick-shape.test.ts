import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, open, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { heldTickObject, holdTickShape } from '../lib/tick-shape.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const built = existsSync(new URL('../dist/lib/index.js', import.meta.url))

t.test('the held object is a tick object: the callback that reached it, and the async ids', async (t) => {
  holdTickShape()
  holdTickShape()
  await new Promise<void>((resolve) => { process.nextTick(resolve) })
  const held = heldTickObject() as Record<string | symbol, unknown> | undefined
  t.type(held, 'object', 'a tick object is held once its tick has run')
  t.type(held?.callback, 'function', 'it has the tick object\'s callback')
  t.same(held?.args, [0], 'and its args')
  t.equal(Object.getOwnPropertySymbols(held).length >= 2, true, 'and its async id symbols')
})

// The states of nextTick's DefineKeyedOwnPropertyInLiteral feedback slots, as %DebugPrint shows
// them: before the fixture's full GCs, and after them.
// V8 prints with C stdio, which loses part of its output into a pipe a Node
// process has made non-blocking: the child writes to a file instead.
async function literalSlots (mode: 'plugin' | 'control'): Promise<{ before: string[], after: string[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'tick-shape-'))
  const file = join(dir, 'print.txt')
  const out = await open(file, 'w')
  try {
    // Old space large enough that no full GC is due in the start; the GCs are the fixture's.
    // Through `env -i`: tap adds its loader to every child's NODE_OPTIONS, and its
    // coverage (V8's precise coverage) turned the slots in the child's start.
    const child = spawn('env', ['-i', `PATH=${process.env.PATH ?? ''}`, process.execPath, '--initial-old-space-size=256', '--allow-natives-syntax', '--expose-gc', 'test/fixtures/tick-shape.mjs', mode], {
      cwd: root,
      stdio: ['ignore', out.fd, 'inherit'],
      timeout: 30_000
    })
    const [code, signal] = await once(child, 'exit') as [number | null, string | null]
    if (code !== 0) throw new Error(`the ${mode} fixture exited with ${code ?? signal}`)
    const prints = (await readFile(file, 'utf8')).split('DebugPrint:').slice(1)
    const slots = (print: string | undefined): string[] => [...(print ?? '').matchAll(/DefineKeyedOwnPropertyInLiteral (\w+)/g)].map((m) => m[1]!)
    return { before: slots(prints[0]), after: slots(prints[1]) }
  } finally {
    await out.close()
    await rm(dir, { recursive: true, force: true })
  }
}

const allMono = (slots: string[]): boolean => slots.length >= 4 && slots.every((s) => s === 'MONOMORPHIC')

/**
 * A run whose start left the slots monomorphic: something in a process's start
 * (a full GC, or coverage, which the env -i above keeps out) can turn them
 * before any module of the app runs, and nothing can turn them back. Up to 5 runs.
 */
async function cleanStart (mode: 'plugin' | 'control'): Promise<{ before: string[], after: string[], runs: number }> {
  let last: { before: string[], after: string[] } = { before: [], after: [] }
  for (let runs = 1; runs <= 5; runs++) {
    last = await literalSlots(mode)
    if (allMono(last.before)) return { ...last, runs }
  }
  throw new Error(`5 ${mode} runs in a row began with nextTick's literal slots turned already (${last.before.join(' ')})`)
}

// The built package (npm test builds before tap).
t.test('with the plugin, full GCs between ticks leave nextTick\'s literal slots monomorphic; without it they turn megamorphic', { skip: built ? false : 'dist/ not built: run npm run build' }, async (t) => {
  const control = await cleanStart('control')
  t.ok(control.after.length >= 4, `nextTick's literal slots are found in V8's print (${control.after.length})`)
  t.ok(control.after.includes('MEGAMORPHIC'), `without the plugin the GCs turn the slots megamorphic: the case the plugin guards against still happens (${control.after.join(' ')}; run ${control.runs})`)
  const plugin = await cleanStart('plugin')
  t.ok(plugin.after.length >= 4, `nextTick's literal slots are found in V8's print (${plugin.after.length})`)
  t.same(plugin.after.filter((s) => s !== 'MONOMORPHIC'), [], `with the plugin imported every literal slot stays monomorphic through the GCs (${plugin.after.join(' ')}; run ${plugin.runs}, before the GCs ${plugin.before.join(' ')})`)
})

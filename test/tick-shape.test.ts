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

// The states of nextTick's DefineKeyedOwnPropertyInLiteral feedback slots, as %DebugPrint shows them.
// V8 prints with C stdio, which loses part of its output into a pipe a Node
// process has made non-blocking: the child writes to a file instead.
async function literalSlots (mode: 'plugin' | 'control'): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), 'tick-shape-'))
  const file = join(dir, 'print.txt')
  const out = await open(file, 'w')
  try {
    // Old space large enough that no full GC falls in the start (before the plugin is imported:
    // on a busy machine an incremental one can, and slots it turns stay turned); the GCs are the
    // fixture's. No NODE_OPTIONS: the test runner's loaders stay out of the child.
    const child = spawn(process.execPath, ['--initial-old-space-size=256', '--allow-natives-syntax', '--expose-gc', 'test/fixtures/tick-shape.mjs', mode], {
      cwd: root,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', out.fd, 'inherit'],
      timeout: 30_000
    })
    const [code, signal] = await once(child, 'exit') as [number | null, string | null]
    if (code !== 0) throw new Error(`the ${mode} fixture exited with ${code ?? signal}`)
    const print = await readFile(file, 'utf8')
    return [...print.matchAll(/DefineKeyedOwnPropertyInLiteral (\w+)/g)].map((m) => m[1]!)
  } finally {
    await out.close()
    await rm(dir, { recursive: true, force: true })
  }
}

// The built package (npm test builds before tap).
t.test('with the plugin, full GCs between ticks leave nextTick\'s literal slots monomorphic; without it they turn megamorphic', { skip: built ? false : 'dist/ not built: run npm run build' }, async (t) => {
  const control = await literalSlots('control')
  t.ok(control.length >= 4, `nextTick's literal slots are found in V8's print (${control.length})`)
  t.ok(control.includes('MEGAMORPHIC'), `without the plugin the slots turn megamorphic: the case the plugin guards against still happens (${control.join(' ')})`)
  const plugin = await literalSlots('plugin')
  t.ok(plugin.length >= 4, `nextTick's literal slots are found in V8's print (${plugin.length})`)
  t.same(plugin.filter((s) => s !== 'MONOMORPHIC'), [], `with the plugin registered every literal slot stays monomorphic (${plugin.join(' ')})`)
})

// Runs tap, passes its output through, and ends with the line CI reads:
// "N passed, N failed" (", N skipped" when any), taken from tap's own
// closing summary "# { total: N, pass: N, fail: N, ... }". Keeps tap's exit code.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

const tapDir = join(process.cwd(), 'node_modules', 'tap')
const tapBin = join(tapDir, JSON.parse(readFileSync(join(tapDir, 'package.json'), 'utf8')).bin.tap)

const child = spawn(process.execPath, [tapBin, ...process.argv.slice(2)], {
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, FORCE_COLOR: '0', TAP_COLOR: '0' }
})

let tail = ''
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk)
  tail = (tail + chunk.toString('utf8')).slice(-8192)
})

child.on('close', (code, signal) => {
  const counts = parseSummary(tail)
  const exitCode = code ?? (signal ? 1 : 0)
  if (counts) {
    const skipped = counts.skip + counts.todo
    process.stdout.write(`\n${counts.pass} passed, ${counts.fail} failed${skipped > 0 ? `, ${skipped} skipped` : ''}\n`)
  } else {
    process.stdout.write(`\n0 passed, ${exitCode === 0 ? 0 : 1} failed\n`)
  }
  process.exit(exitCode)
})

function parseSummary (text) {
  const lines = text.split('\n').reverse()
  for (const line of lines) {
    const m = /^#\s*\{(.*)\}\s*$/.exec(line.trim())
    if (!m) continue
    const field = (name) => {
      const f = new RegExp(`\\b${name}:\\s*(\\d+)`).exec(m[1])
      return f ? Number(f[1]) : 0
    }
    if (!/\btotal:/.test(m[1])) continue
    return { pass: field('pass'), fail: field('fail'), skip: field('skip'), todo: field('todo') }
  }
  return null
}

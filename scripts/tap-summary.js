// Runs tap, passes its output through, and ends with the line CI reads:
// "N passed, N failed" (", N skipped" when any), taken from tap's own
// closing summary "# { total: N, pass: N, fail: N, ... }". Keeps tap's exit code.
// When a test failed, a "failed tests:" block (file > subtest > assertion, and
// the first lines of its diagnostic) comes just before that line, so a log's
// tail says which test failed.
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
let partial = ''
const failures = new Failures()
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk)
  const text = chunk.toString('utf8')
  tail = (tail + text).slice(-8192)
  const lines = (partial + text).split('\n')
  partial = lines.pop() ?? ''
  for (const line of lines) failures.line(line)
})

child.on('close', (code, signal) => {
  if (partial) failures.line(partial)
  const counts = parseSummary(tail)
  const exitCode = code ?? (signal ? 1 : 0)
  const report = failures.report()
  if (report) process.stdout.write(`\n${report}`)
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

// Failures follows tap's TAP stream: "# Subtest: name" opens a level, "not ok N - desc"
// at a level whose subtest is not desc itself is a failed assertion (a leaf); the
// indented YAML block after it is its diagnostic.
function Failures () {
  const names = []
  const found = []
  let diag = null
  const MAX = 20
  const DIAG_LINES = 10
  // the diagnostic's keys left out: where in the source is enough with file and line
  const SKIP = new Set(['stack', 'source', 'columnNumber', 'typeName', 'methodName', 'functionName', 'isToplevel', 'compare', 'at'])
  return {
    line (raw) {
      const line = raw.replace(/\r$/, '')
      const depth = Math.floor((/^ */.exec(line)[0].length) / 4)
      const body = line.trim()
      if (diag) {
        if (body === '...' || (body !== '' && depth <= diag.depth && !line.startsWith(' '.repeat(diag.depth * 4 + 2)))) {
          diag = null
        } else {
          const text = line.slice(diag.depth * 4 + 2)
          const key = /^(\s*)([A-Za-z]+):/.exec(text)
          if (key) diag.skip = SKIP.has(key[2]) && (key[1].length <= diag.keyIndent || diag.keyIndent < 0)
          if (key && !diag.skip && diag.keyIndent < 0) diag.keyIndent = key[1].length
          if (body !== '---' && body !== '' && !diag.skip && diag.lines.length < DIAG_LINES) diag.lines.push(text)
          return
        }
      }
      const sub = /^# Subtest: (.*)$/.exec(body)
      if (sub) {
        names.length = depth
        names[depth] = sub[1]
        return
      }
      const bad = /^not ok \d+ - (.*?)(?: # time=[0-9.]+m?s)?$/.exec(body)
      if (!bad) return
      if (names[depth] === bad[1]) return // a subtest that failed because of what it holds
      if (found.length >= MAX) { found.overflow = (found.overflow ?? 0) + 1; return }
      const entry = { path: [...names.slice(0, depth), bad[1]], lines: [] }
      found.push(entry)
      diag = { depth, lines: entry.lines, skip: false, keyIndent: -1 }
    },
    report () {
      if (found.length === 0) return ''
      const out = ['failed tests:']
      for (const f of found) {
        out.push(`  not ok: ${f.path.map((p) => p.length > 200 ? p.slice(0, 200) + '…' : p).join(' > ')}`)
        for (const l of f.lines) out.push(`      ${l.length > 200 ? l.slice(0, 200) + '…' : l}`)
      }
      if (found.overflow) out.push(`  and ${found.overflow} more`)
      return out.join('\n') + '\n'
    }
  }
}

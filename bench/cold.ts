// Cold start: three targets, one of them slow (or answering 503 to every
// second request, or none odd), and a gateway started fresh for every run,
// loaded at once, with no warm-up excluded: every figure counts from the first
// request. Plain @fastify/http-proxy (over undici's BalancedPool), twice (A and
// A', two processes: their difference is the noise), side by side with this
// plugin under each balance policy asked for, the bare Node proxy (bench/bare.ts:
// node:http and undici, round robin, no framework: Node's own ceiling here) and,
// where `haproxy` is on the PATH, HAProxy with `balance leastconn` (the proxy the
// issue measured against; its threads are its default, one per core).
//
//   npm run bench:cold
//   COLD_SCENARIOS=slow COLD_POLICIES=peak-ewma,least-request,round-robin npm run bench:cold
//
// Per arm, the median over the rounds of: requests per second, p50 / p99 /
// p99.9 latency (ms) over the whole run, the p99 of the answers after its
// first second (past the process's own cold start), the odd target's share of the
// requests the targets received (over the whole run, and after the first
// second), the spread between the targets' counts (max / min - 1; with all
// targets equal, the only scenario it means anything in), and answers that were not 2xx.
//
// Environment: COLD_SCENARIOS (slow, flaky, equal: all), COLD_POLICIES
// (peak-ewma,least-request), COLD_DURATION (s, 10), COLD_CONNECTIONS (64),
// COLD_ROUNDS (3), COLD_SPLIT (ms, 1000: "after the first second"),
// COLD_HAPROXY (0: no HAProxy arm even where it is installed).
// Results also go to .bench/cold.json.
import { mkdir, writeFile } from 'node:fs/promises'
import { askUsage, forkTracked, listening, stopChild } from './children.js'
import type { Child } from './children.js'
import { childrenKilledOnExit } from './protocol.js'
import { haproxyPath, startHaproxy } from './haproxy.js'
import { runLoad, stopAllLoad } from './load.js'
import type { GatewayConfig, UpstreamBehaviour, UpstreamConfig } from './scenarios.js'
import type { BalancePolicy } from '../types/index.js'

const START_TIMEOUT = 15_000
const USAGE_TIMEOUT = 2_000
const STOP_TIMEOUT = 3_000
const BODY = 100

interface ColdScenario {
  name: string
  description: string
  targets: UpstreamBehaviour[]
  /** the target the shares are of: the odd one (null: all equal) */
  odd: number | null
  /** what the issue asks of it */
  goal: string
}

const ok: UpstreamBehaviour = { kind: 'ok', bodyBytes: BODY }
const scenarios: ColdScenario[] = [
  {
    name: 'slow',
    description: 'one of three targets answers after 200 ms',
    targets: [ok, ok, { kind: 'slow', bodyBytes: BODY, delayMs: 200 }],
    odd: 2,
    goal: 'the slow target under 0.5% of the first 10 s, p99 under 20 ms at 64 connections'
  },
  {
    name: 'flaky',
    description: 'one of three targets answers 503 to every second request',
    targets: [ok, ok, { kind: 'flaky', bodyBytes: BODY, status: 503, every: 2 }],
    odd: 2,
    goal: 'the flaky target under 1% of requests after the first second'
  },
  {
    name: 'equal',
    description: 'three equal targets',
    targets: [ok, ok, ok],
    odd: null,
    goal: 'the targets\' counts within 5% of each other'
  }
]

const { children } = childrenKilledOnExit('bench:cold', stopAllLoad)

async function startChild (name: string, script: string, config: GatewayConfig | UpstreamConfig): Promise<Child> {
  return await listening(forkTracked(name, new URL(script, import.meta.url), [JSON.stringify(config)], children), children, START_TIMEOUT, STOP_TIMEOUT)
}

/** Requests an upstream child received so far. */
async function received (child: Child): Promise<number> {
  const usage = await askUsage(child, USAGE_TIMEOUT)
  if (usage?.requests === undefined) throw new Error(`${child.name} did not tell its requests`)
  return usage.requests
}

function env (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  const v = Number(raw)
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name}: ${JSON.stringify(raw)} is not a positive number`)
  return v
}

function list (name: string, fallback: string[]): string[] {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  return raw.split(',').map((s) => s.trim()).filter((s) => s !== '')
}

/** A gateway: a child of gateway.js with `config`, or one `start` starts (HAProxy). */
type Arm = { name: string, config: (targets: string[]) => GatewayConfig } | { name: string, start: (targets: string[]) => Promise<Child> }

interface RunFigures { rps: number, p50: number, p99: number, p999: number, p99After: number, share: number | null, shareAfter: number | null, spread: number, non2xx: number, errors: number, counts: number[] }

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

async function runArm (arm: Arm, scenario: ColdScenario, ups: Child[], duration: number, connections: number, split: number): Promise<RunFigures> {
  const urls = ups.map((u) => `http://127.0.0.1:${u.port}`)
  const gateway = 'start' in arm ? await arm.start(urls) : await startChild(arm.name, './gateway.js', arm.config(urls))
  try {
    const before = await Promise.all(ups.map(received))
    let atSplit: Promise<number[]> | null = null
    const timer = setTimeout(() => { atSplit = Promise.all(ups.map(received)) }, split)
    const load = await runLoad({ urls: [`http://127.0.0.1:${gateway.port}`], request: { method: 'GET', path: '/hello' }, connections, pipelining: 1, duration, splitAt: split })
    clearTimeout(timer)
    const after = await Promise.all(ups.map(received))
    const mid = atSplit === null ? before : await (atSplit as Promise<number[]>)
    const counts = after.map((a, i) => a - before[i]!)
    const later = after.map((a, i) => a - mid[i]!)
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)
    const odd = scenario.odd
    return {
      rps: load.rps,
      p50: load.latency.p50,
      p99: load.latency.p99,
      p999: load.latency.p999,
      p99After: load.latencyAfter?.p99 ?? NaN,
      share: odd === null ? null : counts[odd]! / Math.max(1, sum(counts)),
      shareAfter: odd === null ? null : later[odd]! / Math.max(1, sum(later)),
      spread: Math.max(...counts) / Math.max(1, Math.min(...counts)) - 1,
      non2xx: load.non2xx,
      errors: load.errors,
      counts
    }
  } finally {
    await stopChild(gateway, children, STOP_TIMEOUT)
  }
}

const pct = (v: number | null, digits = 2): string => v === null ? '-' : `${(100 * v).toFixed(digits)}%`

async function main (): Promise<void> {
  const chosen = list('COLD_SCENARIOS', scenarios.map((s) => s.name)).map((n) => {
    const s = scenarios.find((x) => x.name === n)
    if (s === undefined) throw new Error(`COLD_SCENARIOS: ${JSON.stringify(n)} is not one of ${scenarios.map((x) => x.name).join(', ')}`)
    return s
  })
  const policies = list('COLD_POLICIES', ['peak-ewma', 'least-request']) as BalancePolicy[]
  const duration = env('COLD_DURATION', 10)
  const connections = env('COLD_CONNECTIONS', 64)
  const rounds = env('COLD_ROUNDS', 3)
  const split = env('COLD_SPLIT', 1000)
  const arms: Arm[] = [
    { name: 'http-proxy', config: (targets) => ({ kind: 'http-proxy', targets, prefix: '/' }) },
    ...policies.map((balance): Arm => ({ name: `sssonector ${balance}`, config: (targets) => ({ kind: 'sssonector', targets, prefix: '/', balance }) })),
    { name: 'bare (round robin)', config: (targets) => ({ kind: 'bare', targets, prefix: '/' }) },
    { name: "http-proxy'", config: (targets) => ({ kind: 'http-proxy', targets, prefix: '/' }) }
  ]
  const haproxy = process.env.COLD_HAPROXY === '0' ? null : haproxyPath()
  if (haproxy !== null) arms.splice(arms.length - 1, 0, { name: 'haproxy leastconn', start: async (targets) => await startHaproxy('haproxy', haproxy, targets, children, START_TIMEOUT) })
  else if (process.env.COLD_HAPROXY !== '0') console.log('(no haproxy on the PATH: its arm is left out)')
  console.log(`cold start: a fresh gateway per run, ${connections} connections, ${duration} s from the first request, ${rounds} rounds (arms interleaved, the order turning), node ${process.version}`)
  const out: Record<string, Record<string, RunFigures[]>> = {}
  for (const scenario of chosen) {
    console.log(`\n${scenario.name}: ${scenario.description}. Goal: ${scenario.goal}`)
    const ups: Child[] = []
    try {
      for (const [i, behaviour] of scenario.targets.entries()) {
        ups.push(await startChild(`upstream ${i}`, './upstream.js', { behaviour, keepAliveTimeout: 65_000, port: 0 }))
      }
      const runs: Record<string, RunFigures[]> = Object.fromEntries(arms.map((a) => [a.name, []]))
      for (let r = 0; r < rounds; r++) {
        const order = arms.map((_, i) => arms[(i + r) % arms.length]!)
        for (const arm of order) {
          const f = await runArm(arm, scenario, ups, duration, connections, split)
          runs[arm.name]!.push(f)
          process.stderr.write(`  round ${r + 1} ${arm.name}: ${f.rps.toFixed(0)} req/s, p99 ${f.p99.toFixed(1)} ms (after the 1st s ${f.p99After.toFixed(1)}), counts ${f.counts.join('/')}\n`)
        }
      }
      out[scenario.name] = runs
      const head = ['arm', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'p99 after 1st s', 'odd share', 'after 1st s', 'spread', 'non-2xx']
      const rows = arms.map((a) => {
        const fs = runs[a.name]!
        const m = (pick: (f: RunFigures) => number): number => median(fs.map(pick))
        const odd = scenario.odd !== null
        return [a.name, m((f) => f.rps).toFixed(0), m((f) => f.p50).toFixed(2), m((f) => f.p99).toFixed(2), m((f) => f.p999).toFixed(2), m((f) => f.p99After).toFixed(2),
          odd ? pct(m((f) => f.share!), 3) : '-', odd ? pct(m((f) => f.shareAfter!), 3) : '-', odd ? '-' : pct(m((f) => f.spread), 1), m((f) => f.non2xx).toFixed(0)]
      })
      const all = [head, ...rows]
      const widths = head.map((_, c) => Math.max(...all.map((r) => r[c]!.length)))
      for (const r of all) console.log('  ' + r.map((cell, c) => c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)).join('  '))
      const noise = (pick: (f: RunFigures) => number): string => {
        const a = median(runs['http-proxy']!.map(pick))
        const b = median(runs["http-proxy'"]!.map(pick))
        return `${(100 * Math.abs(b / a - 1)).toFixed(1)}%`
      }
      console.log(`  noise (http-proxy vs http-proxy', A vs A): req/s ${noise((f) => f.rps)}, p99 ${noise((f) => f.p99)}`)
    } finally {
      for (const u of ups) await stopChild(u, children, STOP_TIMEOUT)
    }
  }
  await mkdir('.bench', { recursive: true })
  await writeFile('.bench/cold.json', JSON.stringify({ connections, duration, rounds, split, policies, scenarios: out }, null, 2))
}

main().then(() => process.exit(0), (err: unknown) => {
  console.error(err)
  process.exit(1)
})

// Adaptive concurrency against an upstream of a fixed capacity: it serves
// CONC_CAPACITY requests at a time (each CONC_SERVICE ± CONC_SPREAD ms) and
// queues the rest itself, so its latency grows with what it is sent. Each arm
// (a gateway in a process of its own) is loaded at a fixed rate (open loop,
// latency from the moment each request was due), first at a third of the
// upstream's capacity (unloaded: nothing waits in its queue), then at three
// times its capacity. The figure: the p99 of the admitted requests (the 2xx
// answers) loaded, over the same arm's unloaded p99. Plain @fastify/http-proxy
// and the plugin with a static `pool.maxActive` (its default, 1000) send the
// whole load on, and the upstream's queue grows through the run; with
// `adaptiveConcurrency` (and `pool.maxQueue: 0`) the excess gets a fast 503
// and the admitted requests keep their latency. Plain http-proxy runs twice
// (two processes): their ratio is the noise. Arms are interleaved round by
// round (the order turning each round); figures are medians of the rounds.
//
//   npm run bench:concurrency
//   CONC_ROUNDS=5 CONC_DURATION=5 npm run bench:concurrency
//
// Environment: CONC_CAPACITY (4), CONC_SERVICE (ms, 100), CONC_SPREAD (ms, 50;
// 0: every request takes CONC_SERVICE), CONC_DURATION (s measured per run, 4),
// CONC_WARMUP (s per arm at the unloaded rate before the first round, 4: the
// adaptive limit's first minimum RTT measurement), CONC_ROUNDS (3),
// CONC_ARMS (a comma list of the arms to run; all by default), CONC_ADAPTIVE
// (the `adaptive` arm's adaptiveConcurrency options, in JSON; {}). Results
// also go to .bench/concurrency.json.
import { mkdir, writeFile } from 'node:fs/promises'
import { forkTracked, listening, stopChild } from './children.js'
import type { Child } from './children.js'
import { childrenKilledOnExit } from './protocol.js'
import { runAtRate, stopAllRate } from './open-loop.js'
import type { RateResult } from './open-loop.js'
import type { GatewayConfig, UpstreamConfig } from './scenarios.js'

const HOST = '127.0.0.1'
const START_TIMEOUT = 15_000
const STOP_TIMEOUT = 3_000
const LEAD_IN = 1
/** the open-loop client's most connections: enough for 3x the capacity's rate to wait in them when the gateway lets the upstream queue */
const CLIENT_CONNECTIONS = 512
const PAUSE = 500

function positive (name: string, fallback: number, integer = true): number {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  const v = Number(raw)
  if (!Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v))) throw new Error(`${name}: ${JSON.stringify(raw)} is not a ${integer ? 'whole ' : ''}number >= 0`)
  return v
}

// Small rates by default (about 40 req/s at capacity, 120 offered): what is measured is the upstream's queue, not the gateway's CPU on a busy machine.
const CAPACITY = positive('CONC_CAPACITY', 4)
const SERVICE = positive('CONC_SERVICE', 100)
const SPREAD = Math.min(positive('CONC_SPREAD', 50), SERVICE)
const DURATION = positive('CONC_DURATION', 4, false)
const WARMUP = positive('CONC_WARMUP', 4, false)
const ROUNDS = positive('CONC_ROUNDS', 3)
/** what the upstream serves per second at most */
const CAPACITY_RPS = (CAPACITY * 1000) / SERVICE
const UNLOADED_RPS = Math.round(CAPACITY_RPS / 3)
const LOADED_RPS = Math.round(CAPACITY_RPS * 3)

interface ArmSpec {
  name: string
  description: string
  config: Omit<GatewayConfig, 'targets' | 'prefix'>
}

const ADAPTIVE = JSON.parse(process.env.CONC_ADAPTIVE ?? '{}') as Record<string, unknown>

const ALL_ARMS: ArmSpec[] = [
  { name: 'http-proxy', description: 'Fastify + @fastify/http-proxy (sends everything on)', config: { kind: 'http-proxy' } },
  { name: "http-proxy'", description: 'the same, in a process of its own: the noise figure', config: { kind: 'http-proxy' } },
  { name: 'static', description: 'fastify-sssonector, static pool.maxActive (1000, the default) and its queue', config: { kind: 'sssonector' } },
  { name: 'adaptive', description: `fastify-sssonector, adaptiveConcurrency: ${JSON.stringify(ADAPTIVE)}, pool.maxQueue: 0 (the excess gets a fast 503)`, config: { kind: 'sssonector', upstream: { adaptiveConcurrency: ADAPTIVE, pool: { maxQueue: 0 } } } }
]
const ARMS = process.env.CONC_ARMS === undefined || process.env.CONC_ARMS.trim() === ''
  ? ALL_ARMS
  : process.env.CONC_ARMS.split(',').map((name) => {
    const arm = ALL_ARMS.find((a) => a.name === name.trim())
    if (arm === undefined) throw new Error(`CONC_ARMS: no arm ${JSON.stringify(name)} (the arms: ${ALL_ARMS.map((a) => a.name).join(', ')})`)
    return arm
  })

const { children, killChildren } = childrenKilledOnExit('bench:concurrency', stopAllRate)

/** Forks a bench child and waits for its port. */
async function start (name: string, script: string, config: GatewayConfig | UpstreamConfig): Promise<Child> {
  return await listening(forkTracked(name, new URL(script, import.meta.url), [JSON.stringify(config)], children), children, START_TIMEOUT, STOP_TIMEOUT)
}

async function load (port: number, rate: number, duration = DURATION): Promise<RateResult> {
  return await runAtRate({
    urls: [`http://${HOST}:${port}`],
    request: { method: 'GET', path: '/work' },
    rate,
    duration,
    leadIn: LEAD_IN,
    connections: CLIENT_CONNECTIONS
  })
}

interface Round { unloaded: RateResult, loaded: RateResult }

function median (values: number[]): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

function fmt (v: number, digits = 1): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '-'
}

function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
  return rows.map((r) => r.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ')).join('\n')
}

async function main (): Promise<number> {
  const upstream = await start('upstream', './upstream.js', {
    behaviour: { kind: 'capacity', bodyBytes: 100, capacity: CAPACITY, serviceMs: SERVICE, spreadMs: SPREAD },
    keepAliveTimeout: 65_000,
    port: 0
  })
  const target = `http://${HOST}:${upstream.port}`
  const gateways = new Map<string, Child>()
  for (const arm of ARMS) gateways.set(arm.name, await start(arm.name, './gateway.js', { ...arm.config, targets: [target], prefix: '/' }))
  console.log(`upstream: ${CAPACITY} at a time, ${SERVICE} ± ${SPREAD} ms each (about ${Math.round(CAPACITY_RPS)} req/s at most), queues the rest itself`)
  console.log(`load: open loop, unloaded ${UNLOADED_RPS} req/s (a third of its capacity), loaded ${LOADED_RPS} req/s (three times), ${DURATION} s measured after ${LEAD_IN} s; ${ROUNDS} rounds, after ${WARMUP} s of warm-up per arm at the unloaded rate`)
  if (WARMUP > 0) for (const arm of ARMS) await load(gateways.get(arm.name)!.port, UNLOADED_RPS, WARMUP)
  const runs = new Map<string, Round[]>(ARMS.map((arm) => [arm.name, []]))
  for (let round = 0; round < ROUNDS; round++) {
    const order = ARMS.map((_, i) => ARMS[(i + round) % ARMS.length]!)
    for (const arm of order) {
      const port = gateways.get(arm.name)!.port
      const unloaded = await load(port, UNLOADED_RPS)
      await new Promise((resolve) => setTimeout(resolve, PAUSE))
      const loaded = await load(port, LOADED_RPS)
      await new Promise((resolve) => setTimeout(resolve, PAUSE))
      runs.get(arm.name)!.push({ unloaded, loaded })
      process.stderr.write(`round ${round + 1} ${arm.name}: unloaded p99 ${fmt(unloaded.okLatency.p99, 2)} ms, loaded p99 of 2xx ${fmt(loaded.okLatency.p99, 2)} ms, 2xx ${loaded.ok}, 503 ${loaded.statusCodes['503'] ?? 0}\n`)
    }
  }

  const rows = [['arm', 'unloaded p99 ms', 'loaded: 2xx/s', '503/s', 'errors', 'run s', 'p50 of 2xx ms', 'p99 of 2xx ms', 'p99 x unloaded', 'p99 of all ms']]
  const figures: Record<string, Record<string, number>> = {}
  for (const arm of ARMS) {
    const r = runs.get(arm.name)!
    const f = {
      unloadedP99: median(r.map((x) => x.unloaded.okLatency.p99)),
      // over the run's time, until its last answer (a backlog the upstream queued is served after the schedule ends)
      okPerSecond: median(r.map((x) => x.loaded.ok / x.loaded.seconds)),
      refusedPerSecond: median(r.map((x) => (x.loaded.statusCodes['503'] ?? 0) / x.loaded.seconds)),
      errors: median(r.map((x) => x.loaded.errors)),
      seconds: median(r.map((x) => x.loaded.seconds)),
      loadedP50: median(r.map((x) => x.loaded.okLatency.p50)),
      loadedP99: median(r.map((x) => x.loaded.okLatency.p99)),
      // round by round, so the machine's drift between rounds cancels
      ratio: median(r.map((x) => x.loaded.okLatency.p99 / x.unloaded.okLatency.p99)),
      allP99: median(r.map((x) => x.loaded.latency.p99))
    }
    figures[arm.name] = f
    rows.push([arm.name, fmt(f.unloadedP99, 2), fmt(f.okPerSecond, 0), fmt(f.refusedPerSecond, 0), fmt(f.errors, 0), fmt(f.seconds, 1), fmt(f.loadedP50, 2), fmt(f.loadedP99, 2), fmt(f.ratio, 2), fmt(f.allP99, 2)])
  }
  console.log('')
  console.log(table(rows))
  console.log(`(medians of the rounds; run s: from the measure's start to the last answer, ${DURATION} s scheduled; p99 x unloaded: loaded p99 of the 2xx answers over the same arm's unloaded p99, taken round by round; p99 of all: every answer, 503s included)`)
  const a = runs.get('http-proxy')
  const b = runs.get("http-proxy'")
  const noise = a === undefined || b === undefined ? NaN : median(b.map((x, i) => x.unloaded.okLatency.p99 / a[i]!.unloaded.okLatency.p99))
  console.log(`noise, http-proxy'/http-proxy (the same arm twice), unloaded p99: ${fmt(noise, 2)}x`)
  const adaptive = figures.adaptive?.ratio ?? NaN
  const met = adaptive <= 2
  console.log(`target: with adaptiveConcurrency, offered 3x the capacity, the p99 of admitted requests stays within 2x the unloaded p99: ${fmt(adaptive, 2)}x ${met ? 'PASS' : 'FAIL'} (static pool.maxActive: ${fmt(figures.static?.ratio ?? NaN, 2)}x; plain http-proxy: ${fmt(figures['http-proxy']?.ratio ?? NaN, 2)}x)`)

  await mkdir('.bench', { recursive: true })
  await writeFile('.bench/concurrency.json', JSON.stringify({ capacity: CAPACITY, serviceMs: SERVICE, spreadMs: SPREAD, unloadedRps: UNLOADED_RPS, loadedRps: LOADED_RPS, duration: DURATION, rounds: ROUNDS, figures, noise }, null, 2))
  for (const g of gateways.values()) await stopChild(g, children, STOP_TIMEOUT)
  await stopChild(upstream, children, STOP_TIMEOUT)
  return met ? 0 : 1
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`bench:concurrency: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
  killChildren()
})

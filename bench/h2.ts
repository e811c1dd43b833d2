// The HTTP/2 benchmark: the gateway speaking HTTP/2 to its upstreams against
// the same gateway speaking HTTP/1.1, side by side in one run; then gRPC
// through the gateway against the same gRPC client calling its server
// directly. Loopback (127.0.0.1) only: every upstream (h2-upstream.ts), every
// gateway (h2-gateway.ts: Fastify + fastify-sssonector, metrics at /metrics)
// and the client (h2-client.ts) run in a process of their own, each started
// and stopped by its PID, so the client's cost does not mix with theirs.
// Placement is left to the scheduler; the client runs at priority -10 where
// that is allowed (as in `npm run bench:ws`), so its own lag stays out of the
// latencies.
//
// 1. HTTP: H2BENCH_CONCURRENCY workers (64), each sending a GET and waiting
//    for its answer (closed loop), over HTTP/1.1 to the gateway (an undici
//    Pool of as many keep-alive connections), answers of H2BENCH_BODY bytes
//    (100), H2BENCH_TARGETS upstream targets (3). Arms:
//    - http1: upstream `protocol: 'http1'`, the targets node:http servers (keep-alive);
//    - http1': the same in a process of its own: its ratio to http1 is the noise (A against A);
//    - http2: upstream `protocol: 'http2'`, the targets node:http2 h2c servers (prior knowledge);
//    - http2' (not run unless named in H2BENCH_ARMS): http2 again.
//    The http1 arms share one set of HTTP/1.1 targets (runs never overlap).
//    For each arm: the connections the gateway opened to its targets (the
//    pool's counter `sssonector_pool_connections_opened_total`, read from its
//    /metrics before and after each run; checked against the connections the
//    targets accepted), those open after each run (its /status), requests a
//    second, p50/p99 latency, and the CPU time of the gateway, of the targets
//    and of the client per request (over the whole run, warm-up included).
// 2. gRPC: unary Echo calls (test/fixtures/echo.proto) from @grpc/grpc-js, the
//    same H2BENCH_CONCURRENCY in flight, to a grpc-js server (h2-upstream.ts,
//    kind grpc) directly, and through the gateway (Fastify `http2: true`, a
//    route `{ prefix: '/echo.Echo', rewritePrefix: '/echo.Echo' }` to that
//    server with `protocol: 'http2'`): calls a second, p50/p99, and the
//    gateway's ratio to direct, the connections the gateway opened, the CPU
//    times as above.
//
// Each arm is first loaded H2BENCH_PREWARM s (3; 0: none), not counted: a
// fresh process takes seconds to reach its pace (JIT), more on a busy
// machine, and the pool opens its connections then (its cold start, reported
// apart). Then the arms are interleaved: H2BENCH_ROUNDS rounds (3), the arm
// order turning each round; each run warms up H2BENCH_WARMUP s (1, its
// answers not counted) and counts H2BENCH_DURATION s (3). Each cell is the
// median of the rounds, with their range; each ratio is the median of the
// rounds' ratios (taken within a round, so the machine's drift between rounds
// cancels), with their range. The default run takes about a minute and a half.
//
//   npm run bench:h2
//   H2BENCH_ROUNDS=5 npm run bench:h2
//   H2BENCH_SCENARIOS=grpc H2BENCH_DURATION=5 npm run bench:h2
//
// Environment: H2BENCH_SCENARIOS (http,grpc), H2BENCH_ARMS (http1,http1',http2;
// also http2'), H2BENCH_CONCURRENCY (64), H2BENCH_BODY (bytes, 100),
// H2BENCH_TARGETS (3), H2BENCH_ROUNDS (3), H2BENCH_DURATION (s, 3),
// H2BENCH_WARMUP (s, 1), H2BENCH_PREWARM (s, 3), H2BENCH_MAX_STREAMS (the upstream's http2.maxStreams;
// unset: the plugin's default, 100). Results also go to .bench/h2-last.json.
import { fork } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import http2 from 'node:http2'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { childrenKilledOnExit, intFromEnv, isChildMessage } from './protocol.js'
import { next, stopChild as stopChildOf, track } from './children.js'
import type { Child } from './children.js'
import type { UsageMessage } from './protocol.js'
import { median, table } from './report.js'
import type { ClientAnswer, ClientCommand, LoadResult } from './h2-client.js'
import type { H2GatewayConfig } from './h2-gateway.js'
import type { H2UpstreamConfig } from './h2-upstream.js'

const HOST = '127.0.0.1'
const PREFIX = '/api'
const GRPC_PREFIX = '/echo.Echo'
const START_TIMEOUT = 15_000
const ANSWER_TIMEOUT = 5_000
const STOP_TIMEOUT = 3_000
const SCRAPE_TIMEOUT = 5_000
const PAUSE_BETWEEN_RUNS = 250
const LOAD_PRIORITY = -10
/** idle keep-alive connections are kept this long by the HTTP/1.1 targets (Node's default, 5 s, would close the gateway's between its runs) */
const UPSTREAM_KEEP_ALIVE = 65_000
const OPENED_METRIC = 'sssonector_pool_connections_opened_total'

interface HttpArm {
  name: string
  description: string
  protocol: 'http1' | 'http2'
}

const HTTP_ARMS: HttpArm[] = [
  { name: 'http1', description: "upstream protocol 'http1', node:http targets (keep-alive)", protocol: 'http1' },
  { name: "http1'", description: 'the same as http1, in a process of its own: the noise figure', protocol: 'http1' },
  { name: 'http2', description: "upstream protocol 'http2', node:http2 h2c targets", protocol: 'http2' },
  { name: "http2'", description: 'the same as http2, in a process of its own', protocol: 'http2' }
]
const DEFAULT_ARMS = ['http1', "http1'", 'http2']
const BASE = 'http1'
const BASE_AGAIN = "http1'"
const H2 = 'http2'
const GRPC_DIRECT = 'grpc-direct'
const GRPC_GATEWAY = 'grpc-gateway'
const SCENARIOS = ['http', 'grpc'] as const
type ScenarioName = typeof SCENARIOS[number]

interface Settings {
  scenarios: ScenarioName[]
  arms: HttpArm[]
  concurrency: number
  bodyBytes: number
  targets: number
  rounds: number
  duration: number
  warmup: number
  prewarm: number
  maxStreams: number | null
}

function listFromEnv (name: string, fallback: string[]): string[] {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  return raw.split(',').map((s) => s.trim()).filter((s) => s !== '')
}

function readSettings (): Settings {
  const scenarios = listFromEnv('H2BENCH_SCENARIOS', [...SCENARIOS]).map((s) => {
    if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`H2BENCH_SCENARIOS: ${JSON.stringify(s)} is not one of ${SCENARIOS.join(', ')}`)
    return s as ScenarioName
  })
  const arms = listFromEnv('H2BENCH_ARMS', DEFAULT_ARMS).map((name) => {
    const arm = HTTP_ARMS.find((a) => a.name === name)
    if (arm === undefined) throw new Error(`H2BENCH_ARMS: ${JSON.stringify(name)} is not one of ${HTTP_ARMS.map((a) => a.name).join(', ')}`)
    return arm
  })
  const maxStreams = process.env.H2BENCH_MAX_STREAMS === undefined || process.env.H2BENCH_MAX_STREAMS.trim() === ''
    ? null
    : intFromEnv('H2BENCH_MAX_STREAMS', 100, 1, 100_000)
  return {
    scenarios: [...new Set(scenarios)],
    arms: [...new Set(arms)],
    concurrency: intFromEnv('H2BENCH_CONCURRENCY', 64, 1, 4096),
    bodyBytes: intFromEnv('H2BENCH_BODY', 100, 20, 16 * 1024 * 1024),
    targets: intFromEnv('H2BENCH_TARGETS', 3, 1, 32),
    rounds: intFromEnv('H2BENCH_ROUNDS', 3, 1, 50),
    duration: intFromEnv('H2BENCH_DURATION', 3, 1, 600),
    warmup: intFromEnv('H2BENCH_WARMUP', 1, 0, 60),
    prewarm: intFromEnv('H2BENCH_PREWARM', 3, 0, 600),
    maxStreams
  }
}

// ---------------------------------------------------------------- processes

const { children, killChildren } = childrenKilledOnExit('bench:h2')

function spawnChild (name: string, script: string, args: string[]): Child {
  const cp = fork(fileURLToPath(new URL(script, import.meta.url)), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] })
  const child = track(name, cp, children)
  return child
}

async function startServer (name: string, script: string, config: H2GatewayConfig | H2UpstreamConfig): Promise<Child> {
  const child = spawnChild(name, script, [JSON.stringify(config)])
  try {
    child.port = await next(child, (m) => isChildMessage(m) && m.type === 'ready' ? m.port : undefined, START_TIMEOUT, 'listening')
    return child
  } catch (err) {
    await stopChild(child)
    throw err
  }
}

async function usage (child: Child): Promise<UsageMessage> {
  const answer = next(child, (m) => isChildMessage(m) && m.type === 'usage' ? m : undefined, ANSWER_TIMEOUT, 'a usage answer')
  child.process.send({ type: 'usage' })
  return await answer
}

async function stopChild (child: Child): Promise<void> {
  await stopChildOf(child, children, STOP_TIMEOUT)
}

/** The client child: runs one command at a time. */
class Client {
  constructor (readonly child: Child) {}

  static async start (): Promise<Client> {
    const child = spawnChild('client', './h2-client.js', [])
    try {
      await next(child, (m) => (m as ClientAnswer | null)?.type === 'ready' ? true : undefined, START_TIMEOUT, 'ready')
    } catch (err) {
      await stopChild(child)
      throw err
    }
    if (child.process.pid !== undefined) {
      try { os.setPriority(child.process.pid, LOAD_PRIORITY) } catch {}
    }
    return new Client(child)
  }

  async run (cmd: ClientCommand, timeout: number): Promise<LoadResult> {
    const answer = next(this.child, (m) => {
      const a = m as ClientAnswer | null
      if (a?.type === 'error') return new Error(`client: ${a.error}`)
      return a?.type === 'result' ? a : undefined
    }, timeout, `an answer to ${cmd.type}`)
    this.child.process.send(cmd)
    const got = await answer
    if (got instanceof Error) throw got
    return got
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

// ---------------------------------------------------------------- the gateway's own figures

/** GET of a gateway's own path, over HTTP/1.1 or (a gateway with an HTTP/2 server) h2c. */
async function getText (port: number, path: string, overH2: boolean): Promise<string> {
  if (!overH2) {
    const res = await request(`http://${HOST}:${port}${path}`, { headersTimeout: SCRAPE_TIMEOUT, bodyTimeout: SCRAPE_TIMEOUT })
    const text = await res.body.text()
    if (res.statusCode !== 200) throw new Error(`GET ${path}: ${res.statusCode}`)
    return text
  }
  const session = http2.connect(`http://${HOST}:${port}`)
  try {
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`GET ${path}: no answer within ${SCRAPE_TIMEOUT} ms`)), SCRAPE_TIMEOUT)
      session.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      const stream = session.request({ ':method': 'GET', ':path': path })
      let status = 0
      let text = ''
      stream.setEncoding('utf8')
      stream.on('response', (headers) => { status = Number(headers[':status']) })
      stream.on('data', (chunk: string) => { text += chunk })
      stream.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      stream.once('end', () => {
        clearTimeout(timer)
        if (status === 200) resolve(text)
        else reject(new Error(`GET ${path}: ${status}`))
      })
    })
  } finally {
    session.close()
  }
}

/** What a gateway says of its pool: connections opened (its metrics), open now and opened (its status page). */
interface PoolFigures {
  /** the counter's sum over the targets */
  opened: number
  /** open now, summed over the targets (/status) */
  open: number
  /** opened since start, summed over the targets (/status) */
  statusOpened: number
}

async function poolFigures (gateway: Child, overH2: boolean): Promise<PoolFigures> {
  const metrics = await getText(gateway.port, '/metrics', overH2)
  let opened = 0
  let seen = false
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(`${OPENED_METRIC}{`) && !line.startsWith(`${OPENED_METRIC} `)) continue
    const value = Number(line.slice(line.lastIndexOf(' ') + 1))
    if (Number.isFinite(value)) {
      opened += value
      seen = true
    }
  }
  if (!seen) throw new Error(`no ${OPENED_METRIC} in the gateway's /metrics`)
  const status = JSON.parse(await getText(gateway.port, '/status', overH2)) as { upstreams: Array<{ targets: Array<{ connections: number, opened: number }> }> }
  let open = 0
  let statusOpened = 0
  for (const u of status.upstreams) {
    for (const t of u.targets) {
      open += t.connections
      statusOpened += t.opened
    }
  }
  return { opened, open, statusOpened }
}

// ---------------------------------------------------------------- figures

interface RunFigures {
  round: number
  /** good answers a second in the measured window */
  rate: number
  p50: number
  p99: number
  answers: number
  errors: number
  firstError: string | null
  /** connections the gateway opened to its targets during the run (its metrics), null for a direct arm */
  opened: number | null
  /** the counter after the run */
  openedTotal: number | null
  /** connections open from the gateway to its targets after the run */
  openAfter: number | null
  /** connections the targets accepted during the run (null where they do not count) */
  accepted: number | null
  /** CPU time (user + system) over every good answer of the run, warm-up included, µs an answer */
  gatewayCpu: number | null
  upstreamCpu: number | null
  clientCpu: number | null
  /** the pool's two counts of opened connections disagree: the figures, else null */
  mismatch: string | null
}

interface ArmState {
  name: string
  description: string
  gateway: Child | null
  /** the upstreams the load reaches through this arm (or directly) */
  upstreams: Child[]
  /** the gateway's server speaks h2c */
  overH2: boolean
  error: string | null
  /** the run before the first round, not counted (its connections opened are the pool's cold start) */
  prewarm: RunFigures | null
  runs: RunFigures[]
}

const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0)

function cpuOf (before: UsageMessage[], after: UsageMessage[]): number {
  return sum(after.map((u) => u.cpuUser + u.cpuSystem)) - sum(before.map((u) => u.cpuUser + u.cpuSystem))
}

/** One measured run of an arm: the figures before, the load, the figures after. */
async function measure (state: ArmState, round: number, load: () => Promise<LoadResult>): Promise<RunFigures> {
  const gw = state.gateway
  const poolBefore = gw === null ? null : await poolFigures(gw, state.overH2)
  const gwBefore = gw === null ? null : await usage(gw)
  const upBefore = await Promise.all(state.upstreams.map(usage))
  const r = await load()
  const gwAfter = gw === null ? null : await usage(gw)
  const upAfter = await Promise.all(state.upstreams.map(usage))
  const poolAfter = gw === null ? null : await poolFigures(gw, state.overH2)
  const counted = upBefore.every((u) => u.connections !== undefined)
  const mismatch = poolAfter !== null && poolAfter.opened !== poolAfter.statusOpened
    ? `the metrics count ${poolAfter.opened} opened, /status ${poolAfter.statusOpened}`
    : null
  return {
    round,
    rate: r.answers / r.seconds,
    p50: r.p50,
    p99: r.p99,
    answers: r.answers,
    errors: r.errors,
    firstError: r.firstError,
    opened: poolBefore === null || poolAfter === null ? null : poolAfter.opened - poolBefore.opened,
    openedTotal: poolAfter?.opened ?? null,
    openAfter: poolAfter?.open ?? null,
    accepted: counted ? sum(upAfter.map((u) => u.connections ?? 0)) - sum(upBefore.map((u) => u.connections ?? 0)) : null,
    gatewayCpu: gwBefore === null || gwAfter === null || r.total === 0 ? null : cpuOf([gwBefore], [gwAfter]) / r.total,
    upstreamCpu: r.total === 0 ? null : cpuOf(upBefore, upAfter) / r.total,
    clientCpu: r.total === 0 ? null : r.cpu / r.total,
    mismatch
  }
}

function range (values: number[], digits = 0): string {
  if (values.length === 0) return '-'
  return `${Math.min(...values).toFixed(digits)}-${Math.max(...values).toFixed(digits)}`
}

/** The median of values, with their range: `123 (110-130)`. */
function cell (values: number[], digits = 0): string {
  const m = median(values)
  return m === null ? '-' : `${m.toFixed(digits)} (${range(values, digits)})`
}

/** Round-by-round ratios b / a of the rates. */
function ratios (a: RunFigures[], b: RunFigures[], f: (r: RunFigures) => number = (r) => r.rate): number[] {
  const out: number[] = []
  for (const x of a) {
    const y = b.find((r) => r.round === x.round)
    if (y !== undefined && f(x) > 0 && Number.isFinite(f(y))) out.push(f(y) / f(x))
  }
  return out
}

function ratioCell (values: number[]): string {
  const m = median(values)
  return m === null ? '-' : `x${m.toFixed(3)} (${range(values, 3)})`
}

function firstLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.split('\n')[0] ?? text
}

// ---------------------------------------------------------------- the run

/** How long a run warms up and then counts, s. */
interface Timing { warmup: number, duration: number }

function describeRun (r: RunFigures): string {
  const conns = r.opened === null ? '' : `  opened ${r.opened} (total ${r.openedTotal ?? '?'}, open ${r.openAfter ?? '?'}${r.accepted === null ? '' : `, accepted ${r.accepted}`})`
  return `${r.rate.toFixed(0).padStart(6)}/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms${conns}  CPU µs/answer: gateway ${r.gatewayCpu === null ? '-' : r.gatewayCpu.toFixed(1)}, upstreams ${r.upstreamCpu === null ? '-' : r.upstreamCpu.toFixed(1)}, client ${r.clientCpu === null ? '-' : r.clientCpu.toFixed(1)}  errors ${r.errors}${r.firstError === null ? '' : ` (${r.firstError})`}${r.mismatch === null ? '' : `  ${r.mismatch}`}`
}

/**
 * Runs every arm once for `prewarm` s, not counted (a fresh process's JIT
 * takes seconds to settle, more on a busy machine), then every live arm once
 * a round, the order turning each round.
 */
async function rounds (settings: Settings, states: ArmState[], label: string, run: (state: ArmState, round: number, timing: Timing) => Promise<RunFigures>): Promise<void> {
  const width = Math.max(...states.map((s) => s.name.length))
  if (settings.prewarm > 0) {
    for (const state of states) {
      if (state.error !== null) continue
      try {
        state.prewarm = await run(state, 0, { warmup: 0, duration: settings.prewarm })
        console.log(`${label} pre-warm     ${state.name.padEnd(width)} ${describeRun(state.prewarm)}`)
        if (state.prewarm.errors > 0) state.error = `pre-warm: ${state.prewarm.errors} errors, the first: ${state.prewarm.firstError ?? '?'}`
      } catch (err) {
        state.error = `pre-warm: ${firstLine(err)}`
        console.log(`${label} pre-warm     ${state.name.padEnd(width)} FAILED: ${firstLine(err)}`)
      }
      await sleep(PAUSE_BETWEEN_RUNS)
    }
  }
  for (let round = 1; round <= settings.rounds; round++) {
    const live = states.filter((s) => s.error === null)
    if (live.length === 0) return
    const turn = (round - 1) % live.length
    for (const state of [...live.slice(turn), ...live.slice(0, turn)]) {
      try {
        const r = await run(state, round, { warmup: settings.warmup, duration: settings.duration })
        state.runs.push(r)
        console.log(`${label} round ${round}/${settings.rounds} ${state.name.padEnd(width)} ${describeRun(r)}`)
        if (r.errors > 0) state.error = `round ${round}: ${r.errors} errors, the first: ${r.firstError ?? '?'}`
      } catch (err) {
        state.error = `round ${round}: ${firstLine(err)}`
        console.log(`${label} round ${round}/${settings.rounds} ${state.name.padEnd(width)} FAILED: ${firstLine(err)}`)
      }
      if (state.gateway?.exit != null && state.error === null) state.error = `gateway ${state.gateway.exit}`
      await sleep(PAUSE_BETWEEN_RUNS)
    }
  }
}

async function httpPhase (settings: Settings, client: Client, started: Child[]): Promise<ArmState[]> {
  const runTimeout = Math.max(settings.warmup + settings.duration, settings.prewarm) * 1000 + 30_000
  const upstreams: Record<'http1' | 'http2', Child[]> = { http1: [], http2: [] }
  for (const protocol of ['http1', 'http2'] as const) {
    if (!settings.arms.some((a) => a.protocol === protocol)) continue
    for (let i = 0; i < settings.targets; i++) {
      const child = await startServer(`${protocol} target ${i + 1}`, './h2-upstream.js', { kind: protocol, bodyBytes: settings.bodyBytes, keepAliveTimeout: UPSTREAM_KEEP_ALIVE })
      started.push(child)
      upstreams[protocol].push(child)
    }
    console.log(`${protocol} targets: ${upstreams[protocol].map((c) => `${HOST}:${c.port} (pid ${c.process.pid ?? '?'})`).join(', ')}`)
  }
  const states: ArmState[] = []
  for (const arm of settings.arms) {
    const state: ArmState = { name: arm.name, description: arm.description, gateway: null, upstreams: upstreams[arm.protocol], overH2: false, error: null, prewarm: null, runs: [] }
    states.push(state)
    try {
      const config: H2GatewayConfig = {
        targets: state.upstreams.map((c) => `http://${HOST}:${c.port}`),
        protocol: arm.protocol,
        prefix: PREFIX,
        http2Server: false,
        ...(settings.maxStreams !== null && arm.protocol === 'http2' ? { upstream: { http2: { maxStreams: settings.maxStreams } } } : {})
      }
      state.gateway = await startServer(`gateway ${arm.name}`, './h2-gateway.js', config)
      started.push(state.gateway)
      console.log(`${arm.name}: ${arm.description}, on http://${HOST}:${state.gateway.port}${PREFIX} (pid ${state.gateway.process.pid ?? '?'})`)
    } catch (err) {
      state.error = `did not start: ${firstLine(err)}`
      console.log(`${arm.name}: FAILED to start: ${firstLine(err)}`)
    }
  }
  await rounds(settings, states, 'http', async (state, round, timing) => await measure(state, round, async () => await client.run({
    type: 'http',
    origin: `http://${HOST}:${state.gateway!.port}`,
    path: `${PREFIX}/hello`,
    bodyBytes: settings.bodyBytes,
    concurrency: settings.concurrency,
    ...timing
  }, runTimeout)))
  return states
}

async function grpcPhase (settings: Settings, client: Client, started: Child[]): Promise<ArmState[]> {
  const runTimeout = Math.max(settings.warmup + settings.duration, settings.prewarm) * 1000 + 30_000
  const server = await startServer('grpc target', './h2-upstream.js', { kind: 'grpc', bodyBytes: settings.bodyBytes, keepAliveTimeout: UPSTREAM_KEEP_ALIVE, name: 'bench' })
  started.push(server)
  console.log(`grpc target: grpc-js Echo on ${HOST}:${server.port} (pid ${server.process.pid ?? '?'})`)
  const direct: ArmState = { name: GRPC_DIRECT, description: 'the client straight to the gRPC server: the limit', gateway: null, upstreams: [server], overH2: false, error: null, prewarm: null, runs: [] }
  const through: ArmState = { name: GRPC_GATEWAY, description: "Fastify http2: true + fastify-sssonector, protocol 'http2'", gateway: null, upstreams: [server], overH2: true, error: null, prewarm: null, runs: [] }
  try {
    through.gateway = await startServer('gateway grpc', './h2-gateway.js', {
      targets: [`http://${HOST}:${server.port}`],
      protocol: 'http2',
      prefix: GRPC_PREFIX,
      rewritePrefix: GRPC_PREFIX,
      http2Server: true,
      ...(settings.maxStreams !== null ? { upstream: { http2: { maxStreams: settings.maxStreams } } } : {})
    })
    started.push(through.gateway)
    console.log(`${GRPC_GATEWAY}: ${through.description}, on h2c ${HOST}:${through.gateway.port} (pid ${through.gateway.process.pid ?? '?'})`)
  } catch (err) {
    through.error = `did not start: ${firstLine(err)}`
    console.log(`${GRPC_GATEWAY}: FAILED to start: ${firstLine(err)}`)
  }
  const states = [direct, through]
  await rounds(settings, states, 'grpc', async (state, round, timing) => await measure(state, round, async () => await client.run({
    type: 'grpc',
    address: `${HOST}:${(state.gateway ?? server).port}`,
    concurrency: settings.concurrency,
    ...timing
  }, runTimeout)))
  return states
}

async function main (): Promise<number> {
  const settings = readSettings()
  const cores = os.availableParallelism()
  const load = os.loadavg()
  const arms = (settings.scenarios.includes('http') ? settings.arms.length : 0) + (settings.scenarios.includes('grpc') ? 2 : 0)
  // bounded: every run, with generous slack, or it stops itself
  const budget = (arms * (settings.rounds * (settings.warmup + settings.duration + 10) + (settings.prewarm > 0 ? settings.prewarm + 10 : 0)) + 120) * 1000
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench:h2: still running after ${Math.round(budget / 1000)} s, giving up\n`)
    killChildren()
    process.exit(1)
  }, budget)
  watchdog.unref()

  console.log(`node ${process.version}, ${cores} cores (${os.cpus()[0]?.model.trim() ?? 'unknown cpu'}), load average ${load.map((l) => l.toFixed(2)).join(' ')}`)
  console.log(`load: ${settings.concurrency} in flight (closed loop); each arm pre-warmed ${settings.prewarm} s, then ${settings.rounds} rounds x ${settings.duration} s per arm after ${settings.warmup} s of warm-up, the arm order turning each round; HTTP: GET, ${settings.bodyBytes}-byte answers, ${settings.targets} targets; http2.maxStreams ${settings.maxStreams ?? 'the default (100)'}`)

  let client: Client | null = null
  const started: Child[] = []
  let http: ArmState[] = []
  let grpc: ArmState[] = []
  try {
    client = await Client.start()
    console.log(`client pid ${client.child.process.pid ?? '?'}`)
    if (settings.scenarios.includes('http')) {
      http = await httpPhase(settings, client, started)
      await Promise.all(started.splice(0).map(stopChild))
    }
    if (settings.scenarios.includes('grpc')) {
      console.log('')
      grpc = await grpcPhase(settings, client, started)
    }
  } finally {
    clearTimeout(watchdog)
    await Promise.all(started.splice(0).map(stopChild))
    if (client !== null) await stopChild(client.child)
  }

  // ---- the tables
  const summary: Record<string, unknown> = {}
  if (http.length > 0) {
    const base = http.find((s) => s.name === BASE)?.runs ?? []
    console.log('')
    console.log(`HTTP: GET, ${settings.bodyBytes}-byte answers, ${settings.concurrency} in flight (closed loop, HTTP/1.1 client), ${settings.targets} targets: median of ${settings.rounds} interleaved rounds (range); ratios to ${BASE} are medians of the rounds' ratios`)
    const rows = [['arm', `conns opened ${settings.prewarm > 0 ? 'in pre-warm' : 'in round 1'}`, `conns opened ${settings.prewarm > 0 ? 'in rounds' : 'later'}`, 'open after each run', 'targets accepted', 'req/s', 'p50 ms', 'p99 ms', `req/s vs ${BASE}`, `p99 vs ${BASE}`, 'gateway CPU µs/req', 'targets CPU µs/req', 'client CPU µs/req', 'status']]
    for (const s of http) {
      // the pool's cold start: the pre-warm, else round 1; then what the measured runs opened
      const cold = s.prewarm ?? s.runs.find((r) => r.round === 1)
      const first = cold?.opened ?? undefined
      const later = s.runs.filter((r) => r !== cold && r.opened !== null).map((r) => r.opened!)
      const accepted = [...(s.prewarm === null ? [] : [s.prewarm]), ...s.runs].map((r) => r.accepted ?? 0)
      const mine = s.name !== BASE
      rows.push([
        s.name,
        first === undefined ? '-' : String(first),
        later.length === 0 ? '-' : String(sum(later)),
        range(s.runs.flatMap((r) => r.openAfter === null ? [] : [r.openAfter])),
        String(sum(accepted)),
        cell(s.runs.map((r) => r.rate)),
        cell(s.runs.map((r) => r.p50), 2),
        cell(s.runs.map((r) => r.p99), 2),
        mine ? ratioCell(ratios(base, s.runs)) : '-',
        mine ? ratioCell(ratios(base, s.runs, (r) => r.p99)) : '-',
        cell(s.runs.flatMap((r) => r.gatewayCpu === null ? [] : [r.gatewayCpu]), 1),
        cell(s.runs.flatMap((r) => r.upstreamCpu === null ? [] : [r.upstreamCpu]), 1),
        cell(s.runs.flatMap((r) => r.clientCpu === null ? [] : [r.clientCpu]), 1),
        s.error === null ? 'ok' : 'FAILED'
      ])
      summary[s.name] = {
        openedCold: first ?? null,
        openedAfter: sum(later),
        rate: median(s.runs.map((r) => r.rate)),
        p50: median(s.runs.map((r) => r.p50)),
        p99: median(s.runs.map((r) => r.p99)),
        vsBase: mine ? median(ratios(base, s.runs)) : null,
        error: s.error
      }
    }
    console.log(table(rows))
    for (const s of http) if (s.error !== null) console.log(`${s.name} FAILED: ${s.error}`)
    for (const s of http) for (const r of s.runs) if (r.mismatch !== null) console.log(`${s.name} round ${r.round}: ${r.mismatch}`)
    for (const s of http) {
      for (const r of [...(s.prewarm === null ? [] : [s.prewarm]), ...s.runs]) {
        if (r.opened !== null && r.accepted !== null && r.opened !== r.accepted) console.log(`${s.name} round ${r.round}: the gateway counts ${r.opened} connections opened, its targets accepted ${r.accepted}`)
      }
    }
    const h2 = http.find((s) => s.name === H2)
    const again = http.find((s) => s.name === BASE_AGAIN)
    if (h2 !== undefined && base.length > 0) console.log(`${H2} against ${BASE}: req/s ${ratioCell(ratios(base, h2.runs))}, p99 ${ratioCell(ratios(base, h2.runs, (r) => r.p99))}`)
    if (again !== undefined && base.length > 0) console.log(`noise, ${BASE_AGAIN} against ${BASE} (A against A): req/s ${ratioCell(ratios(base, again.runs))}, p99 ${ratioCell(ratios(base, again.runs, (r) => r.p99))}`)
  }
  if (grpc.length > 0) {
    const direct = grpc.find((s) => s.name === GRPC_DIRECT)?.runs ?? []
    console.log('')
    console.log(`gRPC: unary Echo calls, ${settings.concurrency} in flight (closed loop, one @grpc/grpc-js channel): median of ${settings.rounds} interleaved rounds (range)`)
    const rows = [['arm', 'conns opened', 'open after each run', 'calls/s', 'p50 ms', 'p99 ms', 'calls/s vs direct', 'p99 vs direct', 'gateway CPU µs/call', 'server CPU µs/call', 'client CPU µs/call', 'status']]
    for (const s of grpc) {
      const opened = [...(s.prewarm === null ? [] : [s.prewarm]), ...s.runs].flatMap((r) => r.opened === null ? [] : [r.opened])
      const mine = s.name !== GRPC_DIRECT
      rows.push([
        s.name,
        opened.length === 0 ? '-' : String(sum(opened)),
        range(s.runs.flatMap((r) => r.openAfter === null ? [] : [r.openAfter])),
        cell(s.runs.map((r) => r.rate)),
        cell(s.runs.map((r) => r.p50), 2),
        cell(s.runs.map((r) => r.p99), 2),
        mine ? ratioCell(ratios(direct, s.runs)) : '-',
        mine ? ratioCell(ratios(direct, s.runs, (r) => r.p99)) : '-',
        cell(s.runs.flatMap((r) => r.gatewayCpu === null ? [] : [r.gatewayCpu]), 1),
        cell(s.runs.flatMap((r) => r.upstreamCpu === null ? [] : [r.upstreamCpu]), 1),
        cell(s.runs.flatMap((r) => r.clientCpu === null ? [] : [r.clientCpu]), 1),
        s.error === null ? 'ok' : 'FAILED'
      ])
      summary[s.name] = {
        opened: opened.length === 0 ? null : sum(opened),
        rate: median(s.runs.map((r) => r.rate)),
        p50: median(s.runs.map((r) => r.p50)),
        p99: median(s.runs.map((r) => r.p99)),
        vsDirect: mine ? median(ratios(direct, s.runs)) : null,
        error: s.error
      }
    }
    console.log(table(rows))
    for (const s of grpc) if (s.error !== null) console.log(`${s.name} FAILED: ${s.error}`)
    const through = grpc.find((s) => s.name === GRPC_GATEWAY)
    if (through !== undefined && direct.length > 0) console.log(`gRPC through the gateway against direct: calls/s ${ratioCell(ratios(direct, through.runs))}, p99 ${ratioCell(ratios(direct, through.runs, (r) => r.p99))}`)
  }

  const dir = fileURLToPath(new URL('../../.bench/', import.meta.url))
  await mkdir(dir, { recursive: true })
  const file = `${dir}h2-last.json`
  await writeFile(file, JSON.stringify({
    date: new Date().toISOString(),
    node: process.version,
    cpus: cores,
    cpuModel: os.cpus()[0]?.model.trim() ?? null,
    loadAverage: load,
    settings: { ...settings, arms: settings.arms.map((a) => a.name) },
    summary,
    runs: [...http, ...grpc].map((s) => ({ arm: s.name, error: s.error, prewarm: s.prewarm, runs: s.runs }))
  }, null, 2) + '\n')
  console.log(`results written to ${file}`)
  return [...http, ...grpc].some((s) => s.error !== null) ? 1 : 0
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  console.error(`bench:h2: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  killChildren()
  process.exitCode = 1
})

// `npm run chaos`: a seeded, replayable schedule of faults against three real
// upstream processes under steady keep-alive load, through a gateway in its own
// process, with the oracles checked and a table of figures printed.
//
//   CHAOS_SEED=n          replay a run (default: a random seed, printed first)
//   CHAOS_DURATION=s      length of the fault phase (default 600 for random, 30 for churn and rolling)
//   CHAOS_SCENARIO=name   random (default), churn, rolling
//   CHAOS_CONCURRENCY=n   requests in flight (default 32; 64 for churn)
//   CHAOS_LOG=level       the gateway's log level (default: no log)
//
// The oracles (see `runChaos` and the README's Chaos section):
//   1. a GET that was covered (some target healthy from one probe interval
//      before it started until it ended) succeeds;
//   2. no client receives another request's answer (late stray bytes on a
//      reused keep-alive connection are counted apart, with their evidence);
//   3. a target healthy for the recovery bound is back in rotation;
//   4. client faults change no target state (the edge upstream), and each one
//      on the main route gets an answer or a closed connection, never a hang;
//   5. the gateway's RSS and handles return to their baseline.
// Loopback only; every child is stopped by its PID (SIGKILL in a finally).
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { clientFault, clientFaultKinds } from './chaos-client.js'
import type { ClientFaultKind, ClientFaultPlan, ClientFaultResult } from './chaos-client.js'
import { epoch, mulberry32, noModes } from './chaos-protocol.js'
import type { FromGateway, FromUpstream, GatewaySample, ToGateway, ToUpstream, UpstreamConfig, UpstreamModes } from './chaos-protocol.js'
import { faultLabel, schedule, unhealthy } from './chaos-schedule.js'
import type { ModeKind, Scenario, ScheduledFault } from './chaos-schedule.js'

export type { Scenario } from './chaos-schedule.js'

export interface ChaosOptions {
  seed?: number
  scenario?: Scenario
  /** length of the fault phase, ms (default 600 s for random, 30 s for churn and rolling) */
  durationMs?: number
  /** requests in flight (default 32; 64 for churn) */
  concurrency?: number
  /** the gateway's active health check interval, ms (random and rolling; default 500) */
  probeIntervalMs?: number
  /** load before the baseline is taken, ms (default 3000) */
  warmupMs?: number
  /** the quiet period before the baseline and the final sample, ms (default 5000) */
  quietMs?: number
  /** where the lines go (default console.log) */
  log?: (line: string) => void
  /** the gateway's log level (default none) */
  gatewayLog?: string | null
  /** progress line every this many ms (default 10 s) */
  progressMs?: number
}

/** A recovery check (oracle 3): the gateway's view of a target `bound` ms after it recovered. */
export interface RecoveryCheck {
  target: number
  /** ms from the start of the fault phase */
  recoveredAt: number
  sampledAfter: number
  available: boolean
  causes: string[]
  breaker: string | null
  down: boolean
  ejections: number
  panic: boolean
}

export interface Counts { [key: string]: number }

export interface KindFigures {
  sent: number
  ok: number
  failed: number
  failures: Counts
  p50: number | null
  p99: number | null
}

export interface ResourceSample {
  rssMiB: number
  /**
   * RSS less the V8 heap's committed pages no object uses: V8 sizes its
   * young generation by the allocation rate it has seen and keeps those pages
   * whatever is alive; a leak shows in the heap in use, or in the rest
   */
  netRssMiB: number
  heapMiB: number
  /** Buffers, ArrayBuffers and the C++ objects bound to JS (`memoryUsage().external`) after gc */
  externalMiB: number
  /** active handles (sockets, servers, pipes: every resource but timers) */
  handles: number
  timers: number
  resources: Counts
}

export interface ChaosReport {
  seed: number
  scenario: Scenario
  durationMs: number
  concurrency: number
  probeIntervalMs: number | null
  /** the plugin's options the gateway ran with */
  gatewayOptions: Record<string, unknown>
  /** by request kind: GET (200 JSON), GET-204, POST */
  requests: Record<string, KindFigures>
  /** `cutByTarget`: covered GETs cut mid-answer by the target serving them (counted apart, not failures of oracle 1) */
  covered: { gets: number, failed: number, failures: Counts, cutByTarget: number, evidence: string[] }
  uncovered: { gets: number, failed: number, failures: Counts }
  faults: Counts
  shifts: {
    /** a request answered with another request's echo, not explained by late stray bytes */
    unexplained: number
    /** shifts explained by stray bytes written late by the upstream that served the request (counted apart) */
    strayLate: number
    /** POST answers with the right id but another body's length or hash */
    bodyMismatch: number
    evidence: string[]
  }
  recovery: { boundMs: number | null, checked: number, late: number, voided: number, late_: RecoveryCheck[] }
  clientFaults: {
    sent: number
    skipped: number
    outcomes: Counts
    mainHangs: number
    mainImproper: number
    mainProblems: string[]
    edgeChecks: number
    edgeViolations: number
    edgeProblems: Counts
  }
  resources: {
    baseline: ResourceSample | null
    final: ResourceSample | null
    peakRssMiB: number
    rssSlackMiB: number
    heapSlackMiB: number
    externalSlackMiB: number
    handleSlack: number
    rssOk: boolean
    heapOk: boolean
    externalOk: boolean
    handlesOk: boolean
  }
  /** down: from the port freed to the next process listening; window: the same as the runner saw it (signal sent to ready received) */
  churn: { kills: number, maxDownMs: number, meanDownMs: number, maxWindowMs: number, getFailurePct: number, postFailedInFlight: number, postFailedUnread: number, postFailedOther: number, postFailedOtherKeys: Counts } | null
  rolling: { restarts: number, maxDownMs: number, meanDownMs: number, maxWindowMs: number, failedGets: number } | null
  /** the whole run, ms: start of the processes, warm-up, quiet periods, faults, stop */
  elapsedMs: number
  /** things the harness itself saw go wrong (a child that would not start, ...) */
  harness: string[]
  /** each oracle's count: 0 is a pass (resources: true) */
  oracles: {
    coveredGetFailures: number
    shifts: number
    lateRecoveries: number
    edgeViolations: number
    mainClientFaultProblems: number
    resourcesOk: boolean
  }
}

// What the plugin's code can leak is held by the V8 heap (objects), by
// external memory (Buffers, ArrayBuffers: bodies, chunks) or by handles
// (sockets, servers, timers): those three are the leak oracles, with tight
// bounds. RSS is a gross bound only: glibc's malloc keeps freed native memory
// (TLS and parser buffers of the churned connections) in its arenas, and
// the same seed on the same commit measured a net RSS from -31 to +52 MiB
// while the heap and external memory stayed within 1 MiB of their baseline.
const RSS_SLACK_MIB = 96
const HEAP_SLACK_MIB = 16
const EXTERNAL_SLACK_MIB = 16
const HANDLE_SLACK = 0
const RECOVERY_MARGIN_MS = 1000
const CLIENT_FAULT_TIMEOUT_MS = 10_000
/** upstream processes kept started and waiting for a port, for the restarts */
const STANDBYS = 3
const REQUEST_TIMEOUT_MS = 15_000
/** error categories that blame a target; a client fault must cause none of them on the edge upstream */
const CLIENT_SIDE_CATEGORIES = new Set(['client_abort', 'body_too_large'])
/** faults that can cut an answer its target was sending: a kill, a graceful stop, a reset */
const CUTTING_FAULTS = new Set(['kill', 'term', 'reset-body', 'reset-head'])

const now = (): number => performance.now()
const delay = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

function childScript (name: string): string {
  // compiled: next to this file in dist/bench; from the TypeScript source (tests): dist/bench
  const here = fileURLToPath(new URL('.', import.meta.url))
  const path = import.meta.url.endsWith('.js') ? join(here, `${name}.js`) : join(here, '..', 'dist', 'bench', `${name}.js`)
  if (!existsSync(path)) throw new Error(`${path} is missing: run npm run build`)
  return path
}

/** Children run the compiled JavaScript as is: no loader or coverage inherited from a test runner. */
function childEnv (): NodeJS.ProcessEnv {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  delete env.NODE_V8_COVERAGE
  return env
}

function bump (counts: Counts, key: string, n = 1): void {
  counts[key] = (counts[key] ?? 0) + n
}

function percentile (sorted: Float64Array, p: number): number | null {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

/** A growable list of latencies. */
class Samples {
  private data = new Float64Array(1024)
  length = 0
  push (v: number): void {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2)
      next.set(this.data)
      this.data = next
    }
    this.data[this.length++] = v
  }

  sorted (): Float64Array { return this.data.slice(0, this.length).sort() }
}

/** Resolves with the first message of a child that matches, rejects if it exits first or `ms` pass. */
async function message<T> (child: ChildProcess, match: (m: unknown) => T | undefined, ms: number, what: string): Promise<T> {
  return await new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => { done(); reject(new Error(`${what}: no answer within ${ms} ms`)) }, ms)
    const onMessage = (m: unknown): void => {
      const failed = m as { type?: string, error?: string }
      if (failed.type === 'failed') { done(); reject(new Error(`${what}: ${failed.error ?? 'failed'}`)); return }
      const v = match(m)
      if (v !== undefined) { done(); resolve(v) }
    }
    const onExit = (code: number | null, signal: string | null): void => { done(); reject(new Error(`${what}: exited (${signal ?? code})`)) }
    const done = (): void => {
      clearTimeout(timer)
      child.off('message', onMessage)
      child.off('exit', onExit)
    }
    child.on('message', onMessage)
    child.once('exit', onExit)
  })
}

/** Every child of the run, so each one is stopped by its PID whatever happens. */
class Children {
  readonly all = new Set<ChildProcess>()
  fork (script: string, args: string[], execArgv: string[], stdout: 'pipe' | 'inherit'): ChildProcess {
    const child = fork(script, args, { execArgv, env: childEnv(), stdio: ['ignore', stdout, 'inherit', 'ipc'] })
    this.all.add(child)
    child.once('exit', () => { this.all.delete(child) })
    return child
  }

  killAll (): void {
    for (const child of this.all) {
      if (child.exitCode === null && child.signalCode === null) {
        try { child.kill('SIGKILL') } catch {}
      }
    }
  }
}

interface Instance {
  label: string
  target: number
  child: ChildProcess
  /** ids received and not yet answered, closed or reset */
  pending: Set<string>
  /** POSTs it received (kept in the churn scenario only) */
  posts: Set<string>
  ended: 'kill' | 'term' | null
  /** when the signal was sent (performance.now()) */
  endedAt: number
  /** when the runner saw it exit (performance.now()) */
  goneAt: number
  exited: Promise<void>
  /** resolves once its stdout is read to the end */
  drained: Promise<void>
}

interface FaultWindow { target: number, label: string, start: number, end: number, unhealthy: boolean }

interface StatusTarget {
  url: string
  available: boolean
  health: Array<{ cause: string }>
  down: unknown
  breaker: { state: string, ok: number, failed: number } | null
  ejections: number
  errors: Record<string, number>
}
interface StatusUpstream { name: string, panic: boolean, targets: StatusTarget[] }

function portOf (url: string): number {
  try { return Number(new URL(url).port) } catch { return -1 }
}

class Run {
  readonly opts: Required<Omit<ChaosOptions, 'seed' | 'durationMs' | 'concurrency' | 'gatewayLog'>> & { seed: number, durationMs: number, concurrency: number, gatewayLog: string | null }
  readonly children = new Children()
  readonly timers = new Set<NodeJS.Timeout>()
  readonly harness: string[] = []
  readonly log: (line: string) => void
  gatewayPort = 0
  gateway: ChildProcess | null = null
  gatewayOptions: Record<string, unknown> = {}
  slots: Slot[] = []
  /** every upstream process of the main targets, in the order started */
  readonly instances: Instance[] = []
  edge: ChildProcess | null = null
  edgePorts: number[] = []
  chaosStart = 0
  stopped = false

  // request bookkeeping
  nextId = 1
  receivedBy = new Uint8Array(1 << 16)
  /** the same for the client faults' ids */
  readonly receivedOther = new Map<string, number>()
  readonly strays = new Map<string, { target: number, mode: string }>()
  /** ids that were in flight on a process when it was killed (or when a SIGTERMed one exited) */
  readonly inFlightAtEnd = new Map<string, string>()
  readonly requests: Record<string, { sent: number, ok: number, failed: number, failures: Counts, latency: Samples }> = {}
  readonly covered = { gets: 0, failed: 0, failures: {} as Counts }
  readonly uncovered = { gets: 0, failed: 0, failures: {} as Counts }
  /** the first covered GETs that failed, for the evidence (which targets they reached is known at the end) */
  readonly coveredFailures: Array<{ id: string, text: string }> = []
  /**
   * Covered GETs cut after their head reached the client, with the targets
   * faulted meanwhile: judged at the end, once the upstreams' logs tell which
   * target served each. One cut by the target that was serving it (killed,
   * reset) is beyond any proxy that streams answers; counted apart.
   */
  readonly cutCandidates: Array<{ id: string, key: string, faulted: number[], text: string }> = []
  readonly shiftRecords: Array<{ id: string, kind: string, status: number, header: string | undefined, bodyId: string | undefined }> = []
  bodyMismatch = 0
  readonly postFailures: Array<{ id: string, key: string, start: number, end: number }> = []
  readonly faults: Counts = {}
  readonly windows: FaultWindow[] = []
  /** each restart: from the port freed (listener closed, or SIGKILL sent) to the next process listening, ms */
  readonly downTimes: number[] = []
  /** each restart as the runner saw it: from the signal sent to the next process's ready message, ms */
  readonly windowTimes: number[] = []

  // oracle 3
  readonly recoveries: RecoveryCheck[] = []
  recoveryVoided = 0
  readonly pendingChecks = new Set<Promise<void>>()

  // oracle 4
  readonly clientOutcomes: Counts = {}
  clientSent = 0
  clientSkipped = 0
  mainHangs = 0
  mainImproper = 0
  /** the client faults on the main route that hung or got an improper answer */
  readonly mainProblems: string[] = []
  edgeChecks = 0
  edgeViolations = 0
  readonly edgeProblems: Counts = {}
  peakRss = 0

  private sampleSeq = 0
  private generation = 0
  private readonly standbys: Array<Promise<Instance>> = []

  constructor (opts: ChaosOptions) {
    const scenario = opts.scenario ?? 'random'
    this.opts = {
      seed: opts.seed ?? Math.floor(Math.random() * 2 ** 31),
      scenario,
      durationMs: opts.durationMs ?? (scenario === 'random' ? 600_000 : 30_000),
      concurrency: opts.concurrency ?? (scenario === 'churn' ? 64 : 32),
      probeIntervalMs: opts.probeIntervalMs ?? 500,
      warmupMs: opts.warmupMs ?? 3000,
      quietMs: opts.quietMs ?? 5000,
      log: opts.log ?? ((line: string) => { console.log(line) }),
      gatewayLog: opts.gatewayLog ?? null,
      progressMs: opts.progressMs ?? 10_000
    }
    this.log = this.opts.log
    for (const kind of ['GET', 'GET-204', 'POST']) this.requests[kind] = { sent: 0, ok: 0, failed: 0, failures: {}, latency: new Samples() }
  }

  get healthChecked (): boolean { return this.opts.scenario !== 'churn' }
  /** oracle 1's look-back: one probe interval (none without active checks) */
  get lookBack (): number { return this.healthChecked ? this.opts.probeIntervalMs : 0 }
  /** oracle 3's bound: a target healthy this long must be in rotation */
  get bound (): number | null { return this.healthChecked ? this.opts.probeIntervalMs * 2 + RECOVERY_MARGIN_MS : null }

  timer (ms: number, fn: () => void): void {
    const t = setTimeout(() => { this.timers.delete(t); fn() }, ms)
    this.timers.add(t)
  }

  clearTimers (): void {
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }

  markReceived (id: string, target: number): void {
    const n = Number(id)
    if (!Number.isInteger(n) || n <= 0) {
      this.receivedOther.set(id, (this.receivedOther.get(id) ?? 0) | (1 << target))
      return
    }
    if (n >= this.receivedBy.length) {
      let size = this.receivedBy.length
      while (size <= n) size *= 2
      const next = new Uint8Array(size)
      next.set(this.receivedBy)
      this.receivedBy = next
    }
    this.receivedBy[n]! |= 1 << target
  }

  targetsOf (id: string): number[] {
    const n = Number(id)
    const bits = Number.isInteger(n) && n > 0 ? (this.receivedBy[n] ?? 0) : (this.receivedOther.get(id) ?? 0)
    return [0, 1, 2].filter((t) => (bits & (1 << t)) !== 0)
  }

  // --- the timeline of faults (oracles 1 and 3) ---

  openWindow (target: number, label: string, isUnhealthy: boolean): FaultWindow {
    const w: FaultWindow = { target, label, start: now(), end: Infinity, unhealthy: isUnhealthy }
    this.windows.push(w)
    bump(this.faults, label)
    const slot = this.slots[target]!
    slot.open++
    slot.lastStart = w.start
    if (isUnhealthy) slot.episodeUnhealthy = true
    return w
  }

  closeWindow (w: FaultWindow): void {
    if (w.end !== Infinity) return
    w.end = now()
    const slot = this.slots[w.target]!
    slot.open--
    if (slot.open === 0 && slot.episodeUnhealthy) {
      slot.episodeUnhealthy = false
      this.scheduleRecoveryCheck(w.target, w.end)
    }
  }

  healthy (target: number, from: number, to: number): boolean {
    for (const w of this.windows) {
      if (w.target === target && w.unhealthy && w.start <= to && w.end >= from) return false
    }
    return true
  }

  faultsDuring (from: number, to: number): string[] {
    return this.windows.filter((w) => w.start <= to && w.end >= from).map((w) => `t${w.target} ${w.label}`)
  }

  pruneWindows (): void {
    const before = now() - 4 * REQUEST_TIMEOUT_MS
    for (let i = this.windows.length - 1; i >= 0; i--) {
      if (this.windows[i]!.end < before) this.windows.splice(i, 1)
    }
  }

  // --- oracle 3 ---

  scheduleRecoveryCheck (target: number, recoveredAt: number): void {
    const bound = this.bound
    if (bound === null || this.stopped) return
    const check = (async () => {
      await delay(bound)
      if (this.stopped) return
      const slot = this.slots[target]!
      if (slot.lastStart > recoveredAt) { this.recoveryVoided++; return }
      const st = await this.status()
      const at = now()
      if (slot.lastStart > recoveredAt) { this.recoveryVoided++; return }
      const main = st.find((u) => u.name === 'main')
      const t = main?.targets.find((x) => portOf(x.url) === slot.port)
      if (main === undefined || t === undefined) { this.harness.push(`status: target ${target} not found`); return }
      this.recoveries.push({
        target,
        recoveredAt: Math.round(recoveredAt - this.chaosStart),
        sampledAfter: Math.round(at - recoveredAt),
        available: t.available,
        causes: t.health.map((h) => h.cause),
        breaker: t.breaker === null ? null : t.breaker.state,
        down: t.down !== null && t.down !== undefined,
        ejections: t.ejections,
        panic: main.panic
      })
    })().catch((err: Error) => { this.harness.push(`recovery check: ${err.message}`) })
    this.pendingChecks.add(check)
    check.finally(() => { this.pendingChecks.delete(check) }).catch(() => {})
  }

  // --- the gateway's status route and its process's samples ---

  readonly statusAgent = new Agent({ connections: 4 })

  async status (): Promise<StatusUpstream[]> {
    const res = await request(`http://127.0.0.1:${this.gatewayPort}/status`, {
      dispatcher: this.statusAgent, headers: { accept: 'application/json' }, reset: true, headersTimeout: 5000, bodyTimeout: 5000
    })
    const body = await res.body.json() as { upstreams: StatusUpstream[] }
    return body.upstreams
  }

  async sample (gc: boolean, live = false): Promise<GatewaySample> {
    const gateway = this.gateway!
    const seq = ++this.sampleSeq
    const answer = message(gateway, (m) => {
      const s = m as FromGateway
      return s.type === 'sample' && s.seq === seq ? s : undefined
    }, 10_000, 'gateway sample')
    gateway.send({ type: 'sample', seq, gc, live } satisfies ToGateway)
    const s = await answer
    this.peakRss = Math.max(this.peakRss, s.rss)
    return s
  }

  /**
   * After the quiet period: three samples after gc, 150 ms apart, the least of
   * each figure. The final one (`live`) then takes a heap snapshot's
   * collection for the heap's live size, after every RSS was read (see
   * chaos-gateway.ts): the net RSS and the heap are taken against it.
   */
  async quietSample (live = false): Promise<ResourceSample> {
    await delay(this.opts.quietMs)
    const samples: GatewaySample[] = []
    for (let i = 0; i < 3; i++) {
      if (i > 0) await delay(150)
      samples.push(await this.sample(true))
    }
    if (live) {
      const last = await this.sample(true, true)
      for (const s of samples) {
        s.heapLive = Math.min(s.heapUsed, last.heapLive)
        s.external = Math.min(s.external, last.external)
      }
    }
    if (!samples[0]!.gc) this.harness.push('the gateway ran without --expose-gc: samples taken without a collection')
    const handles = (s: GatewaySample): number => Object.entries(s.resources).reduce((n, [k, v]) => k === 'Timeout' || k === 'Immediate' ? n : n + v, 0)
    const timers = (s: GatewaySample): number => (s.resources.Timeout ?? 0) + (s.resources.Immediate ?? 0)
    const least = samples.reduce((a, b) => handles(b) < handles(a) ? b : a)
    return {
      rssMiB: Math.min(...samples.map((s) => s.rss)) / 2 ** 20,
      // RSS less the committed heap nothing live holds (heapLive: see chaos-gateway.ts)
      netRssMiB: Math.min(...samples.map((s) => s.rss - Math.max(0, s.heapTotal - s.heapLive))) / 2 ** 20,
      heapMiB: Math.min(...samples.map((s) => s.heapLive)) / 2 ** 20,
      externalMiB: Math.min(...samples.map((s) => s.external)) / 2 ** 20,
      handles: handles(least),
      timers: Math.min(...samples.map(timers)),
      resources: least.resources
    }
  }

  // --- oracle 4: the edge upstream's targets ---

  async edgeCheckpoint (): Promise<void> {
    let st: StatusUpstream[]
    try { st = await this.status() } catch (err) { this.harness.push(`edge checkpoint: ${(err as Error).message}`); return }
    const edge = st.find((u) => u.name === 'edge')
    if (edge === undefined) { this.harness.push('status: no edge upstream'); return }
    this.edgeChecks++
    const problems: string[] = []
    edge.targets.forEach((t, i) => {
      for (const h of t.health) problems.push(`edge t${i}: health cause ${h.cause}`)
      if (t.down !== null && t.down !== undefined) problems.push(`edge t${i}: down`)
      if (t.breaker !== null && t.breaker.failed > 0) problems.push(`edge t${i}: breaker failed > 0`)
      if (t.breaker !== null && t.breaker.state !== 'closed') problems.push(`edge t${i}: breaker ${t.breaker.state}`)
      if (t.ejections > 0) problems.push(`edge t${i}: ejected`)
      for (const [cat, n] of Object.entries(t.errors)) if (n > 0 && !CLIENT_SIDE_CATEGORIES.has(cat)) problems.push(`edge t${i}: errors ${cat}`)
    })
    if (problems.length > 0) this.edgeViolations++
    for (const p of problems) bump(this.edgeProblems, p)
  }

  // --- the load ---

  async load (until: number, concurrency: number, seed: number): Promise<void> {
    const random = mulberry32(seed)
    const agent = new Agent({ connections: concurrency, pipelining: 1, keepAliveTimeout: 30_000, keepAliveMaxTimeout: 60_000 })
    const bodies = Buffer.alloc(256 * 1024)
    for (let i = 0; i < bodies.length; i++) bodies[i] = Math.floor(random() * 256)
    const base = `http://127.0.0.1:${this.gatewayPort}`
    const one = async (): Promise<void> => {
      const id = String(this.nextId++)
      const r = random()
      const kind = r < 0.65 ? 'GET' : r < 0.75 ? 'GET-204' : 'POST'
      let body: Buffer | undefined
      if (kind === 'POST') {
        const size = random() < 0.9 ? Math.floor(random() * 4096) : 65536 + Math.floor(random() * 65536)
        const at = Math.floor(random() * (bodies.length - size))
        body = bodies.subarray(at, at + size)
      }
      const fig = this.requests[kind]!
      fig.sent++
      const start = now()
      let status = 0
      let key: string | null = null
      let header: string | undefined
      let text = ''
      try {
        const res = await request(`${base}${kind === 'GET-204' ? '/main/empty' : '/main/echo'}?id=${id}`, {
          dispatcher: agent,
          method: kind === 'POST' ? 'POST' : 'GET',
          headers: { 'x-chaos-id': id, ...(body !== undefined ? { 'content-type': 'application/octet-stream' } : {}) },
          body,
          headersTimeout: REQUEST_TIMEOUT_MS,
          bodyTimeout: REQUEST_TIMEOUT_MS
        })
        status = res.statusCode
        const h = res.headers['x-chaos-echo']
        header = Array.isArray(h) ? h.join(',') : h
        try {
          text = await res.body.text()
        } catch (err) {
          key = `${status} then ${(err as { code?: string }).code ?? (err as Error).name}`
        }
      } catch (err) {
        key = `error ${(err as { code?: string }).code ?? (err as Error).name}`
      }
      const end = now()
      let echo: { id?: string, len?: number, hash?: string, code?: string } = {}
      if (text !== '') { try { echo = JSON.parse(text) } catch {} }
      const expected = kind === 'GET-204' ? 204 : 200
      const shifted = key === null && ((header !== undefined && header !== id) || (echo.id !== undefined && echo.id !== id))
      if (shifted) {
        this.shiftRecords.push({ id, kind, status, header, bodyId: echo.id })
        key = 'shifted (oracle 2)'
      } else if (key === null && status !== expected) {
        key = `${status} ${echo.code ?? (header !== undefined ? 'from the upstream' : 'no code')}`
      } else if (key === null && (header !== id || (kind !== 'GET-204' && echo.id !== id))) {
        // a 200 whose body is not this request's whole echo (cut, or missing its id) is no success
        key = `${status} without this request's echo (${header === undefined ? 'no echo header' : 'body cut or missing'})`
      } else if (key === null && body !== undefined && (echo.len !== body.length || echo.hash !== createHash('sha1').update(body).digest('hex'))) {
        this.bodyMismatch++
        key = 'body echo mismatch (oracle 2)'
      }
      if (key === null) {
        fig.ok++
        fig.latency.push(end - start)
      } else {
        fig.failed++
        bump(fig.failures, key)
        if (kind === 'POST') this.postFailures.push({ id, key, start, end })
      }
      if (kind !== 'POST') {
        const isCovered = [0, 1, 2].some((t) => this.healthy(t, start - this.lookBack, end))
        const c = isCovered ? this.covered : this.uncovered
        c.gets++
        if (key !== null && !shifted && isCovered && / then /.test(key)) {
          const faulted = [...new Set(this.windows.filter((w) => w.start <= end && w.end >= start && CUTTING_FAULTS.has(w.label)).map((w) => w.target))]
          this.cutCandidates.push({ id, key, faulted, text: `#${id} ${kind} ${key} at ${Math.round(start - this.chaosStart)}..${Math.round(end - this.chaosStart)} ms; faults then: ${this.faultsDuring(start - this.lookBack, end).join(', ') || 'none'}` })
        } else if (key !== null && !shifted) {
          c.failed++
          bump(c.failures, key)
          if (isCovered && this.coveredFailures.length < 20) {
            this.coveredFailures.push({ id, text: `#${id} ${kind} ${key} at ${Math.round(start - this.chaosStart)}..${Math.round(end - this.chaosStart)} ms; faults then: ${this.faultsDuring(start - this.lookBack, end).join(', ') || 'none'}` })
          }
        }
      }
    }
    try {
      await Promise.all(Array.from({ length: concurrency }, async () => {
        while (now() < until && !this.stopped) await one()
      }))
    } finally {
      await agent.close()
    }
  }

  async clientFaults (until: number, seed: number): Promise<void> {
    const random = mulberry32(seed)
    const outstanding = new Set<Promise<void>>()
    let n = 0
    while (now() < until && !this.stopped) {
      await delay(150 + Math.floor(random() * 300))
      if (now() >= until || this.stopped) break
      const kind: ClientFaultKind = clientFaultKinds[Math.floor(random() * clientFaultKinds.length)]!
      const plan: ClientFaultPlan = {
        kind,
        id: `c${++n}`,
        delays: Array.from({ length: 12 }, () => kind === 'slow-upload' ? 200 + Math.floor(random() * 200) : 50 + Math.floor(random() * 250)),
        size: kind === 'slow-upload' ? 6 + Math.floor(random() * 5) : kind === 'hang-up' ? 256 * 1024 : 1024 + Math.floor(random() * 4096)
      }
      if (outstanding.size >= 12) { this.clientSkipped++; continue }
      for (const [prefix, route] of [['/main', 'main'], ['/edge', 'edge']] as const) {
        this.clientSent++
        const p = clientFault(this.gatewayPort, prefix, route, { ...plan, id: `${plan.id}-${route}` }, CLIENT_FAULT_TIMEOUT_MS).then((r: ClientFaultResult) => {
          bump(this.clientOutcomes, `${r.route} ${r.kind}: ${r.outcome}`)
          if (r.shiftedTo !== null) this.shiftRecords.push({ id: `${plan.id}-${route}`, kind: `client fault ${r.kind}`, status: 0, header: r.header, bodyId: r.bodyId })
          if (route === 'main' && r.hang) this.mainHangs++
          if (route === 'main' && r.improper) this.mainImproper++
          if (route === 'main' && (r.hang || r.improper) && this.mainProblems.length < 20) this.mainProblems.push(`${plan.id}-main ${r.kind}: ${r.outcome}`)
        }, (err: Error) => { this.harness.push(`client fault: ${err.message}`) })
        outstanding.add(p)
        p.finally(() => { outstanding.delete(p) }).catch(() => {})
      }
    }
    await Promise.all(outstanding)
  }

  // --- processes ---

  async startGateway (): Promise<void> {
    const main = this.slots.map((s) => `http://127.0.0.1:${s.port}`)
    const edge = this.edgePorts.map((p) => `http://127.0.0.1:${p}`)
    const routes = [{ prefix: '/main', upstream: 'main' }, { prefix: '/edge', upstream: 'edge' }]
    this.gatewayOptions = this.opts.scenario === 'churn'
      // the README's Usage example, no active health check
      ? {
          upstreams: {
            main: { targets: main, balance: 'round-robin', timeouts: { headers: '5s' } },
            edge: { targets: edge, balance: 'round-robin', timeouts: { headers: '5s' } }
          },
          routes,
          pool: { maxActive: 1000, maxIdle: 100, idleTimeout: '5m', retryInterval: '5s', maxRetries: 3 },
          metrics: { path: '/metrics' },
          status: { path: '/status' },
          gracefulClose: { delay: '10s' }
        }
      // the defaults, with active health checks, and ejections (of a slow
      // target) short enough to end within oracle 3's bound
      : {
          upstreams: { main: { targets: main }, edge: { targets: edge } },
          routes,
          healthCheck: { path: '/health', interval: `${this.opts.probeIntervalMs}ms` },
          outlierDetection: { baseEjectionTime: `${this.opts.probeIntervalMs}ms`, maxEjectionTime: `${this.opts.probeIntervalMs * 2}ms` },
          metrics: false,
          status: { path: '/status' },
          gracefulClose: false
        }
    const gateway = this.gateway = this.children.fork(childScript('chaos-gateway'), [JSON.stringify({ options: this.gatewayOptions, log: this.opts.gatewayLog })], ['--expose-gc'], 'inherit')
    this.gatewayPort = await message(gateway, (m) => {
      const r = m as FromGateway
      return r.type === 'ready' ? r.port : undefined
    }, 20_000, 'gateway start')
    gateway.once('exit', (code, signal) => { if (!this.stopped) this.harness.push(`the gateway exited during the run (${signal ?? code})`) })
  }

  async startEdge (): Promise<void> {
    const config: UpstreamConfig = { ports: [0, 0, 0], standby: false, keepAliveTimeout: 5000, seed: this.opts.seed ^ 0xED6E }
    const edge = this.edge = this.children.fork(childScript('chaos-upstream'), [JSON.stringify(config)], [], 'pipe')
    edge.stdout?.resume()
    this.edgePorts = await message(edge, (m) => {
      const r = m as FromUpstream
      return r.type === 'ready' ? r.ports : undefined
    }, 20_000, 'edge upstream start')
  }

  /**
   * An upstream process: listening at once on `port` for `target`, or in
   * standby (its target and port are given when it is told to listen).
   */
  spawnUpstream (standby: boolean, target: number, port: number): Instance {
    const no = ++this.generation
    const config: UpstreamConfig = {
      ports: [port],
      standby,
      keepAliveTimeout: 5000,
      seed: (this.opts.seed ^ Math.imul(no, 0x85EBCA6B)) >>> 0
    }
    const child = this.children.fork(childScript('chaos-upstream'), [JSON.stringify(config)], [], 'pipe')
    const inst: Instance = {
      label: standby ? `#${no}` : `t${target}#${no}`,
      target,
      child,
      pending: new Set(),
      posts: new Set(),
      ended: null,
      endedAt: Infinity,
      goneAt: Infinity,
      exited: new Promise((resolve) => { child.once('exit', () => { inst.goneAt = now(); resolve() }) }),
      drained: Promise.resolve()
    }
    this.instances.push(inst)
    let rest = ''
    inst.drained = new Promise((resolve) => {
      const out = child.stdout!
      out.setEncoding('utf8')
      out.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n')
        rest = lines.pop() ?? ''
        for (const line of lines) if (line !== '') this.onLine(inst, line)
      })
      out.once('close', () => {
        if (inst.ended !== null) for (const id of inst.pending) this.inFlightAtEnd.set(id, `${inst.label} (${inst.ended})`)
        resolve()
      })
    })
    return inst
  }

  /** Keeps STANDBYS processes started and waiting, so a restart takes no process start. */
  fillStandbys (): void {
    while (this.standbys.length < STANDBYS) {
      const inst = this.spawnUpstream(true, -1, 0)
      const ready = message(inst.child, (m) => (m as FromUpstream).type === 'standby' ? inst : undefined, 30_000, `upstream ${inst.label} standby`)
      ready.catch(() => {})
      this.standbys.push(ready)
    }
  }

  /** The first standby process ready; another one is started in its place. */
  async takeStandby (): Promise<Instance> {
    const i = await Promise.race(this.standbys.map(async (p, i) => { await p; return i }))
    const [inst] = this.standbys.splice(i, 1)
    this.fillStandbys()
    return await inst!
  }

  onLine (inst: Instance, line: string): void {
    const tag = line[0]
    const rest = line.slice(2)
    if (tag === 'R') {
      const sp = rest.indexOf(' ')
      const id = sp === -1 ? rest : rest.slice(0, sp)
      inst.pending.add(id)
      this.markReceived(id, inst.target)
      if (sp !== -1 && this.opts.scenario === 'churn') inst.posts.add(id)
    } else if (tag === 'A' || tag === 'C' || tag === 'X') {
      inst.pending.delete(rest)
    } else if (tag === 'S') {
      const [id, mode] = rest.split(' ')
      if (id !== undefined && mode !== undefined) this.strays.set(id, { target: inst.target, mode })
    }
  }

  async stopChildren (): Promise<void> {
    this.stopped = true
    this.clearTimers()
    for (const child of this.children.all) {
      if (child.connected) child.disconnect()
    }
    const exits = [...this.children.all].map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 3000)
        c.once('exit', () => { clearTimeout(t); resolve() })
      })
    })
    await Promise.all(exits)
    this.children.killAll()
  }
}

/** One of the three main upstreams: its running process and its fault modes. */
class Slot {
  port = 0
  current: Instance | null = null
  modes: UpstreamModes = { ...noModes }
  readonly on = new Map<ModeKind, { count: number, param: string | null }>()
  queue: Promise<void> = Promise.resolve()
  open = 0
  lastStart = -Infinity
  episodeUnhealthy = false
  private seq = 0

  constructor (readonly run: Run, readonly index: number) {}

  /** Resolves with the port it listens on, and when it began to (ms since the epoch). */
  private async ready (inst: Instance): Promise<{ port: number, at: number }> {
    return await message(inst.child, (m) => {
      const r = m as FromUpstream
      return r.type === 'ready' ? { port: r.ports[0]!, at: r.at } : undefined
    }, 20_000, `upstream ${inst.label} start`)
  }

  async start (): Promise<void> {
    const inst = this.run.spawnUpstream(false, this.index, 0)
    this.port = (await this.ready(inst)).port
    this.current = inst
    inst.child.once('exit', () => { this.unexpected(inst) })
  }

  private unexpected (inst: Instance): void {
    if (inst.ended === null && !this.run.stopped) this.run.harness.push(`upstream ${inst.label} exited by itself`)
  }

  /**
   * Ends the running process with a signal: after SIGKILL, waits for it to be
   * gone; after SIGTERM, for its listener to be closed (it finishes its
   * requests in flight while the next process takes the port).
   */
  async end (signal: 'SIGKILL' | 'SIGTERM'): Promise<number> {
    const inst = this.current
    if (inst === null) return epoch()
    inst.ended = signal === 'SIGKILL' ? 'kill' : 'term'
    inst.endedAt = now()
    this.current = null
    if (signal === 'SIGKILL') {
      const at = epoch()
      inst.child.kill(signal)
      await inst.exited
      return at
    }
    const closed = message(inst.child, (m) => {
      const r = m as FromUpstream
      return r.type === 'closed' ? r.at : undefined
    }, 10_000, `upstream ${inst.label} SIGTERM`)
    const sent = epoch()
    inst.child.kill(signal)
    return await closed.catch(async () => { await inst.exited; return sent })
  }

  /** A standby process listens on the port (another standby is started behind it). */
  async restart (): Promise<number> {
    const inst = await this.run.takeStandby()
    inst.target = this.index
    inst.label = `t${this.index}${inst.label}`
    const ready = this.ready(inst)
    inst.child.send({ type: 'listen', ports: [this.port] } satisfies ToUpstream)
    const { at } = await ready
    this.current = inst
    inst.child.once('exit', () => { this.unexpected(inst) })
    if (Object.values(this.modes).some((v) => v !== null && v !== false)) await this.apply()
    return at
  }

  private modesNow (): UpstreamModes {
    const p = (k: ModeKind): string | null => this.on.get(k)?.param ?? null
    const isOn = (k: ModeKind): boolean => (this.on.get(k)?.count ?? 0) > 0
    return {
      refuse: isOn('refuse'),
      reset: isOn('reset') ? (p('reset') === 'body' ? 'body' : 'head') : null,
      slow: isOn('slow') ? [100, 400] : null,
      burst503: isOn('burst503'),
      stray: isOn('stray') ? (p('stray') === 'late' ? 'late' : 'same') : null
    }
  }

  async setMode (kind: ModeKind, on: boolean, param: string | null): Promise<void> {
    const entry = this.on.get(kind) ?? { count: 0, param }
    entry.count += on ? 1 : -1
    if (on) entry.param = param
    this.on.set(kind, entry)
    this.modes = this.modesNow()
    await this.apply()
  }

  private async apply (): Promise<void> {
    const inst = this.current
    if (inst === null) return
    const seq = ++this.seq
    const ack = message(inst.child, (m) => {
      const r = m as FromUpstream
      return r.type === 'ack' && r.seq === seq ? true : undefined
    }, 10_000, `upstream ${inst.label} modes`)
    inst.child.send({ type: 'modes', seq, modes: this.modes } satisfies ToUpstream)
    await ack
  }

  /** Runs fault operations on this target one after another. */
  enqueue (op: () => Promise<void>): void {
    this.queue = this.queue.then(op).catch((err: Error) => { this.run.harness.push(`t${this.index}: ${err.message}`) })
  }
}

function runFault (run: Run, f: ScheduledFault): void {
  const slot = run.slots[f.target]!
  const label = faultLabel(f)
  const isUnhealthy = unhealthy(f)
  if (f.op === 'mode') {
    slot.enqueue(async () => {
      const w = run.openWindow(f.target, label, isUnhealthy)
      await slot.setMode(f.kind, true, f.param)
      run.timer(f.duration, () => {
        slot.enqueue(async () => {
          await slot.setMode(f.kind, false, f.param)
          run.closeWindow(w)
        })
      })
    })
    return
  }
  slot.enqueue(async () => {
    const w = run.openWindow(f.target, label, isUnhealthy)
    const freed = await slot.end(f.op === 'kill' ? 'SIGKILL' : 'SIGTERM')
    if (f.restartDelay > 0) await delay(f.restartDelay)
    const listening = await slot.restart()
    run.closeWindow(w)
    run.downTimes.push(listening - freed)
    run.windowTimes.push(w.end - w.start)
  })
}

function fmt (v: number | null, digits = 1): string {
  return v === null ? '-' : v.toFixed(digits)
}

function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => '| ' + r.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |').join('\n')
}

function counts (c: Counts, limit = 12): string {
  const entries = Object.entries(c).sort((a, b) => b[1] - a[1])
  if (entries.length === 0) return 'none'
  const shown = entries.slice(0, limit).map(([k, v]) => `${k}: ${v}`).join('; ')
  return entries.length > limit ? `${shown}; (${entries.length - limit} more)` : shown
}

/** The figures of a report, as printed at the end of a run. */
export function formatReport (r: ChaosReport): string {
  const lines: string[] = []
  lines.push(`chaos ${r.scenario}: seed ${r.seed}, ${r.durationMs / 1000} s of faults (${(r.elapsedMs / 1000).toFixed(1)} s in all), ${r.concurrency} in flight, probe interval ${r.probeIntervalMs === null ? 'none' : `${r.probeIntervalMs} ms`}`)
  const req: string[][] = [['requests', 'sent', 'ok', 'failed', 'p50 ms', 'p99 ms', 'failures']]
  for (const [kind, f] of Object.entries(r.requests)) req.push([kind, String(f.sent), String(f.ok), String(f.failed), fmt(f.p50), fmt(f.p99), counts(f.failures, 6)])
  lines.push(table(req))
  const faultsTotal = Object.values(r.faults).reduce((a, b) => a + b, 0)
  const o = r.oracles
  const rows: string[][] = [['figure', 'value', 'detail']]
  rows.push(['faults injected', String(faultsTotal), counts(r.faults)])
  rows.push(['GETs covered / uncovered', `${r.covered.gets} / ${r.uncovered.gets}`, `uncovered failed: ${r.uncovered.failed} (${counts(r.uncovered.failures, 6)})`])
  rows.push(['1. covered GETs failed', String(o.coveredGetFailures), `${counts(r.covered.failures, 8)}; cut mid-answer by the target serving them, after their head reached the client (beyond a proxy that streams answers; counted apart): ${r.covered.cutByTarget}`])
  rows.push(['2. shifted answers (unexplained + body mismatch)', String(o.shifts), `unexplained ${r.shifts.unexplained}, body mismatch ${r.shifts.bodyMismatch}; late stray bytes on a reused connection (counted apart): ${r.shifts.strayLate}`])
  rows.push(['3. recoveries late', String(o.lateRecoveries), r.recovery.boundMs === null ? 'not checked (no active health check)' : `bound ${r.recovery.boundMs} ms; checked ${r.recovery.checked}, voided by a new fault ${r.recovery.voided}`])
  rows.push(['4a. edge checkpoints with a target changed', String(o.edgeViolations), `${r.clientFaults.edgeChecks} checkpoints; ${counts(r.clientFaults.edgeProblems, 6)}`])
  rows.push(['4b. main-route client faults hung or improper', String(o.mainClientFaultProblems), `hangs ${r.clientFaults.mainHangs}, improper ${r.clientFaults.mainImproper}; ${r.clientFaults.sent} sent, ${r.clientFaults.skipped} skipped`])
  const b = r.resources.baseline
  const f = r.resources.final
  rows.push(['5. gateway RSS MiB baseline / final / peak', `${fmt(b?.rssMiB ?? null)} / ${fmt(f?.rssMiB ?? null)} / ${fmt(r.resources.peakRssMiB)}`, `less V8's unused committed heap ${fmt(b?.netRssMiB ?? null)} / ${fmt(f?.netRssMiB ?? null)}, ${r.resources.rssOk ? 'ok' : 'NOT ok'}: final within baseline + ${r.resources.rssSlackMiB} MiB; V8 heap after gc ${fmt(b?.heapMiB ?? null)} / ${fmt(f?.heapMiB ?? null)} MiB, ${r.resources.heapOk ? 'ok' : 'NOT ok'}: within + ${r.resources.heapSlackMiB} MiB; external (Buffers) after gc ${fmt(b?.externalMiB ?? null)} / ${fmt(f?.externalMiB ?? null)} MiB, ${r.resources.externalOk ? 'ok' : 'NOT ok'}: within + ${r.resources.externalSlackMiB} MiB`])
  rows.push(['5. gateway handles baseline / final', `${b?.handles ?? '-'} / ${f?.handles ?? '-'}`, `${r.resources.handlesOk ? 'ok' : 'NOT ok'}: final within baseline + ${r.resources.handleSlack} (timers ${b?.timers ?? '-'} / ${f?.timers ?? '-'}); final: ${f === null ? '-' : counts(f.resources)}`])
  if (r.churn !== null) {
    rows.push(['churn: kills, down ms max / mean', `${r.churn.kills}, ${fmt(r.churn.maxDownMs)} / ${fmt(r.churn.meanDownMs)}`, `from SIGKILL to the next process listening (as the runner saw it, max ${fmt(r.churn.maxWindowMs)} ms)`])
    rows.push(['churn: GET failure %', r.churn.getFailurePct.toFixed(3), `target <= 0.1%: ${r.churn.getFailurePct <= 0.1 ? 'met' : 'missed'}`])
    rows.push(['churn: POSTs failed: in flight on a killed process / reset unread / other', `${r.churn.postFailedInFlight} / ${r.churn.postFailedUnread} / ${r.churn.postFailedOther}`,
      `in flight: logged as received by a process SIGKILLed while its client waited; reset unread: reset, logged by no process, sent while a process was dying (SIGKILL sent, exit not yet seen: sent to it before it read it); target, no other: ${r.churn.postFailedOther === 0 ? 'met' : 'missed'}; other: ${counts(r.churn.postFailedOtherKeys, 6)}`])
  }
  if (r.rolling !== null) {
    rows.push(['rolling: restarts, down ms max / mean', `${r.rolling.restarts}, ${fmt(r.rolling.maxDownMs)} / ${fmt(r.rolling.meanDownMs)}`, `from the listener closed to the next one listening; each under 250 ms: ${r.rolling.maxDownMs < 250 ? 'met' : 'missed'} (as the runner saw it, signal to ready: max ${fmt(r.rolling.maxWindowMs)} ms)`])
    rows.push(['rolling: failed GETs', String(r.rolling.failedGets), `target 0: ${r.rolling.failedGets === 0 ? 'met' : 'missed'}`])
  }
  lines.push(table(rows))
  lines.push(`client faults: ${counts(r.clientFaults.outcomes, 40)}`)
  if (r.clientFaults.mainProblems.length > 0) lines.push('main-route client faults that hung or got an improper answer:\n  ' + r.clientFaults.mainProblems.join('\n  '))
  if (r.covered.evidence.length > 0) lines.push('covered GET failures (first ones):\n  ' + r.covered.evidence.join('\n  '))
  if (r.shifts.evidence.length > 0) lines.push('shifts:\n  ' + r.shifts.evidence.join('\n  '))
  if (r.recovery.late_.length > 0) lines.push('late recoveries:\n  ' + r.recovery.late_.slice(0, 20).map((c) => `t${c.target} recovered at ${c.recoveredAt} ms, sampled ${c.sampledAfter} ms later: not available; causes [${c.causes.join(', ')}], breaker ${c.breaker ?? '-'}, down ${c.down}, ejections ${c.ejections}, panic ${c.panic}`).join('\n  '))
  if (r.harness.length > 0) lines.push('harness notes:\n  ' + r.harness.slice(0, 20).join('\n  '))
  return lines.join('\n')
}

/**
 * Runs one chaos scenario and returns its figures. Children are the compiled
 * scripts in dist/bench (run `npm run build` first). Every child is stopped by
 * its PID before this returns or throws.
 */
export async function runChaos (options: ChaosOptions = {}): Promise<ChaosReport> {
  const started = now()
  const run = new Run(options)
  const { seed, scenario, durationMs, concurrency, warmupMs } = run.opts
  run.log(`chaos seed: ${seed} (replay with CHAOS_SEED=${seed})`)
  // no orphans, however this process ends: its children are killed on exit,
  // and on SIGINT or SIGTERM before the signal takes its usual course
  const onExit = (): void => { run.children.killAll() }
  const onSignal = (signal: NodeJS.Signals): void => {
    run.children.killAll()
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    process.kill(process.pid, signal)
  }
  process.once('exit', onExit)
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const hardDeadline = now() + warmupMs + durationMs + 2 * run.opts.quietMs + 120_000
  let watchdog: NodeJS.Timeout | undefined
  try {
    const body = (async () => {
      run.slots = [0, 1, 2].map((i) => new Slot(run, i))
      await Promise.all([...run.slots.map(async (s) => { await s.start() }), run.startEdge()])
      run.fillStandbys()
      await run.startGateway()
      const withClientFaults = scenario === 'random'

      // warm-up, then the baseline after a quiet period
      run.chaosStart = now()
      const warmEnd = now() + warmupMs
      await Promise.all([
        run.load(warmEnd, concurrency, seed ^ 0x5EED0001),
        withClientFaults ? run.clientFaults(warmEnd, seed ^ 0x5EED0002) : Promise.resolve()
      ])
      if (withClientFaults) await run.edgeCheckpoint()
      const baseline = await run.quietSample()

      // the faults, under load
      const tail = (run.bound ?? 0) + 1000
      const faults = schedule(scenario, seed, durationMs, tail)
      run.chaosStart = now()
      const end = run.chaosStart + durationMs
      for (const f of faults) run.timer(f.at, () => { runFault(run, f) })
      const every = setInterval(() => {
        run.pruneWindows()
        if (withClientFaults) run.edgeCheckpoint().catch(() => {})
        run.sample(false).catch(() => {})
      }, 2000)
      const progress = setInterval(() => {
        const g = run.requests.GET!
        const p = run.requests.POST!
        run.log(`  ${Math.round((now() - run.chaosStart) / 1000)} s: GET ${g.sent} (${g.failed} failed), POST ${p.sent} (${p.failed} failed), faults ${Object.values(run.faults).reduce((a, b) => a + b, 0)}, covered GETs failed ${run.covered.failed}, recoveries ${run.recoveries.length} (${run.recoveries.filter((c) => !c.available).length} late), gateway RSS ${(run.peakRss / 2 ** 20).toFixed(0)} MiB peak`)
      }, run.opts.progressMs)
      try {
        await Promise.all([
          run.load(end, concurrency, seed ^ 0x5EED0003),
          withClientFaults ? run.clientFaults(end, seed ^ 0x5EED0004) : Promise.resolve()
        ])
        // faults still running at the end (a restart under way) finish; then the last checks
        await Promise.all(run.slots.map(async (s) => { await s.queue }))
        await Promise.all(run.pendingChecks)
      } finally {
        clearInterval(every)
        clearInterval(progress)
      }
      if (withClientFaults) await run.edgeCheckpoint()
      const final = await run.quietSample(true)
      if (withClientFaults) await run.edgeCheckpoint()
      return { baseline, final }
    })()
    const timeout = new Promise<never>((_resolve, reject) => {
      watchdog = setTimeout(() => { reject(new Error('the run passed its hard deadline')) }, hardDeadline - now())
    })
    const { baseline, final } = await Promise.race([body, timeout])
    await run.stopChildren()
    // every upstream's log read to its end: who received what, what was in flight at a kill
    await Promise.race([Promise.all(run.instances.map(async (i) => { await i.drained })), delay(5000)])
    return report(run, baseline, final, now() - started)
  } finally {
    clearTimeout(watchdog)
    run.stopped = true
    run.clearTimers()
    run.children.killAll()
    await run.statusAgent.close().catch(() => {})
    process.off('exit', onExit)
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

function max (values: number[]): number {
  return values.length === 0 ? 0 : Math.max(...values)
}

function mean (values: number[]): number {
  return values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length
}

function report (run: Run, baseline: ResourceSample, final: ResourceSample, elapsedMs: number): ChaosReport {
  const { seed, scenario, durationMs, concurrency } = run.opts
  const requests: Record<string, KindFigures> = {}
  for (const [kind, f] of Object.entries(run.requests)) {
    const sorted = f.latency.sorted()
    requests[kind] = { sent: f.sent, ok: f.ok, failed: f.failed, failures: f.failures, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }
  }

  // oracle 2: a shift is counted apart only when the echoed id is one whose
  // answer the upstream that served this request wrote again, late; or when the
  // echoed answer is the real one of a request that was itself answered by such
  // late stray bytes (its own answer then came next on that connection)
  const gotOf = (s: { id: string, header: string | undefined, bodyId: string | undefined }): string =>
    s.header !== undefined && s.header !== s.id ? s.header : (s.bodyId ?? '?')
  const byId = new Map(run.shiftRecords.map((s) => [s.id, s]))
  const reasons = new Map<string, string>()
  for (let changed = true; changed;) {
    changed = false
    for (const s of run.shiftRecords) {
      if (reasons.has(s.id)) continue
      const got = gotOf(s)
      const servedBy = run.targetsOf(s.id)
      const stray = run.strays.get(got)
      // (a request answered by late stray bytes may leave no trace on its target: the connection goes right after)
      if (stray !== undefined && stray.mode.endsWith('-late') && (servedBy.length === 0 || servedBy.includes(stray.target))) {
        reasons.set(s.id, `t${stray.target} wrote the answer of #${got} again (${stray.mode}): late stray bytes on a reused connection`)
        changed = true
      } else if (reasons.has(got) && byId.has(got) && run.targetsOf(got).some((t) => servedBy.includes(t))) {
        reasons.set(s.id, `the real answer of #${got}, which had been answered by late stray bytes on the same target`)
        changed = true
      }
    }
  }
  let strayLate = 0
  let unexplained = 0
  const unexplainedEvidence: string[] = []
  const strayEvidence: string[] = []
  for (const s of run.shiftRecords) {
    const got = gotOf(s)
    const reason = reasons.get(s.id)
    if (reason !== undefined) strayLate++
    else unexplained++
    const list = reason === undefined ? unexplainedEvidence : strayEvidence
    if (list.length < (reason === undefined ? 20 : 8)) {
      const stray = run.strays.get(got)
      list.push(`#${s.id} ${s.kind} got ${s.status} echoing #${got} (header ${s.header ?? '-'}, body ${s.bodyId ?? '-'}); #${s.id} reached ${run.targetsOf(s.id).map((t) => `t${t}`).join(',') || 'no target'}: ` +
        (reason ?? `UNEXPLAINED (${stray === undefined ? `no stray bytes were written after #${got}` : stray.mode.endsWith('-same') ? `t${stray.target} wrote stray bytes after #${got} in the same write as its answer (${stray.mode})` : `t${stray.target} wrote stray bytes after #${got} late (${stray.mode}), but #${s.id} went to another target`})`))
    }
  }
  const evidence = [...unexplainedEvidence, ...strayEvidence]

  const late = run.recoveries.filter((c) => !c.available)
  const rssOk = final.netRssMiB <= baseline.netRssMiB + RSS_SLACK_MIB
  const handlesOk = final.handles <= baseline.handles + HANDLE_SLACK
  const heapOk = final.heapMiB <= baseline.heapMiB + HEAP_SLACK_MIB
  const externalOk = final.externalMiB <= baseline.externalMiB + EXTERNAL_SLACK_MIB

  let churn: ChaosReport['churn'] = null
  if (scenario === 'churn') {
    const gets = (run.requests.GET?.sent ?? 0) + (run.requests['GET-204']?.sent ?? 0)
    const failedGets = (run.requests.GET?.failed ?? 0) + (run.requests['GET-204']?.failed ?? 0)
    // in flight on a killed process: a process logged the POST as received,
    // and was SIGKILLed while its client still waited for the answer. Apart:
    // a reset POST that no process logged, sent while a process was dying
    // (from its SIGKILL until the runner saw it exit): sent to one that died
    // before reading it (which one, no log can tell).
    let inFlight = 0
    let unread = 0
    const otherKeys: Counts = {}
    const killed = run.instances.filter((i) => i.ended === 'kill')
    for (const p of run.postFailures) {
      const during = killed.filter((i) => i.endedAt >= p.start && i.endedAt <= p.end)
      const dying = killed.filter((i) => i.endedAt <= p.end && i.goneAt >= p.start)
      if (during.some((i) => i.posts.has(p.id))) inFlight++
      else if (dying.length > 0 && run.targetsOf(p.id).length === 0 && /RESET|SOCKET/.test(p.key)) unread++
      else bump(otherKeys, p.key)
    }
    churn = {
      kills: run.faults.kill ?? 0,
      maxDownMs: max(run.downTimes),
      meanDownMs: mean(run.downTimes),
      maxWindowMs: max(run.windowTimes),
      getFailurePct: gets === 0 ? 0 : (100 * failedGets) / gets,
      postFailedInFlight: inFlight,
      postFailedUnread: unread,
      postFailedOther: run.postFailures.length - inFlight - unread,
      postFailedOtherKeys: otherKeys
    }
  }
  let rolling: ChaosReport['rolling'] = null
  if (scenario === 'rolling') {
    rolling = {
      restarts: run.downTimes.length,
      maxDownMs: max(run.downTimes),
      meanDownMs: mean(run.downTimes),
      maxWindowMs: max(run.windowTimes),
      failedGets: (run.requests.GET?.failed ?? 0) + (run.requests['GET-204']?.failed ?? 0)
    }
  }

  // Oracle 1's one exception: a GET cut after its head went out, by the very target serving it.
  let cutByTarget = 0
  for (const c of run.cutCandidates) {
    if (run.targetsOf(c.id).some((x) => c.faulted.includes(x))) {
      cutByTarget++
      continue
    }
    run.covered.failed++
    bump(run.covered.failures, c.key)
    if (run.coveredFailures.length < 20) run.coveredFailures.push({ id: c.id, text: c.text })
  }

  return {
    seed,
    scenario,
    durationMs,
    concurrency,
    probeIntervalMs: run.healthChecked ? run.opts.probeIntervalMs : null,
    gatewayOptions: run.gatewayOptions,
    requests,
    covered: { ...run.covered, cutByTarget, evidence: run.coveredFailures.map((f) => `${f.text}; reached ${run.targetsOf(f.id).map((x) => `t${x}`).join(',') || 'no target'}`) },
    uncovered: run.uncovered,
    faults: run.faults,
    shifts: { unexplained, strayLate, bodyMismatch: run.bodyMismatch, evidence },
    recovery: { boundMs: run.bound, checked: run.recoveries.length, late: late.length, voided: run.recoveryVoided, late_: late },
    clientFaults: {
      sent: run.clientSent,
      skipped: run.clientSkipped,
      outcomes: run.clientOutcomes,
      mainHangs: run.mainHangs,
      mainImproper: run.mainImproper,
      mainProblems: run.mainProblems,
      edgeChecks: run.edgeChecks,
      edgeViolations: run.edgeViolations,
      edgeProblems: run.edgeProblems
    },
    resources: {
      baseline,
      final,
      peakRssMiB: run.peakRss / 2 ** 20,
      rssSlackMiB: RSS_SLACK_MIB,
      heapSlackMiB: HEAP_SLACK_MIB,
      externalSlackMiB: EXTERNAL_SLACK_MIB,
      handleSlack: HANDLE_SLACK,
      rssOk,
      heapOk,
      externalOk,
      handlesOk
    },
    churn,
    rolling,
    elapsedMs,
    harness: run.harness,
    oracles: {
      coveredGetFailures: run.covered.failed,
      shifts: unexplained + run.bodyMismatch,
      lateRecoveries: late.length,
      edgeViolations: run.edgeViolations,
      mainClientFaultProblems: run.mainHangs + run.mainImproper,
      resourcesOk: rssOk && heapOk && externalOk && handlesOk
    }
  }
}

/** Whether a report meets every oracle (and, for churn and rolling, their targets). */
export function passed (r: ChaosReport): boolean {
  const o = r.oracles
  const base = o.coveredGetFailures === 0 && o.shifts === 0 && o.lateRecoveries === 0 && o.edgeViolations === 0 && o.mainClientFaultProblems === 0 && o.resourcesOk && r.harness.length === 0
  if (r.churn !== null) return base && r.churn.getFailurePct <= 0.1 && r.churn.postFailedOther === 0
  if (r.rolling !== null) return base && r.rolling.failedGets === 0 && r.rolling.maxDownMs < 250
  return base
}

async function main (): Promise<void> {
  const env = process.env
  const scenario = (env.CHAOS_SCENARIO ?? 'random') as Scenario
  if (!['random', 'churn', 'rolling'].includes(scenario)) throw new Error(`CHAOS_SCENARIO: ${scenario} is not random, churn or rolling`)
  const r = await runChaos({
    seed: env.CHAOS_SEED === undefined ? undefined : Number(env.CHAOS_SEED),
    scenario,
    durationMs: env.CHAOS_DURATION === undefined ? undefined : Number(env.CHAOS_DURATION) * 1000,
    concurrency: env.CHAOS_CONCURRENCY === undefined ? undefined : Number(env.CHAOS_CONCURRENCY),
    gatewayLog: env.CHAOS_LOG ?? null
  })
  console.log(formatReport(r))
  const ok = passed(r)
  console.log(ok ? 'chaos: every oracle held' : `chaos: FAILED (replay with CHAOS_SEED=${r.seed} CHAOS_SCENARIO=${r.scenario})`)
  process.exitCode = ok ? 0 : 1
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err: Error) => { console.error(err.stack ?? err.message); process.exitCode = 1 })
}

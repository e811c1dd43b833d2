import { Dispatcher } from 'undici'
import type {
  ErrorCategory, TargetHealthCause, SssonectorUpstream, TargetInput, UpgradeResult, UpstreamRequestOptions, UpstreamResponse, UpstreamStats
} from '../types/index.js'
import type { ResolvedUpstream } from './options/index.js'
import { parseTarget } from './options/index.js'
import { Target } from './target.js'
import type { TargetOwner } from './target.js'
import { SharedLimits } from './connection-pool.js'
import { undiciConnectionFactory } from './transports.js'
import type { Connection, ConnectionFactory, ConnectionSettings } from './connection-pool.js'
import { makeBalancer } from './balancer.js'
import type { Balancer, PickContext, Random } from './balancer.js'
import type { DownEvent } from './down-state.js'
import { Admission } from './admission.js'
import { ConcurrencyLimit } from './concurrency-limit.js'
import type { AdmissionHost, LeaseWaiter } from './admission.js'
import type { Lease } from './lease.js'
import type { TunnelLease } from './tunnel-lease.js'
import type { Slot } from './exchange.js'
import { RetryBudget } from './retry-policy.js'
import { Hedging } from './hedge-policy.js'
import { Lifecycle } from './lifecycle.js'
import { ClosedError, OptionsError, UnknownTargetError, faultOf } from './errors.js'
import { HealthChecker, httpProber } from './health-checker.js'
import type { Prober, ProbeResult } from './health-checker.js'
import { OutlierDetector } from './outlier-detector.js'
import type { Meter } from './metrics.js'
import { UpstreamDispatcher } from './dispatcher.js'
import { FlapLog, RateLimitedLog } from './log-limits.js'
import { Discovery } from './discovery.js'
import type { ResolvedTarget } from './options/index.js'

/** The part of Fastify's (pino's) logger an upstream uses. */
export interface UpstreamLogger {
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  debug (obj: object, msg: string): void
}

const silentLog: UpstreamLogger = { info () {}, warn () {}, debug () {} }

/** A 503 `NO_TARGET` is logged at most once per upstream per this long (ms); the line counts those not logged since the last. */
export const NO_TARGET_LOG_INTERVAL = 10_000
/** A target's state changes (and the upstream's panic) past the first two within this long are summarised in one line at its end (ms). */
export const FLAP_WINDOW = 30_000
const FLAP_LINES = 2

export interface UpstreamDeps {
  /** Where state changes are logged (Fastify's logger). */
  log?: UpstreamLogger
  /** Makes each connection's client (undici Client by default). */
  factory?: ConnectionFactory
  /** The clock (ms since the epoch). */
  now?: () => number
  /**
   * A monotonic clock in ms with sub-millisecond resolution, for attempts'
   * durations; by default `performance.now()`, or `now` when only `now` is given
   * (a test's clock then drives every time the upstream reads).
   */
  clock?: () => number
  /** Uniform numbers in [0, 1) for the balancer's draws (seeded in tests). */
  random?: Random
  /** Runs one active health probe (an HTTP request on a connection of its own by default). */
  prober?: Prober
  /** Metrics of the attempts, retries and connections. */
  meter?: Meter
  /** The window of the state changes' hysteresis in the log (ms); 0 logs each change as it comes. @default FLAP_WINDOW */
  flapWindow?: number
}

/** A waiter that settles a promise: `upstream.request()` and `lease()`. */
class PromiseWaiter implements LeaseWaiter {
  deadline = 0
  cancelled = false
  readonly key: string | undefined
  resolve!: (lease: Lease) => void
  reject!: (err: Error) => void
  readonly promise: Promise<Lease>

  constructor (key: string | undefined) {
    this.key = key
    this.promise = new Promise<Lease>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
  }

  shouldSelectAnotherHost (): boolean {
    return false
  }

  grant (lease: Lease): void {
    this.resolve(lease)
  }

  fail (err: Error): void {
    this.reject(err)
  }
}

/**
 * An upstream (Envoy's cluster): its targets and their membership, the
 * balancer, admission (the queue), active health checks and outlier
 * detection, stats, and its lifecycle. Requests reach it through one seam, a
 * Lease: `acquire(waiter)` (or `lease()`), `lease.dispatch()`,
 * `lease.release()`.
 */
export class Upstream extends Lifecycle implements SssonectorUpstream, TargetOwner, AdmissionHost {
  readonly name: string
  readonly config: ResolvedUpstream
  /** An undici Dispatcher: plain undici calls (and the proxy routes) go through the pool. */
  readonly dispatcher: UpstreamDispatcher
  readonly targets: Target[] = []
  readonly limits: SharedLimits
  readonly budget: RetryBudget
  /** Hedged requests (ExchangeHost), null when off. */
  readonly hedge: Hedging | null
  readonly random: Random
  readonly now: () => number
  /** Attempts' durations are measured on it (monotonic, sub-millisecond). */
  readonly clock: () => number
  /** Fewer targets healthy than `panicThreshold`: the judgement flags (active health, ejection) are set aside. */
  panic = false
  readonly retryInterval: number
  readonly maxRetryInterval: number
  readonly slowStart: number
  readonly meter: Meter | null
  /** Requests whose failure was the client's own, by category (they never touch a target's state). */
  readonly clientErrors: Partial<Record<ErrorCategory, number>> = {}
  /** Upgrades by result. */
  readonly upgrades: Record<UpgradeResult, number> = { ok: 0, refused: 0, failed: 0, no_target: 0, rejected: 0 }
  /** Attempts an upgrade may make (TunnelOwner). */
  readonly tunnelAttempts: number
  readonly #admission: Admission
  /** The adaptive concurrency limit admission asks; null when off. */
  readonly #limit: ConcurrencyLimit | null
  readonly #log: UpstreamLogger
  readonly #outliers: OutlierDetector | null
  #odTimer: NodeJS.Timeout | null = null
  #health: HealthChecker | null = null
  #prober: { probe: Prober, forget: (t: Target) => Promise<void>, close: () => Promise<void> } | null = null
  readonly #customProber: Prober | undefined
  readonly #balancer: Balancer<Target>
  readonly #factory: ConnectionFactory
  readonly #settings: ConnectionSettings
  readonly #onFree: () => void
  #sweepTimer: NodeJS.Timeout | null = null
  /** When the armed sweep is due. */
  #sweepDue = Infinity
  readonly #noTargetLog = new RateLimitedLog(NO_TARGET_LOG_INTERVAL)
  /** Each target's state changes in the log, made at its first change. */
  readonly #flaps = new WeakMap<Target, FlapLog>()
  readonly #panicFlaps: FlapLog
  readonly #flapWindow: number
  #flapTimer: NodeJS.Timeout | null = null
  #noTunnels: Array<() => void> = []
  /** Where the targets come from; null for a static list. */
  readonly discovery: Discovery | null
  /** Where this replica's own changes of a target's rotation go to its peers (shared state); null when off. */
  share: ((upstream: string, origin: string, event: 'down' | 'up', cause: TargetHealthCause | null, reason: string, ttl: number) => void) | null = null

  constructor (config: ResolvedUpstream, deps: UpstreamDeps = {}) {
    super()
    this.name = config.name
    this.config = config
    this.#factory = deps.factory ?? undiciConnectionFactory
    this.now = deps.now ?? Date.now
    this.clock = deps.clock ?? deps.now ?? (() => performance.now())
    this.random = deps.random ?? Math.random
    this.retryInterval = config.pool.retryInterval
    this.maxRetryInterval = config.pool.maxRetryInterval
    this.slowStart = config.slowStart
    this.#log = deps.log ?? silentLog
    this.#outliers = config.outlierDetection === null ? null : new OutlierDetector(config.outlierDetection)
    this.#customProber = deps.prober
    this.meter = deps.meter ?? null
    this.#flapWindow = deps.flapWindow ?? FLAP_WINDOW
    this.#panicFlaps = new FlapLog(this.#flapWindow, FLAP_LINES)
    this.#settings = { pool: config.pool, timeouts: config.timeouts, tls: config.tls, protocol: config.protocol, http2: config.http2 }
    this.limits = new SharedLimits(config.pool.maxActive, config.pool.maxIdle)
    this.limits.sweepBy = (due) => { this.#sweepBy(due) }
    this.budget = new RetryBudget(config.retry?.budget)
    this.hedge = config.hedge === null ? null : new Hedging(config.hedge)
    this.#balancer = makeBalancer<Target>(config.balance, this.random, this.now)
    this.#limit = config.adaptiveConcurrency === null ? null : new ConcurrencyLimit(config.adaptiveConcurrency, this.clock(), this.random)
    this.#admission = new Admission(this, { maxQueue: config.pool.maxQueue, queueTimeout: config.pool.queueTimeout, retryInterval: config.pool.retryInterval, now: this.now, maxTunnels: config.pool.maxTunnels, limit: this.#limit })
    this.tunnelAttempts = config.retry === null ? 1 : config.pool.maxRetries + 1
    this.#onFree = () => { this.#freed() }
    this.dispatcher = new UpstreamDispatcher(this)
    for (const t of config.targets) this.targets.push(this.#makeTarget(t))
    this.#balancer.update(this.targets)
    const owner = this
    this.discovery = config.discovery === null
      ? null
      : new Discovery(config.discovery, {
        name: this.name,
        get targetCount () { return owner.targets.length },
        replaceTargets: (list) => { this.#replace(list).catch(() => {}) }
      }, { log: this.#log, now: this.now, random: this.random })
  }

  /** The first discovery lookup (the app's ready waits for it, bounded by the discovery's timeout), then its refreshes. */
  async startDiscovery (): Promise<void> {
    if (this.discovery === null || this.closed) return
    await this.discovery.start()
  }

  /** The log fields of a target: its URL, and the name it serves where that is not the URL's host. */
  #fieldsOf (target: Target): { upstream: string, target: string, host?: string } {
    return !target.named
      ? { upstream: this.name, target: target.url }
      : { upstream: this.name, target: target.url, host: target.host }
  }

  #makeTarget (t: ResolvedUpstream['targets'][number]): Target {
    const target = new Target(t, this.#settings, this.limits, this.#factory, this, this.#onFree, this.config.circuitBreaker)
    const meter = this.meter?.target(this.name, target.url) ?? null
    target.meter = meter
    const log = this.#log
    const fields = this.#fieldsOf(target)
    target.observe({
      opened () {
        meter?.connectionOpened()
        log.debug(fields, 'connection opened')
      },
      closed (age) {
        meter?.connectionClosed(age)
        log.debug({ ...fields, age }, 'connection closed')
      },
      anomaly (err) {
        log.warn({ ...fields, reason: 'protocol', err: err.message }, 'connection closed on a framing anomaly (bytes the upstream sent outside any answer)')
        target.anomaly()
      }
    })
    return target
  }

  // ---------------------------------------------------------------- the seam

  /** Requests admitted and not yet released. */
  get active (): number {
    return this.#admission.active
  }

  /** Requests waiting in the queue. */
  get pending (): number {
    return this.#admission.pending
  }

  /** A lease for the waiter: now, from the queue, or a 503 (see Admission). */
  acquire (waiter: LeaseWaiter): void {
    this.#admission.acquire(waiter)
  }

  /** A queued waiter whose client left. */
  cancel (waiter: LeaseWaiter): void {
    this.#admission.cancel(waiter)
  }

  /** A lease, now or after waiting in the queue; an abort of `signal` takes it out of the queue. */
  async lease (key?: string, signal?: AbortSignal): Promise<Lease> {
    const w = new PromiseWaiter(key)
    if (signal !== undefined) {
      if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))
      const onAbort = (): void => {
        this.cancel(w)
        w.reject(signal.reason as Error)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      w.promise.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => {})
    }
    this.acquire(w)
    return await w.promise
  }

  /**
   * A tunnel lease for an upgrade (see Admission#tunnel): a slot apart from
   * requests and a target in rotation, now or a 503 thrown; counted under
   * `rejected`/`no_target` when refused.
   */
  tunnel (key?: string): TunnelLease {
    try {
      return this.#admission.tunnel(key)
    } catch (err) {
      this.upgraded((err as { code?: string }).code === 'FST_SSSONECTOR_NO_TARGET' ? 'no_target' : 'rejected')
      throw err
    }
  }

  /** TunnelOwner: a tunnel lease is over; its duration, if it opened, goes to the metrics. */
  tunnelReleased (_lease: TunnelLease, opened: number): void {
    this.#admission.tunnelReleased()
    if (this.#admission.tunnels === 0 && this.#noTunnels.length > 0) {
      const waiting = this.#noTunnels
      this.#noTunnels = []
      for (const fn of waiting) fn()
    }
    if (opened >= 0) this.meter?.tunnelClosed(this.name, (this.clock() - opened) / 1000)
  }

  /**
   * Waits up to `ms` for the tunnels to end, then closes those still open
   * (the app closing), and resolves once every tunnel lease is released.
   */
  async closeTunnels (ms: number): Promise<void> {
    if (this.#admission.tunnels === 0) return
    const none = new Promise<void>((resolve) => { this.#noTunnels.push(resolve) })
    const timer = setTimeout(() => {
      for (const t of this.targets) t.closeTunnels('closing')
    }, Math.max(0, ms))
    timer.unref()
    await none
    clearTimeout(timer)
  }

  /** A 503 `CLOSED` for an upgrade refused because the app is closing, counted. */
  closedError (): Error {
    this.upgraded('rejected')
    return this.#admission.closedError()
  }

  /** Counts what an upgrade came to. */
  upgraded (result: UpgradeResult): void {
    this.upgrades[result]++
  }

  /** Tunnels granted and not yet released. */
  get tunnels (): number {
    return this.#admission.tunnels
  }

  /** LeaseOwner: a lease is over. */
  released (lease: Lease): void {
    this.#admission.released(lease)
    lease.target.leased--
    lease.target.settle()
    if (lease.category !== null) this.clientError(lease.category)
    this.#admission.drain()
  }

  /** Counts a request that failed by the client's own fault (other categories are not counted here). */
  clientError (category: ErrorCategory): void {
    if (faultOf(category) === 'client') this.clientErrors[category] = (this.clientErrors[category] ?? 0) + 1
  }

  /** AdmissionHost: the balancer's pick. */
  pick (context: PickContext<Target>): Target | undefined {
    return this.#balancer.pick(context)
  }

  /** AdmissionHost: a connection on this target; at `maxActive`, another target's least recently used idle one is closed to make room. */
  connect (target: Target, fresh: boolean): Connection | undefined {
    const conn = target.takeConnection(fresh)
    if (conn !== undefined) return conn
    let oldest: Target | undefined
    let at = Infinity
    for (const t of this.targets) {
      if (t === target) continue
      const since = t.oldestIdle()
      if (since < at) {
        at = since
        oldest = t
      }
    }
    if (oldest !== undefined) oldest.evictIdle()
    else target.evictIdle()
    return target.takeConnection(fresh)
  }

  /** AdmissionHost: some target in rotation (at its caps, maybe), or a trial under way whose result may bring one back. */
  mayServe (): boolean {
    const now = this.now()
    for (const t of this.targets) if (t.available(now) || t.trialInFlight) return true
    return false
  }

  /** AdmissionHost: seconds until the first skipped target may be tried again (at least 1); retryInterval when none is skipped. */
  noTargetRetryAfter (): number {
    const now = this.now()
    let soonest = Infinity
    for (const t of this.targets) {
      if (t.draining) continue
      const wait = t.retryIn(now)
      if (wait > 0) soonest = Math.min(soonest, wait)
    }
    return Math.max(1, Math.ceil((soonest === Infinity ? this.retryInterval : soonest) / 1000))
  }

  /**
   * AdmissionHost: a 503 `NO_TARGET`, logged at most once per
   * NO_TARGET_LOG_INTERVAL with the refusals not logged since the last line
   * and why each target is out (the route answers it without Fastify's
   * error line per request).
   */
  refusedNoTarget (): void {
    const now = this.now()
    const suppressed = this.#noTargetLog.hit(now)
    if (suppressed < 0) return
    const targets = this.targets.map((t) => ({ target: t.url, causes: t.causes(now).map((c) => `${c.cause}: ${c.reason}`) }))
    this.#log.warn({ upstream: this.name, reason: 'no_target', suppressed, targets },
      `no target can take requests: answering 503 (logged at most once per ${NO_TARGET_LOG_INTERVAL / 1000}s; suppressed: refusals since the last line)`)
  }

  /** ExchangeHost: a target for a retry, and a connection and ticket on it. */
  take (context: PickContext<Target>, broken: Target | null): Slot | null {
    const target = this.#balancer.pick(context)
    if (target === undefined) return null
    const conn = this.connect(target, target === broken)
    if (conn === undefined) return null
    return { target, conn, ticket: target.begin() }
  }

  /** TargetOwner: no target is in rotation, so a skipped one may take its trial early. Only asked while a target is out. */
  get quickRecovery (): boolean {
    return !this.anyInRotation()
  }

  /** ExchangeHost: whether any target is in rotation. */
  anyInRotation (): boolean {
    const now = this.now()
    for (const t of this.targets) if (t.available(now)) return true
    return false
  }

  /** ExchangeHost: whether any target is not leaving, but those given. */
  anyTarget (except: readonly Target[] | null): boolean {
    for (const t of this.targets) if (!t.draining && (except === null || !except.includes(t))) return true
    return false
  }

  /** ExchangeHost: whether some target fits the context now, asked of each. */
  fits (context: PickContext<Target>): boolean {
    for (const t of this.targets) if (t.canTake() && !context.shouldSelectAnotherHost(t)) return true
    return false
  }

  /** ExchangeHost: a failed attempt, logged with its category. */
  attemptFailed (target: Target, category: ErrorCategory, attempt: number, retried: boolean): void {
    const fields = { ...this.#fieldsOf(target), reason: category, attempt }
    if (faultOf(category) !== 'target') this.#log.debug(fields, 'attempt ended by the client')
    else if (retried) this.#log.info(fields, 'attempt failed, retrying')
    else this.#log.warn(fields, 'attempt failed')
  }

  /** ExchangeHost: a retry that could not happen. */
  retryGivenUp (target: Target, category: ErrorCategory, attempt: number, why: string): void {
    this.#log.warn({ upstream: this.name, target: target.url, reason: category, attempt, why, retries: this.budget.active, active: this.active }, 'retry given up')
  }

  /** ExchangeHost: a retry, counted. */
  retried (category: ErrorCategory): void {
    this.meter?.retry(this.name, category)
  }

  // ---------------------------------------------------------------- target state

  /**
   * TargetOwner: a target went out of rotation or came back, for one cause:
   * logged once (warn out, info back; draining, a removal or a close, at
   * info), with hysteresis: past the first two changes of a target within
   * the flap window, the rest are summarised in one line at its end. The
   * panic state follows; the queue may move.
   */
  healthChanged (target: Target, cause: TargetHealthCause, event: DownEvent, reason: string): void {
    const fields = { ...this.#fieldsOf(target), cause, reason }
    if (cause === 'draining') {
      this.#log.info(fields, 'target out of rotation: draining')
    } else if (event === 'trial-failed') {
      this.#log.debug(fields, `target still out of rotation: ${cause}, trial failed`)
    } else if (!this.#flapsOf(target).change(this.now())) {
      this.#armFlapSummary()
    } else if (event === 'down') {
      this.#log.warn(fields, `target out of rotation: ${cause}`)
    } else {
      // The 503s not logged yet end with the outage: this line tells how many there were.
      const refused = this.#noTargetLog.take()
      this.#log.info(refused === 0 ? fields : { ...fields, refused }, `target back in rotation: ${cause} cleared`)
    }
    if (this.share !== null && cause !== 'peer' && cause !== 'draining') this.#shareChange(target)
    this.#updatePanic()
    this.#admission.drain()
  }

  /**
   * Tells the peers where the target stands after a change of this replica's
   * own: out (with its first cause, and the latest deadline of its causes; an
   * open-ended one, active health, holds `pool.maxRetryInterval`) or back.
   */
  #shareChange (target: Target): void {
    const now = this.now()
    const own = target.causes(now).filter((c) => c.cause !== 'peer' && c.cause !== 'draining')
    if (own.length === 0) {
      this.share!(this.name, target.origin, 'up', null, '', 0)
      return
    }
    let until = 0
    for (const c of own) until = Math.max(until, c.until ?? now + this.maxRetryInterval)
    this.share!(this.name, target.origin, 'down', own[0].cause, own[0].reason, until - now)
  }

  /** A peer's report on one of its targets (see shared-state.ts): false when it has no such target. */
  peerReport (origin: string, event: 'down' | 'up', until: number, reason: string): boolean {
    const target = this.targets.find((t) => t.origin === origin)
    if (target === undefined) return false
    if (event === 'down') target.setPeer(until, reason)
    else target.clearPeer(reason)
    return true
  }

  #flapsOf (target: Target): FlapLog {
    let flaps = this.#flaps.get(target)
    if (flaps === undefined) this.#flaps.set(target, flaps = new FlapLog(this.#flapWindow, FLAP_LINES))
    return flaps
  }

  /** Arms the timer of the next summary of changes not logged, unless one is armed. */
  #armFlapSummary (): void {
    if (this.#flapTimer !== null || this.closed) return
    let due = this.#panicFlaps.due ?? Infinity
    for (const t of this.targets) due = Math.min(due, this.#flaps.get(t)?.due ?? Infinity)
    if (due === Infinity) return
    this.#flapTimer = setTimeout(() => { this.#summariseFlaps() }, Math.max(0, due - this.now()))
    this.#flapTimer.unref()
  }

  /** Logs the changes not logged in each window that ended, with the state now. */
  #summariseFlaps (): void {
    this.#flapTimer = null
    const now = this.now()
    const seconds = this.#flapWindow / 1000
    for (const t of this.targets) {
      const changes = this.#flaps.get(t)?.summary(now) ?? 0
      if (changes === 0) continue
      const causes = t.causes(now).map((c) => `${c.cause}: ${c.reason}`)
      const fields = { upstream: this.name, target: t.url, changes, window: this.#flapWindow, causes }
      if (causes.length > 0) this.#log.warn(fields, `target flapping: ${changes} more state changes within ${seconds}s; out of rotation now: ${causes.join(', ')}`)
      else this.#log.info(fields, `target flapping: ${changes} more state changes within ${seconds}s; in rotation now`)
    }
    const changes = this.#panicFlaps.summary(now)
    if (changes > 0) {
      const fields = { upstream: this.name, changes, window: this.#flapWindow, panic: this.panic }
      if (this.panic) this.#log.warn(fields, `panic flapping: ${changes} more changes within ${seconds}s; in panic now`)
      else this.#log.info(fields, `panic flapping: ${changes} more changes within ${seconds}s; panic over now`)
    }
    this.#armFlapSummary()
  }

  /** TargetOwner: an attempt of the target's own ended. */
  observed (target: Target, failed: boolean, latency: number): void {
    this.#outliers?.record(target, failed, latency)
    // The adaptive limit samples answers (a failure's latency says little of the load); a raised limit lets the queue move.
    if (!failed && this.#limit?.record(latency, this.clock(), this.#admission.active) === true) this.#admission.drain()
  }

  /** TargetOwner: a target back from an ejection made its probation attempts. */
  probationOver (target: Target, latency: number, failures: number, attempts: number): void {
    const detector = this.#outliers
    if (detector === null) return
    const now = this.now()
    const reason = detector.judgeProbation(target, latency, failures, attempts, this.targets, now)
    const fields = { upstream: this.name, target: target.url }
    if (reason === null) {
      this.#log.info(fields, 'target passed its probation after an ejection')
      return
    }
    target.eject(detector.ejectionEnd(target, now, this.random), `still an outlier on probation: ${reason}`)
  }

  #updatePanic (): void {
    const threshold = this.config.panicThreshold
    let panic = false
    if (threshold > 0) {
      const now = this.now()
      let inService = 0
      let healthy = 0
      for (const t of this.targets) {
        if (t.draining) continue
        inService++
        if (t.healthy(now)) healthy++
      }
      panic = inService > 0 && healthy * 100 < threshold * inService
    }
    if (panic !== this.panic) {
      this.panic = panic
      if (!this.#panicFlaps.change(this.now())) this.#armFlapSummary()
      else if (panic) this.#log.warn({ upstream: this.name, threshold }, 'panic: too few healthy targets, sending to all of them')
      else this.#log.info({ upstream: this.name }, 'panic over')
    }
  }

  /**
   * Starts the active health checks and outlier detection. Resolves once every
   * target had its first probe (each bounded by the probe timeout): a gateway
   * never starts by sending traffic to a dead target (Envoy's cluster warming).
   */
  async startHealth (): Promise<void> {
    const od = this.config.outlierDetection
    if (od !== null && this.#odTimer === null && !this.closed) {
      this.#odTimer = setTimeout(() => { this.#judgeOutliers() }, od.interval)
      this.#odTimer.unref()
    }
    const hc = this.config.healthCheck
    if (hc === null || this.#health !== null || this.closed) return
    if (this.#customProber === undefined) this.#prober = httpProber(hc, this.config.tls, this.config.timeouts.connect, this.config)
    const probe = this.#customProber ?? this.#prober!.probe
    this.#health = new HealthChecker(hc, probe, this.random, (target, result, epoch) => { this.#probed(target, result, epoch) })
    await this.#health.start(this.targets)
  }

  /** Stops the active checks and outlier detection (closing: they would only add noise). */
  stopHealth (): void {
    this.#health?.stop()
    if (this.#odTimer !== null) clearTimeout(this.#odTimer)
    this.#odTimer = null
  }

  #probed (target: Target, result: ProbeResult, epoch: number): void {
    if (result.connected) target.probed(epoch, result.ok)
    if (result.ok) target.clearPeer('an active check of this replica\'s own passed')
    if (!result.ok) {
      target.hcFailures++
      this.#log.debug({ upstream: this.name, target: target.url, reason: result.reason }, 'active check failed')
    }
  }

  #judgeOutliers (): void {
    const now = this.now()
    for (const { target, until, reason } of this.#outliers!.judge(this.targets, now, this.random)) target.eject(until, reason)
    this.#odTimer!.refresh()
  }

  // ---------------------------------------------------------------- connections

  /** Capacity came free (a connection went idle or closed): serve the queue, keep the idle sweep armed. */
  #freed (): void {
    if (this.limits.idle > 0 && this.#sweepTimer === null) this.#armSweep()
    this.#admission.drain()
  }

  #armSweep (): void {
    let due = Infinity
    for (const t of this.targets) due = Math.min(due, t.nextSweep())
    if (due === Infinity) return
    this.#sweepDue = due
    this.#sweepTimer = setTimeout(() => { this.sweep() }, Math.max(0, due - this.now()))
    this.#sweepTimer.unref()
  }

  /** A pool needs a sweep by `due` (an idle connection nears its target's learned idle timeout): armed earlier when the one armed comes later. */
  #sweepBy (due: number): void {
    if (this.#sweepTimer !== null) {
      if (this.#sweepDue <= due) return
      clearTimeout(this.#sweepTimer)
    }
    this.#sweepDue = due
    this.#sweepTimer = setTimeout(() => { this.sweep() }, Math.max(0, due - this.now()))
    this.#sweepTimer.unref()
  }

  /** Closes idle connections past their time, and arms the next sweep. */
  sweep (): void {
    this.#sweepTimer = null
    const now = this.now()
    for (const t of this.targets) t.sweep(now)
    if (this.limits.idle > 0 && this.#sweepTimer === null) this.#armSweep()
  }

  // ---------------------------------------------------------------- client use

  async request (options: UpstreamRequestOptions): Promise<UpstreamResponse> {
    if (options === null || typeof options !== 'object') throw new OptionsError(`request: ${String(options)} is not an object { method, path }`)
    if (typeof options.path !== 'string' || !options.path.startsWith('/')) throw new OptionsError(`request.path: ${JSON.stringify(options.path)} is not a path starting with "/"`)
    if (typeof options.method !== 'string' || options.method === '') throw new OptionsError(`request.method: ${JSON.stringify(options.method)} is not an HTTP method`)
    if (options.hashKey !== undefined && typeof options.hashKey !== 'string') throw new OptionsError(`request.hashKey: ${JSON.stringify(options.hashKey)} is not a string`)
    const lease = await this.lease(options.hashKey, options.signal)
    try {
      const res = await Dispatcher.prototype.request.call(lease as unknown as Dispatcher, {
        origin: lease.target.origin,
        path: options.path,
        method: options.method as Dispatcher.HttpMethod,
        headers: { ...options.headers, host: lease.target.host } as Record<string, string>,
        body: options.body ?? null,
        signal: options.signal
      })
      // The lease of a client request lasts until its body is read or destroyed.
      res.body.once('close', () => { lease.release() })
      return { statusCode: res.statusCode, headers: res.headers, body: res.body }
    } catch (err) {
      lease.release()
      throw err
    }
  }

  // ---------------------------------------------------------------- membership

  /** Membership by hand is refused where discovery owns the list (its next refresh would undo it). */
  #ownList (call: string): void {
    if (this.discovery !== null) throw new OptionsError(`upstream(${this.name}).${call}: the targets come from discovery (${this.discovery.what}); change them at the source`)
  }

  addTarget (input: TargetInput): void {
    this.#ownList('addTarget')
    const resolved = parseTarget(input, `upstream(${this.name}).addTarget`)
    if (this.targets.some((t) => t.origin === resolved.origin)) {
      throw new OptionsError(`upstream(${this.name}).addTarget: ${JSON.stringify(resolved.url)} is a target already`)
    }
    const target = this.#makeTarget(resolved)
    this.#watch(target)
    this.targets.push(target)
    this.#balancer.update(this.targets)
    this.#updatePanic()
    this.#freed()
  }

  /** A target added at run time: with active checks on, kept out until its first probe passes. */
  #watch (target: Target): void {
    if (this.#health === null) return
    target.setActiveHealth(true, 'added: waiting for its first active check')
    this.#health.add(target).catch(() => {})
  }

  /** A target gone: its checks stop, its probe connection closes. */
  async #unwatch (target: Target): Promise<void> {
    this.meter?.forget(this.name, target.url)
    this.#health?.remove(target)
    this.#outliers?.forget(target)
    await this.#prober?.forget(target)
  }

  async removeTarget (url: string): Promise<void> {
    this.#ownList('removeTarget')
    let origin: string
    try {
      origin = new URL(url).origin
    } catch {
      throw new UnknownTargetError(this.name, JSON.stringify(url))
    }
    const i = this.targets.findIndex((t) => t.origin === origin)
    if (i === -1) throw new UnknownTargetError(this.name, JSON.stringify(url))
    const target = this.targets[i]
    this.targets.splice(i, 1)
    this.#balancer.update(this.targets)
    await this.#unwatch(target)
    await target.drain()
    this.#updatePanic()
    // Its connections are gone: room for the queue elsewhere.
    this.#freed()
  }

  async setTargets (list: TargetInput[]): Promise<void> {
    this.#ownList('setTargets')
    if (!Array.isArray(list)) throw new OptionsError(`upstream(${this.name}).setTargets: ${JSON.stringify(list)} is not an array`)
    const wanted = list.map((t, i) => parseTarget(t, `upstream(${this.name}).setTargets[${i}]`))
    const seen = new Set<string>()
    for (const [i, t] of wanted.entries()) {
      if (seen.has(t.origin)) throw new OptionsError(`upstream(${this.name}).setTargets[${i}]: ${JSON.stringify(t.url)} is listed twice`)
      seen.add(t.origin)
    }
    await this.#replace(wanted)
  }

  /**
   * Puts a checked list in force in one step: new targets join (behind their
   * first active check, ramping up with slowStart), kept ones (by address)
   * stay with their state and take the new weight, gone ones drain; resolves
   * once they are drained.
   */
  async #replace (wanted: ResolvedTarget[]): Promise<void> {
    if (this.closed) return
    // One step: the new list is in force before anything drains.
    const byOrigin = new Map(this.targets.map((t) => [t.origin, t]))
    const next: Target[] = []
    for (const w of wanted) {
      const existing = byOrigin.get(w.origin)
      if (existing !== undefined) {
        existing.weight = w.weight
        byOrigin.delete(w.origin)
        next.push(existing)
      } else {
        const target = this.#makeTarget(w)
        this.#watch(target)
        next.push(target)
      }
    }
    this.targets.length = 0
    this.targets.push(...next)
    this.#balancer.update(this.targets)
    this.#updatePanic()
    this.#freed()
    await Promise.all([...byOrigin.values()].map(async (t) => {
      await this.#unwatch(t)
      await t.drain()
    }))
    this.#freed()
  }

  // ---------------------------------------------------------------- stats and lifecycle

  /** Plain JSON of its state. Reads only: a scrape or the status page never moves anything. */
  stats (): UpstreamStats {
    const now = this.now()
    const a = this.#admission
    return {
      name: this.name,
      balance: this.config.balance,
      protocol: this.config.protocol,
      active: a.active,
      pending: a.pending,
      panic: this.panic,
      connections: this.limits.open,
      idle: this.limits.idle,
      admitted: a.admitted,
      rejected: { ...a.rejected },
      clientErrors: { ...this.clientErrors },
      retriesActive: this.budget.active,
      tunnels: a.tunnels,
      upgrades: { ...this.upgrades },
      hedges: this.hedge?.stats() ?? null,
      adaptiveConcurrency: this.#adaptiveStats(),
      discovery: this.discovery?.stats() ?? null,
      targets: this.targets.map((t) => t.stats(now))
    }
  }

  #adaptiveStats (): UpstreamStats['adaptiveConcurrency'] {
    const l = this.#limit
    if (l === null) return null
    return { limit: l.limit, minRtt: l.minRtt, sampleRtt: l.sampleRtt, gradient: l.gradient, measuringMinRtt: l.measuring, measurements: l.measurements, limited: this.#admission.limited }
  }

  /** Stops admitting; what waits in the queue and what is in flight finish; then every connection closes and its timers stop. */
  protected async onClose (): Promise<void> {
    this.discovery?.stop()
    this.stopHealth()
    await this.#prober?.close()
    // The queue drains as connections free; whatever cannot be served by the end of its wait gets its 503 then.
    await this.#admission.whenEmpty()
    this.#admission.stop()
    await Promise.all(this.targets.map(async (t) => { await t.drain('closing') }))
    this.#stopTimers()
  }

  /** Fails what waits in the queue with 503 `CLOSED`, ends what is in flight, closes every connection. */
  protected async onDestroy (err: Error | null): Promise<void> {
    this.discovery?.stop()
    this.stopHealth()
    for (const t of this.targets) t.closeTunnels('upstream destroyed')
    this.#admission.failAll(() => err ?? this.#admission.closedError())
    for (const lease of this.#admission.live) lease.abort(err ?? new ClosedError(this.name))
    await this.#prober?.close()
    await Promise.all(this.targets.map(async (t) => { await t.drain('closing') }))
    this.#stopTimers()
  }

  #stopTimers (): void {
    if (this.#sweepTimer !== null) clearTimeout(this.#sweepTimer)
    this.#sweepTimer = null
    if (this.#flapTimer !== null) clearTimeout(this.#flapTimer)
    this.#flapTimer = null
  }
}

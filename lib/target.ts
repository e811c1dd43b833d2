import { isIP } from 'node:net'
import type { ErrorCategory, TargetHealthCause, TargetStats } from '../types/index.js'
import type { ResolvedCircuitBreaker, ResolvedTarget } from './options/index.js'
import { TargetPool } from './connection-pool.js'
import type { Connection, ConnectionFactory, ConnectionSettings, PoolObserver, SharedLimits } from './connection-pool.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { TargetDownState, isTrial } from './down-state.js'
import type { DownEvent, SkipCause, Ticket } from './down-state.js'
import { CONNECT_FAILURES, faultOf } from './errors.js'
import type { TargetMeter } from './metrics.js'
import type { Pickable } from './balancer.js'
import { FAILED, RollingWindow } from './rolling-window.js'
import { PeakEwma } from './peak-ewma.js'

/** What a target needs from its upstream: the clock, chance, panic, and where to report what it sees. */
export interface TargetOwner {
  readonly name: string
  now: () => number
  random: () => number
  /** Fewer targets healthy than the panic threshold: the judgement flags (active health, ejection) are set aside. */
  readonly panic: boolean
  /** No target is in rotation: a skipped target may take its trial before its skip is over (see down-state.ts). */
  readonly quickRecovery: boolean
  readonly retryInterval: number
  readonly maxRetryInterval: number
  /** Ramp-up after a return, in ms (0: none). */
  readonly slowStart: number
  /** A target went out of rotation or came back for one cause; or, out already, failed a trial. */
  healthChanged: (target: Target, cause: TargetHealthCause, event: DownEvent, reason: string) => void
  /** A target back from an ejection made its probation attempts: ejects it again, or lets it be. */
  probationOver: (target: Target, latency: number, failures: number, attempts: number) => void
  /** An attempt of the target's own (not a client's fault) ended: for the outlier detector. */
  observed: (target: Target, failed: boolean, latency: number) => void
}

/** An open tunnel on a target, which its target closes when it leaves (its drain time over). */
export interface OpenTunnel {
  close (why: string): void
}

/** What one attempt came to, put once into its target (Envoy's outlier `putResult`). */
export interface AttemptResult {
  /** The failure's category; null when an answer came (its `status` tells). */
  category: ErrorCategory | null
  /** The answer's status, 0 when there was none. */
  status: number
  /** Milliseconds. */
  latency: number
  /** It failed and the request was retried on another target. */
  retried?: boolean
  /** Milliseconds to the answer's headers, when one came (the peak-EWMA estimate's sample: a long body is not a slow target). */
  headers?: number
  /** Milliseconds the answer's `Retry-After` asked for (a 429 or 5xx), 0 or absent when none. */
  retryAfter?: number
}

/**
 * Attempts a target back from an ejection makes, one at a time, before it
 * takes its full share: then its mean latency and failures are judged against
 * its peers', and an outlier still is ejected again at once. A target still
 * slow costs this many slow requests per ejection, not an interval's share.
 */
export const PROBATION_ATTEMPTS = 3

const DOWN_CAUSE: Record<SkipCause, TargetHealthCause> = { connect: 'connect_failed', breaker: 'circuit_open' }

/** The status class of an attempt, for the metrics and the rolling window: 1xx..5xx as 0..4, 5 (FAILED) for a failure with no answer. */
function statusClass (result: AttemptResult): number {
  if (result.category !== null && result.category !== 'http_5xx') return FAILED
  return Math.min(4, Math.max(0, ((result.status / 100) | 0) - 1))
}

/**
 * A target (Envoy's host): its origin and weight, its connections, the
 * counters the balancer and stats read, and its health, with each cause kept
 * apart (Envoy's health flags): its down state (skipped after failed connects
 * or an open breaker, then trials; see down-state.ts), failed active checks,
 * an ejection as an outlier, draining. Only the target's own faults move it:
 * a client's bad body, hang-up or timeout never does.
 */
export class Target implements Pickable {
  readonly url: string
  readonly origin: string
  /** `host[:port]`, as sent in the Host header: the name it serves. */
  readonly host: string
  /**
   * The TLS server name its connections and probes present and check (SNI):
   * `tls.servername`, else the name it serves (a `host` given or discovered),
   * else its URL's host name; undefined for an address (undici then takes the
   * Host header's name, if any).
   */
  readonly servername: string | undefined
  /** It serves a name other than its URL's host (a `host` given, or discovered): logs and the status page show both. */
  readonly named: boolean
  weight: number
  readonly addedAt: number
  /** Attempts on this target now. */
  active = 0
  /** Requests admitted with this target and not yet released. */
  leased = 0
  /** Tunnels granted on this target (their upgrade under way, or open) and not yet released. */
  tunnels = 0
  /** Its tunnels, upgrade under way or open (long-lived: a Set is cheap here). */
  readonly #open = new Set<OpenTunnel>()
  readonly #tunnelDrain: number
  #tunnelTimer: NodeJS.Timeout | null = null
  /** Attempts sent since start. */
  requests = 0
  /** Its own failed attempts, by category (5xx answers and clients' faults aside). */
  readonly errors: Partial<Record<ErrorCategory, number>> = {}

  /** Failed its active health checks. */
  hcDown = false
  /** Active probes that failed since start. */
  hcFailures = 0
  hcSince = 0
  /** Why its active checks marked it down. */
  hcReason = ''
  /** Ejected as an outlier until then (ms); 0 when not. */
  ejectedUntil = 0
  ejectedSince = 0
  /** Why it was ejected. */
  ejectedReason = ''
  ejections = 0
  /** Back from an ejection: probation attempts still to end (one in flight at most); 0 when not on probation. */
  probation = 0
  #probationLatency = 0
  #probationFailures = 0
  /** Ramping its share up since then (ms); 0 when not. */
  rampFrom = 0
  /** Out of rotation on a peer replica's report until then (ms); 0 when not (see shared-state.ts). */
  peerUntil = 0
  peerSince = 0
  /** Whose report and why. */
  peerReason = ''

  readonly breaker: CircuitBreaker | null
  /** Its metrics, with label sets made once. */
  meter: TargetMeter | null = null
  /** Its latency estimate and failure penalty, for the peak-EWMA balancer (fed whatever the policy, for the stats). */
  readonly score = new PeakEwma()
  /** Recent latency (ms) and failure ratio, moving averages over about the last 20 attempts. */
  latency = 0
  failureRatio = 0
  readonly #owner: TargetOwner
  readonly #pool: TargetPool
  readonly #down: TargetDownState
  /** Its attempts over the last minute. */
  readonly #window: RollingWindow
  #draining = false
  /** Why it is leaving (removed, or its upstream is closing). */
  #drainReason = ''
  #onIdle: (() => void) | null = null
  /** When its breaker last counted a failure. */
  #lastFailure = -Infinity

  constructor (resolved: ResolvedTarget, settings: ConnectionSettings, limits: SharedLimits, factory: ConnectionFactory,
    owner: TargetOwner, onFree: () => void, breaker: ResolvedCircuitBreaker | null) {
    this.url = resolved.url
    this.origin = resolved.origin
    this.host = resolved.host
    this.named = resolved.host !== new URL(resolved.origin).host
    const hostname = new URL(resolved.origin).hostname
    this.servername = settings.tls.servername ?? resolved.servername ?? (isIP(hostname.replace(/^\[|\]$/g, '')) === 0 ? hostname : undefined)
    this.weight = resolved.weight
    this.#owner = owner
    this.addedAt = owner.now()
    const own = this.servername === settings.tls.servername ? settings : { ...settings, tls: { ...settings.tls, servername: this.servername } }
    this.#pool = new TargetPool(resolved.origin, own, limits, factory, owner.now, onFree)
    this.#tunnelDrain = settings.timeouts.tunnelDrain
    this.breaker = breaker === null ? null : new CircuitBreaker(breaker, owner.now)
    this.#window = new RollingWindow(owner.now)
    const halfOpen = breaker?.halfOpenRequests ?? 1
    this.#down = new TargetDownState({
      interval: owner.retryInterval,
      maxInterval: owner.maxRetryInterval,
      trials: (cause) => cause === 'breaker' ? halfOpen : 1,
      onChange: (event, cause, reason) => { this.#downChanged(event, cause, reason) }
    })
    if (owner.slowStart > 0) this.rampFrom = this.addedAt
  }

  /** Tells the pool whom to tell of each connection opened and closed, and of framing anomalies (set once by the upstream). */
  observe (observer: PoolObserver | null): void {
    this.#pool.observer = observer
  }

  /** Leaving rotation (`removeTarget`, `setTargets`, close): takes no new request. */
  get draining (): boolean {
    return this.#draining
  }

  /** The down state (up, skipped, trying), as it is now. */
  get downState (): TargetDownState['state'] {
    return this.#down.state
  }

  /** No cause flagged: counts as healthy for the panic threshold. Reads only. */
  healthy (now: number): boolean {
    return !this.#draining && this.#down.isUp && !this.hcDown && !(this.ejectedUntil > now) && !(this.peerUntil > now)
  }

  /**
   * In rotation: the balancer may pick it now, its connection caps aside (not
   * draining; not skipped, or its skip is over and a trial may run; and,
   * unless the upstream is in panic, not failing its active checks nor
   * ejected). Reads only: a metrics scrape or the status page never moves anything.
   */
  available (now: number): boolean {
    if (this.#draining || !this.#down.canBegin(now, false)) return false
    return this.#owner.panic || (!this.hcDown && !(this.ejectedUntil > now) && !(this.peerUntil > now))
  }

  /**
   * Whether a request may start on it now: in rotation and under its
   * connection caps, one attempt at a time on probation, and its share while
   * ramping up. The one predicate every balancing policy uses. An ejection
   * whose time ran out ends here, on the request path.
   */
  canTake (tunnel = false): boolean {
    if (this.#draining) return false
    const owner = this.#owner
    const panic = owner.panic
    const down = this.#down
    if (!down.isUp && !down.canBegin(owner.now(), owner.quickRecovery)) return false
    if (this.ejectedUntil !== 0 && owner.now() >= this.ejectedUntil) this.#endEjection()
    if (this.peerUntil !== 0 && owner.now() >= this.peerUntil) this.clearPeer('the peer\'s deadline passed')
    if (!panic && (this.hcDown || this.ejectedUntil !== 0 || this.peerUntil !== 0)) return false
    // A tunnel holds a connection of its own, outside the pool and its caps.
    if (!tunnel && !this.#pool.hasCapacity()) return false
    // On probation: one attempt at a time.
    if (this.probation !== 0 && (this.active !== 0 || this.leased !== 0 || this.tunnels !== 0)) return false
    // Slow start: a share that grows from 10% to all of its weight over `slowStart`.
    if (this.rampFrom !== 0) {
      const share = (owner.now() - this.rampFrom) / owner.slowStart
      if (share >= 1) this.rampFrom = 0
      else if (owner.random() > Math.max(0.1, share)) return false
    }
    return true
  }

  /** Requests outstanding on it now (connections in use) and its tunnels, for least request. */
  get outstanding (): number {
    return this.#pool.busy + this.tunnels
  }

  /** A tunnel on it (its upgrade under way, or open): until it closes, or until this target's drain time runs out. */
  tunnelOpened (tunnel: OpenTunnel): void {
    this.#open.add(tunnel)
  }

  /** A tunnel granted on it is over (its upgrade failed, or it closed). */
  tunnelReleased (tunnel: OpenTunnel | null): void {
    if (tunnel !== null) this.#open.delete(tunnel)
    this.tunnels--
    this.settle()
  }

  /** Closes every tunnel on it now (an upgrade under way is ended). */
  closeTunnels (why: string): void {
    for (const t of [...this.#open]) t.close(why)
  }

  /**
   * A request was given this target (the balancer picked it): its ticket,
   * which its attempt's result takes back. A target whose skip is over (or in
   * panic) gives a trial.
   */
  begin (): Ticket {
    const down = this.#down
    return down.isUp ? down.begin(0, false) : down.begin(this.#owner.now(), this.#owner.quickRecovery)
  }

  /** The most recently used idle connection, or a new one under the caps (`fresh`: a new one when it fits). */
  takeConnection (fresh = false): Connection | undefined {
    return this.#pool.take(fresh)
  }

  /** A connection back: idle again when it can serve, else closed. */
  putConnection (conn: Connection, reusable: boolean): void {
    this.#pool.put(conn, reusable)
  }

  /** A connection whose answer just ended back, reusable, a turn of the event loop later (see TargetPool#putAfterTurn). */
  putConnectionAfterTurn (conn: Connection): void {
    this.#pool.putAfterTurn(conn)
  }

  /** Closes its least recently used idle connection, to make room for another target's. */
  evictIdle (): boolean {
    return this.#pool.evictIdle()
  }

  /** When its least recently used idle connection went idle, or Infinity. */
  oldestIdle (): number {
    return this.#pool.oldestIdle()
  }

  /** Closes idle connections past their time; returns when the next is due, or Infinity. */
  sweep (now: number): number {
    return this.#pool.sweep(now)
  }

  /** When its next idle connection is due to be closed, or Infinity. */
  nextSweep (): number {
    return this.#pool.nextSweep()
  }

  /** An attempt starts on one of its connections. */
  attemptStarted (): void {
    this.active++
    this.requests++
  }

  /** An attempt ended (its result is put apart, with `putResult`). */
  attemptEnded (): void {
    this.active--
    this.settle()
  }

  /**
   * What an attempt with this ticket came to: one call per attempt. A client's
   * fault or the gateway's own refusal says nothing of the target (a trial it
   * cut short may run again). Its own failures and answers feed its counters,
   * moving averages, probation, metrics, breaker and down state.
   */
  putResult (ticket: Ticket, result: AttemptResult): void {
    const category = result.category
    // A stream it refused, or left out of its GOAWAY (it closes the connection, as NGINX every `keepalive_requests`): not a failure.
    if (category !== null && (faultOf(category) !== 'target' || category === 'refused')) {
      // (counted, as its connection errors are: refusals are seen, not held against it)
      if (category === 'refused') this.errors.refused = (this.errors.refused ?? 0) + 1
      this.#down.abandon(ticket)
      return
    }
    const failed = category !== null || result.status >= 500
    if (category !== null && category !== 'http_5xx') this.errors[category] = (this.errors[category] ?? 0) + 1
    const now = this.#owner.now()
    // Out of rotation, its score waits for its trial: an attempt that began before the outage
    // and ends after it must not undo the fresh start (see #downChanged).
    if (this.#down.isUp || isTrial(ticket)) {
      if (failed || result.status === 429) this.score.fail(result.headers ?? result.latency, now, result.retryAfter)
      else this.score.observe(result.headers ?? result.latency, now)
    }
    if (!failed && this.peerUntil !== 0) this.clearPeer('an attempt of this replica\'s own succeeded')
    this.#observe(failed, result.latency)
    this.#owner.observed(this, failed, result.latency)
    const outcome = statusClass(result)
    this.#window.record(outcome, result.retried === true, result.latency)
    this.meter?.attempt(outcome, result.latency / 1000)
    this.#judge(ticket, category, result.status, failed, now - result.latency)
  }

  /** An idle connection showed a framing anomaly (undici closed it): a protocol failure of the target's. */
  anomaly (): void {
    this.errors.protocol = (this.errors.protocol ?? 0) + 1
    this.#judge(this.#down.epoch * 2, 'protocol', 0, true, this.#owner.now())
  }

  /**
   * Moves its down state and breaker on a result of its own, of an attempt
   * that began at `began`. Failures that overlap one outage are one failure:
   * to the down state (see down-state.ts), and to the breaker's count in a
   * row (an attempt that began before the last failure was seen).
   */
  #judge (ticket: Ticket, category: ErrorCategory | null, status: number, failed: boolean, began: number): void {
    const down = this.#down
    const now = this.#owner.now()
    const connectFailed = category !== null && CONNECT_FAILURES.has(category)
    if (!down.isUp) {
      // Out of rotation: only its trials tell (an attempt that began before the outage says nothing).
      if (!isTrial(ticket)) return
      const cause = down.state.kind === 'up' ? 'connect' : down.state.cause
      if (connectFailed) down.fail(ticket, 'connect', category, now)
      // It connects again: a skip for failed connects is over, whatever it answered.
      else if (cause === 'connect' || !failed) down.succeed(ticket)
      else down.fail(ticket, 'breaker', `trial failed: ${category ?? `status ${status}`}`, now)
      return
    }
    if (!down.current(ticket)) return
    if (connectFailed) {
      down.fail(ticket, 'connect', category, now)
      return
    }
    const breaker = this.breaker
    if (breaker === null) return
    if (!failed) {
      breaker.success()
      return
    }
    // overlapping the last failure counted: begun before it was seen (a chain
    // of overlaps, as under steady load on a target that resets everything,
    // is not one failure: each counted one starts a new count)
    const overlaps = began < this.#lastFailure
    if (!overlaps) this.#lastFailure = now
    if (breaker.failure(overlaps)) down.fail(ticket, 'breaker', `failures: ${category ?? `status ${status}`}`, now)
  }

  /**
   * An attempt of this target's was let go unanswered after `elapsed` ms, for
   * another that answered first (a hedge's race): not a result, but its
   * latency is at least that (see PeakEwma#atLeast); nothing else moves.
   */
  unansweredFor (elapsed: number): void {
    if (this.#down.isUp) this.score.atLeast(elapsed, this.#owner.now())
  }

  /** A request given this target left before its attempt (the client went away): a trial it held may run again. */
  abandon (ticket: Ticket): void {
    this.#down.abandon(ticket)
  }

  #downChanged (event: DownEvent, cause: SkipCause, reason: string): void {
    // Out of rotation (or back), its score starts afresh: the failures that took
    // it out must not cost it its trial when the skip ends (peak EWMA would
    // otherwise never pick it again); its trial and answers score it anew.
    this.score.reset()
    if (event === 'up') {
      this.breaker?.reset()
      this.#startRamp()
    }
    this.#owner.healthChanged(this, DOWN_CAUSE[cause], event, reason)
  }

  /** Feeds the recent latency and failure ratio, and the probation after an ejection. */
  #observe (failed: boolean, latency: number): void {
    if (this.latency === 0) this.latency = latency
    else this.latency += (latency - this.latency) * 0.1
    this.failureRatio += ((failed ? 1 : 0) - this.failureRatio) * 0.1
    if (this.probation !== 0) {
      this.#probationLatency += latency
      if (failed) this.#probationFailures++
      if (--this.probation === 0) {
        this.#owner.probationOver(this, this.#probationLatency / PROBATION_ATTEMPTS, this.#probationFailures, PROBATION_ATTEMPTS)
        if (this.ejectedUntil === 0) this.#startRamp()
      }
    }
  }

  #startRamp (): void {
    if (this.#owner.slowStart > 0) this.rampFrom = this.#owner.now()
  }

  #endEjection (): void {
    this.ejectedUntil = 0
    this.probation = PROBATION_ATTEMPTS
    this.#probationLatency = 0
    this.#probationFailures = 0
    this.#owner.healthChanged(this, 'ejected', 'up', 'ejection time over, on probation')
  }

  /** The latency (ms) under which a fraction q of its attempts in the last minute ended; null with fewer than `min` (see RollingWindow#quantile). */
  latencyQuantile (q: number, min: number): number | null {
    return this.#window.quantile(q, min)
  }

  /** The epoch of its down state now, for an active probe about to start. */
  probeStarted (): number {
    return this.#down.epoch
  }

  /** An active probe that started in that epoch connected (`passed`: with an expected answer): see TargetDownState#probed. */
  probed (epoch: number, passed: boolean): void {
    this.#down.probed(epoch, passed, this.#owner.now())
  }

  /** Active health checks marked it down or up. */
  setActiveHealth (down: boolean, reason: string): void {
    if (this.hcDown === down) return
    this.hcDown = down
    this.hcSince = this.#owner.now()
    this.hcReason = reason
    this.#owner.healthChanged(this, 'active_health', down ? 'down' : 'up', reason)
    if (!down) {
      this.score.reset()
      this.#startRamp()
    }
  }

  /** A peer replica took it out of rotation until then (its deadline, on this replica's clock). */
  setPeer (until: number, reason: string): void {
    const now = this.#owner.now()
    const was = this.peerUntil > now
    this.peerUntil = until
    this.peerReason = reason
    if (was) return
    this.peerSince = now
    this.#owner.healthChanged(this, 'peer', 'down', reason)
  }

  /** Back from a peer's report: the peer says so, its deadline passed, or this replica's own attempt or probe succeeded. */
  clearPeer (reason: string): void {
    if (this.peerUntil === 0) return
    this.peerUntil = 0
    this.#owner.healthChanged(this, 'peer', 'up', reason)
  }

  /** Outlier detection ejects it until then. */
  eject (until: number, reason: string): void {
    this.probation = 0
    this.ejections++
    this.ejectedSince = this.#owner.now()
    this.ejectedUntil = until
    this.ejectedReason = reason
    this.#owner.healthChanged(this, 'ejected', 'down', reason)
  }

  /** Milliseconds until a trial may start on it, 0 when one may now. */
  retryIn (now: number): number {
    return this.#down.retryIn(now)
  }

  /** Whether a trial of it is under way: its result may bring it back. */
  get trialInFlight (): boolean {
    const s = this.#down.state
    return s.kind === 'trying' && s.inFlight > 0
  }

  /** Called whenever `active` or `leased` goes down. */
  settle (): void {
    if (this.#onIdle !== null && this.active === 0 && this.leased === 0 && this.tunnels === 0) {
      if (this.#tunnelTimer !== null) clearTimeout(this.#tunnelTimer)
      this.#tunnelTimer = null
      const fn = this.#onIdle
      this.#onIdle = null
      fn()
    }
  }

  /** Takes it out of rotation (`reason`: removed, or its upstream closing), waits for what is in flight on it, then closes its connections. */
  async drain (reason = 'removed'): Promise<void> {
    if (!this.#draining) {
      this.#draining = true
      this.#drainReason = reason
      this.#owner.healthChanged(this, 'draining', 'down', reason)
    }
    if (this.active > 0 || this.leased > 0 || this.tunnels > 0) {
      const idle = new Promise<void>((resolve) => { this.#onIdle = resolve })
      // Its tunnels may go on for `timeouts.tunnelDrain`, then are closed.
      if (this.tunnels > 0 && this.#tunnelTimer === null) {
        this.#tunnelTimer = setTimeout(() => {
          this.#tunnelTimer = null
          this.closeTunnels(`target ${reason}: its tunnels' drain time is over`)
        }, this.#tunnelDrain)
        this.#tunnelTimer.unref()
      }
      await idle
    }
    await this.#pool.close()
  }

  /** Every cause that keeps it out of rotation now, with since when and why. Reads only. */
  causes (now: number): TargetStats['health'] {
    const out: TargetStats['health'] = []
    if (this.#draining) out.push({ cause: 'draining', since: null, until: null, reason: this.#drainReason })
    const s = this.#down.state
    if (s.kind !== 'up') out.push({ cause: DOWN_CAUSE[s.cause], since: s.since, until: s.until, reason: s.reason })
    if (this.hcDown) out.push({ cause: 'active_health', since: this.hcSince, until: null, reason: this.hcReason })
    if (this.ejectedUntil > now) out.push({ cause: 'ejected', since: this.ejectedSince, until: this.ejectedUntil, reason: this.ejectedReason })
    if (this.peerUntil > now) out.push({ cause: 'peer', since: this.peerSince, until: this.peerUntil, reason: this.peerReason })
    return out
  }

  /** Plain JSON of its state. Reads only. */
  stats (now: number): TargetStats {
    const pool = this.#pool
    const counts = this.breaker?.counts()
    const s = this.#down.state
    let breaker: 'closed' | 'open' | 'half-open' = 'closed'
    if (s.kind !== 'up' && s.cause === 'breaker') breaker = s.kind === 'skipped' && now < s.until ? 'open' : 'half-open'
    return {
      url: this.url,
      origin: this.origin,
      host: this.host,
      weight: this.weight,
      state: this.#draining ? 'draining' : 'up',
      available: this.available(now),
      health: this.causes(now),
      down: s.kind === 'up'
        ? null
        : { since: s.since, until: s.until, failures: s.failedTrials + 1, trial: s.kind === 'trying' && s.inFlight > 0, nextTrial: this.#down.nextTrial(this.#owner.quickRecovery)! },
      breaker: this.breaker === null ? null : { state: breaker, ...counts! },
      ejections: this.ejections,
      slowStart: this.rampFrom !== 0,
      latency: Math.round(this.latency * 10) / 10,
      failureRatio: Math.round(this.failureRatio * 1000) / 1000,
      score: { estimate: Math.round(this.score.estimate(now) * 10) / 10, penalty: Math.round(this.score.penalty(now) * 10) / 10, heldUntil: this.score.heldUntil(now) || null },
      active: this.active,
      tunnels: this.tunnels,
      busy: pool.busyConnections(),
      idle: pool.idle.length,
      connections: pool.open,
      opened: pool.opened,
      closed: pool.closedCount,
      connectionAges: pool.ages(now),
      keepAlive: { ...pool.learnedIdle(), idleCloses: pool.keepAlive.closes, retired: pool.keepAlive.retired },
      requests: this.requests,
      errors: { ...this.errors },
      healthCheckFailures: this.hcFailures,
      age: now - this.addedAt,
      window: this.#window.snapshot()
    }
  }
}

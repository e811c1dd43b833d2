import type { ErrorCategory, TargetHealthCause, TargetStats } from '../types/index.js'
import type { ResolvedCircuitBreaker, ResolvedTarget } from './options/index.js'
import { TargetPool } from './connection-pool.js'
import type { ConnectionFactory, ConnectionSettings, SharedLimits } from './connection-pool.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { skipInterval } from './backoff.js'
import type { TargetMeter } from './metrics.js'

/** What a target needs from its upstream: the clock, chance, panic, and where to report a change of health. */
export interface TargetOwner {
  readonly name: string
  now: () => number
  random: () => number
  /** Fewer targets healthy than the panic threshold: the judgement flags (active health, breaker, ejection) are ignored. */
  readonly panic: boolean
  readonly retryInterval: number
  readonly maxRetryInterval: number
  /** Ramp-up after a return, in ms (0: none). */
  readonly slowStart: number
  healthChanged (target: Target, cause: TargetHealthCause, down: boolean, reason: string): void
  /** A target back from an ejection made its probation attempts: ejects it again, or lets it be. */
  probationOver (target: Target, latency: number, failures: number, attempts: number): void
}

/**
 * Attempts a target back from an ejection makes, one at a time, before it
 * takes its full share: then its mean latency and failures are judged against
 * its peers', and an outlier still is ejected again at once. A target still
 * slow costs this many slow requests per ejection, not an interval's share.
 */
export const PROBATION_ATTEMPTS = 3

/** Categories that count as failures for the breaker: the target broke or was too slow. A client hang-up never does. */
const BREAKER_FAILURES: ReadonlySet<ErrorCategory> = new Set<ErrorCategory>([
  'reset', 'headers_timeout', 'body_timeout', 'request_timeout', 'protocol', 'http_5xx', 'unknown'
])

/**
 * A target (Envoy's host): its origin and weight, its connection pool, the
 * counters the balancer and stats read, and its one health state, with each
 * cause flagged apart (Envoy's health flags): skipped after failed connects or
 * an open breaker (with trials after the skip), failed active checks, ejected as
 * an outlier, draining.
 */
export class Target {
  readonly url: string
  readonly origin: string
  /** `host[:port]`, as sent in the Host header. */
  readonly host: string
  weight: number
  readonly addedAt: number
  readonly pool: TargetPool
  state: 'up' | 'draining' = 'up'
  /** Attempts on this target now. */
  active = 0
  /** Requests admitted with this target and not yet released. */
  leased = 0
  /** Attempts sent since start. */
  requests = 0
  readonly errors: Partial<Record<ErrorCategory, number>> = {}
  /** Set for a moment while a retry looks for a target it has not tried. */
  excluded = false

  /**
   * Skipped until then (ms) after failed connects or an open breaker, then given
   * trials. 0 when not skipped. The one owner of "this target is down".
   */
  downUntil = 0
  downCause: 'connect' | 'breaker' | null = null
  downSince = 0
  /** Skips in a row: each doubles the interval. */
  skips = 0
  /** Trials that may still start after the skip, and good ones so far. */
  #trialsLeft = 0
  #trialsOk = 0
  #trialsNeeded = 0

  /** Failed its active health checks. */
  hcDown = false
  /** Active probes that failed since start. */
  hcFailures = 0
  hcSince = 0
  /** Ejected as an outlier until then (ms); 0 when not. */
  ejectedUntil = 0
  ejectedSince = 0
  ejections = 0
  /** Back from an ejection: probation attempts still to end (one in flight at most); 0 when not on probation. */
  probation = 0
  #probationLatency = 0
  #probationFailures = 0
  /** Ramping its share up since then (ms); 0 when not. */
  rampFrom = 0

  readonly breaker: CircuitBreaker | null
  /** Its metrics, with label sets made once. */
  meter: TargetMeter | null = null
  /** Recent latency (ms) and failure ratio, moving averages over about the last 20 attempts. */
  latency = 0
  failureRatio = 0
  readonly #owner: TargetOwner
  #onIdle: (() => void) | null = null

  constructor (resolved: ResolvedTarget, settings: ConnectionSettings, limits: SharedLimits, factory: ConnectionFactory,
    owner: TargetOwner, onFree: () => void, breaker: ResolvedCircuitBreaker | null) {
    this.url = resolved.url
    this.origin = resolved.origin
    this.host = new URL(resolved.origin).host
    this.weight = resolved.weight
    this.#owner = owner
    this.addedAt = owner.now()
    this.pool = new TargetPool(resolved.origin, settings, limits, factory, owner.now, onFree)
    this.breaker = breaker === null ? null : new CircuitBreaker(breaker, owner.now)
    if (owner.slowStart > 0) this.rampFrom = this.addedAt
  }

  /** No cause flagged: counts as healthy for the panic threshold. */
  get healthy (): boolean {
    return this.state === 'up' && this.downUntil === 0 && !this.hcDown && !this.#ejected()
  }

  #ejected (): boolean {
    if (this.ejectedUntil === 0) return false
    if (this.#owner.now() < this.ejectedUntil) return true
    this.ejectedUntil = 0
    this.probation = PROBATION_ATTEMPTS
    this.#probationLatency = 0
    this.#probationFailures = 0
    this.#owner.healthChanged(this, 'ejected', false, 'ejection time over, on probation')
    return false
  }

  /**
   * Whether it is in rotation: not draining, not skipped after failed connects
   * (its trial aside), and, unless the upstream is in panic, not skipped by its
   * breaker, failing its active checks, nor ejected.
   */
  get available (): boolean {
    if (this.state !== 'up') return false
    const panic = this.#owner.panic
    // A refused connect is a fact, an open breaker a judgement: panic sets aside only judgements.
    if (this.downUntil !== 0 && (this.downCause === 'connect' || !panic) && (this.#trialsLeft === 0 || this.#owner.now() < this.downUntil)) return false
    if (panic) return true
    return !this.hcDown && !this.#ejected()
  }

  /** In rotation and able to hand out a connection now: the one predicate every balancing policy uses. */
  canTake (): boolean {
    if (this.excluded || !this.available || !this.pool.hasCapacity()) return false
    // On probation: one attempt at a time.
    if (this.probation !== 0 && (this.active !== 0 || this.leased !== 0)) return false
    // Slow start: a share that grows from 10% to all of its weight over `slowStart`.
    if (this.rampFrom !== 0) {
      const share = (this.#owner.now() - this.rampFrom) / this.#owner.slowStart
      if (share >= 1) this.rampFrom = 0
      else if (this.#owner.random() > Math.max(0.1, share)) return false
    }
    return true
  }

  /** Requests outstanding on it now (connections in use), for least request. */
  get outstanding (): number {
    return this.pool.busy
  }

  /** An attempt ended: feeds the recent latency and failure ratio. */
  observe (failed: boolean, latency: number): void {
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

  countError (category: ErrorCategory): void {
    this.errors[category] = (this.errors[category] ?? 0) + 1
  }

  #startRamp (): void {
    if (this.#owner.slowStart > 0) this.rampFrom = this.#owner.now()
  }

  /** An attempt starts on it; true when that attempt is one of its trials after a skip. */
  attemptStarted (): boolean {
    if (this.downUntil === 0 || this.#trialsLeft === 0) return false
    this.#trialsLeft--
    return true
  }

  #skip (cause: 'connect' | 'breaker', trials: number, reason: string): void {
    const owner = this.#owner
    const now = owner.now()
    this.skips++
    const first = this.downUntil === 0
    if (first) this.downSince = now
    this.downUntil = now + skipInterval(this.skips, owner.retryInterval, owner.maxRetryInterval)
    this.downCause = cause
    this.#trialsLeft = trials
    this.#trialsNeeded = trials
    this.#trialsOk = 0
    if (first) owner.healthChanged(this, cause === 'connect' ? 'connect_failed' : 'circuit_open', true, reason)
  }

  #unskip (reason: string): void {
    const cause = this.downCause
    this.downUntil = 0
    this.downCause = null
    this.skips = 0
    this.#trialsLeft = 0
    this.breaker?.reset()
    this.#owner.healthChanged(this, cause === 'breaker' ? 'circuit_open' : 'connect_failed', false, reason)
    this.#startRamp()
  }

  /**
   * What an attempt on it came to. `category` is null for an answer (whose
   * `status` then tells); a client hang-up says nothing of the target.
   */
  outcome (category: ErrorCategory | null, status: number, trial: boolean): void {
    if (category === 'client_abort') {
      if (trial) this.#trialsLeft++ // that trial did not happen: another may
      return
    }
    if (category === 'connect_refused' || category === 'connect_timeout' || category === 'dns' || category === 'tls') {
      this.#skip('connect', 1, category)
      return
    }
    const failed = (category !== null && BREAKER_FAILURES.has(category)) || status >= 500
    if (this.downUntil !== 0) {
      if (this.downCause === 'connect') {
        // It connects again: the skip is over, whatever it answered.
        this.#unskip('connected')
      } else if (trial) {
        if (failed) this.#skip('breaker', this.breaker?.halfOpenRequests ?? 1, `trial failed: ${category ?? status}`)
        else if (++this.#trialsOk >= this.#trialsNeeded) this.#unskip('trials succeeded')
        return
      } else {
        // An attempt that started before it was skipped: says nothing of now.
        return
      }
    }
    const breaker = this.breaker
    if (breaker === null) return
    if (!failed) breaker.success()
    else if (breaker.failure()) this.#skip('breaker', breaker.halfOpenRequests, `failures: ${category ?? status}`)
  }

  /** An active probe connected: a skip for failed connects is over. */
  probeConnected (): void {
    if (this.downCause === 'connect') this.#unskip('an active check connected')
  }

  /** Active health checks marked it down or up. */
  setActiveHealth (down: boolean, reason: string): void {
    if (this.hcDown === down) return
    this.hcDown = down
    this.hcSince = this.#owner.now()
    this.#owner.healthChanged(this, 'active_health', down, reason)
    if (!down) this.#startRamp()
  }

  /** Outlier detection ejects it until then. */
  eject (until: number, reason: string): void {
    this.probation = 0
    this.ejections++
    this.ejectedSince = this.#owner.now()
    this.ejectedUntil = until
    this.#owner.healthChanged(this, 'ejected', true, reason)
  }

  /** Milliseconds until it may be tried again, 0 when it may now. */
  retryIn (): number {
    if (this.downUntil === 0) return 0
    return Math.max(0, this.downUntil - this.#owner.now())
  }

  /** Called whenever `active` or `leased` goes down. */
  settle (): void {
    if (this.#onIdle !== null && this.active === 0 && this.leased === 0) {
      const fn = this.#onIdle
      this.#onIdle = null
      fn()
    }
  }

  /** Takes it out of rotation, waits for what is in flight on it, then closes its connections. */
  async drain (): Promise<void> {
    if (this.state !== 'draining') {
      this.state = 'draining'
      this.#owner.healthChanged(this, 'draining', true, 'removed')
    }
    if (this.active > 0 || this.leased > 0) {
      await new Promise<void>((resolve) => { this.#onIdle = resolve })
    }
    await this.pool.close()
  }

  /** Every cause that keeps it out of rotation now, with since when. */
  causes (): TargetStats['health'] {
    const out: TargetStats['health'] = []
    if (this.state === 'draining') out.push({ cause: 'draining', since: null, until: null })
    if (this.downUntil !== 0) {
      out.push({ cause: this.downCause === 'breaker' ? 'circuit_open' : 'connect_failed', since: this.downSince, until: this.downUntil })
    }
    if (this.hcDown) out.push({ cause: 'active_health', since: this.hcSince, until: null })
    if (this.ejectedUntil !== 0 && this.#owner.now() < this.ejectedUntil) out.push({ cause: 'ejected', since: this.ejectedSince, until: this.ejectedUntil })
    return out
  }

  stats (now: number): TargetStats {
    const pool = this.pool
    const counts = this.breaker?.counts()
    return {
      url: this.url,
      origin: this.origin,
      weight: this.weight,
      state: this.state,
      available: this.available,
      health: this.causes(),
      down: this.downUntil === 0 ? null : { since: this.downSince, until: this.downUntil, failures: this.skips, trial: this.#trialsLeft < this.#trialsNeeded },
      breaker: this.breaker === null ? null : { state: this.downCause === 'breaker' ? (now >= this.downUntil ? 'half-open' : 'open') : 'closed', ...counts! },
      ejections: this.ejections,
      slowStart: this.rampFrom !== 0,
      latency: Math.round(this.latency * 10) / 10,
      failureRatio: Math.round(this.failureRatio * 1000) / 1000,
      active: this.active,
      idle: pool.idle.length,
      connections: pool.open,
      opened: pool.opened,
      closed: pool.closedCount,
      connectionAges: pool.ages(now),
      requests: this.requests,
      errors: { ...this.errors },
      age: now - this.addedAt
    }
  }
}

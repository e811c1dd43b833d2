import type { ErrorCategory, TargetStats } from '../types/index.js'
import type { ResolvedTarget } from './options.js'
import { TargetPool } from './connection-pool.js'
import type { ConnectionFactory, ConnectionSettings, SharedLimits } from './connection-pool.js'
import { skipInterval } from './backoff.js'

/**
 * A target (Envoy's host): its origin and weight, its state, its connection
 * pool, and the counters the balancer and stats read.
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
  /**
   * Down after a failed connect: skipped until then (ms), then given one trial.
   * 0 when up. The one owner of "this target is down".
   */
  downUntil = 0
  /** Connect failures in a row. */
  connectFailures = 0
  /** The one trial after a skip is in flight. */
  trial = false
  /** When it went down, for stats. */
  downSince = 0
  #onIdle: (() => void) | null = null
  readonly #now: () => number

  constructor (resolved: ResolvedTarget, settings: ConnectionSettings, limits: SharedLimits, factory: ConnectionFactory, now: () => number, onFree: () => void) {
    this.url = resolved.url
    this.origin = resolved.origin
    this.host = new URL(resolved.origin).host
    this.weight = resolved.weight
    this.#now = now
    this.addedAt = now()
    this.pool = new TargetPool(resolved.origin, settings, limits, factory, now, onFree)
  }

  /** Whether it is in rotation: not draining, not skipped after a failure (its one trial aside). */
  get available (): boolean {
    if (this.state !== 'up') return false
    if (this.downUntil === 0) return true
    return !this.trial && this.#now() >= this.downUntil
  }

  /** In rotation and able to hand out a connection now: the one predicate every balancing policy uses. */
  canTake (): boolean {
    return !this.excluded && this.available && this.pool.hasCapacity()
  }

  /** Set for a moment while a retry looks for a target it has not tried. */
  excluded = false

  /** An attempt starts on it: after a skip, that attempt is its one trial. */
  attemptStarted (): void {
    if (this.downUntil !== 0) this.trial = true
  }

  /** A connect failed (refused, timed out, did not resolve, TLS): skip it, for longer each time in a row. */
  connectFailed (interval: number, max: number): void {
    const now = this.#now()
    this.connectFailures++
    if (this.downUntil === 0) this.downSince = now
    this.downUntil = now + skipInterval(this.connectFailures, interval, max)
    this.trial = false
  }

  /** It connected (whatever it answered): back in rotation. */
  connected (): void {
    if (this.downUntil === 0 && this.connectFailures === 0) return
    this.downUntil = 0
    this.connectFailures = 0
    this.trial = false
  }

  /** Milliseconds until it may be tried again, 0 when it may now. */
  retryIn (): number {
    if (this.downUntil === 0) return 0
    return Math.max(0, this.downUntil - this.#now())
  }

  /** Requests outstanding on it now (connections in use), for least request. */
  get outstanding (): number {
    return this.pool.busy
  }

  countError (category: ErrorCategory): void {
    this.errors[category] = (this.errors[category] ?? 0) + 1
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
    this.state = 'draining'
    if (this.active > 0 || this.leased > 0) {
      await new Promise<void>((resolve) => { this.#onIdle = resolve })
    }
    await this.pool.close()
  }

  stats (now: number): TargetStats {
    const pool = this.pool
    return {
      url: this.url,
      origin: this.origin,
      weight: this.weight,
      state: this.state,
      down: this.downUntil === 0 ? null : { since: this.downSince, until: this.downUntil, failures: this.connectFailures, trial: this.trial },
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

import type { ErrorCategory, TargetStats } from '../types/index.js'
import type { ResolvedTarget } from './options.js'
import { TargetPool } from './connection-pool.js'
import type { ConnectionFactory, ConnectionSettings, SharedLimits } from './connection-pool.js'

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
  #onIdle: (() => void) | null = null

  constructor (resolved: ResolvedTarget, settings: ConnectionSettings, limits: SharedLimits, factory: ConnectionFactory, now: () => number, onFree: () => void) {
    this.url = resolved.url
    this.origin = resolved.origin
    this.host = new URL(resolved.origin).host
    this.weight = resolved.weight
    this.addedAt = now()
    this.pool = new TargetPool(resolved.origin, settings, limits, factory, now, onFree)
  }

  /** Whether it is in rotation: the one predicate every balancing policy uses. */
  get available (): boolean {
    return this.state === 'up'
  }

  /** In rotation and able to hand out a connection now. */
  canTake (): boolean {
    return this.state === 'up' && this.pool.hasCapacity()
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

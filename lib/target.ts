import { Pool } from 'undici'
import type { Dispatcher } from 'undici'
import type { ErrorCategory, TargetStats, TlsOptions } from '../types/index.js'
import type { ResolvedPool, ResolvedTarget, ResolvedTimeouts } from './options.js'

/** What a target needs from its upstream to open connections. */
export interface TargetSettings {
  pool: ResolvedPool
  timeouts: ResolvedTimeouts
  tls: TlsOptions
}

/** Makes the connection pool of one target: the seam tests and later pools use. */
export type PoolFactory = (origin: string, settings: TargetSettings) => Dispatcher & { stats?: Pool['stats'] }

export const defaultPoolFactory: PoolFactory = (origin, { pool, timeouts, tls }) => new Pool(origin, {
  connections: pool.maxActivePerTarget,
  pipelining: 1,
  // An idle socket is never kept past the idle timeout, nor past the upstream's
  // Keep-Alive hint minus undici's margin.
  keepAliveTimeout: Math.min(pool.idleTimeout, 4000),
  keepAliveMaxTimeout: Math.max(pool.idleTimeout, 1),
  headersTimeout: timeouts.headers,
  bodyTimeout: timeouts.body,
  connect: {
    timeout: timeouts.connect,
    // Verified by default: reply-from turns verification off, we do not.
    rejectUnauthorized: tls.rejectUnauthorized ?? true,
    ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
    ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
    ...(tls.key !== undefined ? { key: tls.key } : {}),
    ...(tls.servername !== undefined ? { servername: tls.servername } : {})
  }
})

/**
 * A target (Envoy's host): its origin and weight, its state, its connections,
 * and the counters the balancer and stats read.
 */
export class Target {
  readonly url: string
  readonly origin: string
  /** `host[:port]`, as sent in the Host header. */
  readonly host: string
  readonly weight: number
  readonly addedAt: number
  readonly pool: Dispatcher & { stats?: Pool['stats'] }
  state: 'up' | 'draining' = 'up'
  /** Attempts on this target now. */
  active = 0
  /** Requests admitted with this target and not yet released. */
  leased = 0
  /** Attempts sent since start. */
  requests = 0
  readonly errors: Partial<Record<ErrorCategory, number>> = {}
  #onIdle: (() => void) | null = null

  constructor (resolved: ResolvedTarget, settings: TargetSettings, factory: PoolFactory, now: number) {
    this.url = resolved.url
    this.origin = resolved.origin
    this.host = new URL(resolved.origin).host
    this.weight = resolved.weight
    this.addedAt = now
    this.pool = factory(resolved.origin, settings)
  }

  /** Whether the balancer may pick it. */
  get available (): boolean {
    return this.state === 'up'
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
    const s = this.pool.stats
    return {
      url: this.url,
      origin: this.origin,
      weight: this.weight,
      state: this.state,
      active: this.active,
      idle: s?.free ?? 0,
      connections: s?.connected ?? 0,
      pending: s?.pending ?? 0,
      requests: this.requests,
      errors: { ...this.errors },
      age: now - this.addedAt
    }
  }
}

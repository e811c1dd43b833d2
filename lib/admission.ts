import type { ErrorCategory } from '../types/index.js'
import type { Target } from './target.js'
import type { Connection } from './connection-pool.js'
import type { PickContext } from './balancer.js'
import { WaitQueue } from './queue.js'
import type { Waiter } from './queue.js'
import { Lease } from './lease.js'
import type { LeaseOwner } from './lease.js'
import { TunnelLease } from './tunnel-lease.js'
import type { TunnelOwner } from './tunnel-lease.js'
import { ClosedError, NoTargetError, PoolExhaustedError } from './errors.js'
import type { SssonectorError } from './errors.js'

/** An upper bound on the requests in flight that moves (the adaptive concurrency limit). */
export interface AdmissionLimit {
  readonly limit: number
}

/** A request waiting for a lease: granted one, now or from the queue, or failed with a 503. Its own balancer context. */
export interface LeaseWaiter extends Waiter<Lease>, PickContext<Target> {}

/** What admission needs from the targets' side (the upstream implements it). */
export interface AdmissionHost extends LeaseOwner, TunnelOwner {
  readonly closed: boolean
  /** A target for a new request: the balancer's pick with its context, or undefined. */
  pick: (context: PickContext<Target>) => Target | undefined
  /** A connection on this target, closing another target's idle one to make room at `maxActive`. */
  connect: (target: Target, fresh: boolean) => Connection | undefined
  /** Whether waiting can help: some target is in rotation (at its caps for now), or has a trial under way. */
  mayServe: () => boolean
  /** Seconds a client should wait before trying again, when no target can serve. */
  noTargetRetryAfter: () => number
  /** A request is refused with 503 `NO_TARGET` now (the host logs it, rate-limited). */
  refusedNoTarget: () => void
}

/**
 * Admission (Envoy's resource manager): the requests active, the bounded FIFO
 * queue of those waiting for a connection, its timeout, and the 503s. With
 * an adaptive limit, a request over it waits (or is refused) as one over the
 * connection caps. A request is granted a lease (a target and a connection on it) at once, or
 * waits, or gets 503 `NO_TARGET` when no target can serve, 503
 * `POOL_EXHAUSTED` when the queue is full or its wait runs out, 503 `CLOSED`
 * once the upstream closes.
 */
export class Admission {
  /** Requests admitted and not yet released. */
  active = 0
  admitted = 0
  /** Tunnels granted (upgrade under way, or open) and not yet released. */
  tunnels = 0
  readonly #maxTunnels: number
  readonly rejected: Partial<Record<ErrorCategory, number>> = {}
  /** Requests that found the adaptive limit reached (they queued, or got 503 `POOL_EXHAUSTED`). */
  limited = 0
  readonly #limit: AdmissionLimit | null
  readonly #host: AdmissionHost
  readonly #queue = new WaitQueue<Lease>()
  readonly #maxQueue: number
  readonly #queueTimeout: number
  readonly #retryAfter: number
  readonly #queueRetryAfter: number
  readonly #now: () => number
  #timer: NodeJS.Timeout | null = null
  #draining = false
  #drainAgain = false
  /**
   * Leases granted and not yet released, as an intrusive list (Lease#prev,
   * Lease#next): a Set of them, added to and deleted from on every request,
   * kept each request reachable from its old hash tables through young
   * collections, and V8 promoted every request to the old generation.
   */
  #live: Lease | null = null
  #onEmpty: Array<() => void> = []

  constructor (host: AdmissionHost, opts: { maxQueue: number, queueTimeout: number, retryInterval: number, now: () => number, maxTunnels?: number, limit?: AdmissionLimit | null }) {
    this.#host = host
    this.#limit = opts.limit ?? null
    this.#maxTunnels = opts.maxTunnels ?? Infinity
    this.#maxQueue = opts.maxQueue
    this.#queueTimeout = opts.queueTimeout
    this.#now = opts.now
    this.#retryAfter = Math.max(1, Math.ceil(opts.retryInterval / 1000))
    this.#queueRetryAfter = Math.max(1, Math.ceil(opts.queueTimeout / 1000))
  }

  /** Requests waiting in the queue. */
  get pending (): number {
    return this.#queue.size
  }

  /**
   * A lease for the waiter: granted at once, failed at once (503), or queued
   * (FIFO: while others wait, a newcomer waits behind them) until a
   * connection frees, a trial brings a target back, or its wait runs out.
   */
  acquire (w: LeaseWaiter): void {
    if (this.#host.closed) {
      w.fail(this.#reject(new ClosedError(this.#host.name) as SssonectorError, 'no_target', this.#retryAfter))
      return
    }
    const held = this.#limit !== null && this.active >= this.#limit.limit
    if (held) this.limited++
    if (this.#queue.size === 0 && !held) {
      let lease: Lease | null
      try {
        lease = this.#admit(w)
      } catch (err) {
        w.fail(err as Error)
        return
      }
      if (lease !== null) {
        w.grant(lease)
        return
      }
    } else if (!this.#host.mayServe()) {
      w.fail(this.#noTarget())
      return
    }
    if (this.#queue.size >= this.#maxQueue) {
      w.fail(this.#reject(new PoolExhaustedError(this.#host.name) as unknown as SssonectorError, 'pool_exhausted', this.#queueRetryAfter))
      return
    }
    w.deadline = this.#now() + this.#queueTimeout
    this.#queue.push(w)
    if (this.#timer === null) this.#arm(w.deadline)
  }

  /**
   * A tunnel slot and a target for an upgrade, at once: upgrades do not
   * queue. Throws 503 `CLOSED` once the upstream closes, 503 `POOL_EXHAUSTED`
   * at `pool.maxTunnels`, 503 `NO_TARGET` when no target is in rotation.
   */
  tunnel (key: string | undefined): TunnelLease {
    const host = this.#host
    if (host.closed) throw this.closedError()
    if (this.tunnels >= this.#maxTunnels) throw this.#reject(new PoolExhaustedError(host.name) as unknown as SssonectorError, 'pool_exhausted', this.#retryAfter)
    const context: PickContext<Target> = { key, tunnel: true, shouldSelectAnotherHost: () => false }
    const target = host.pick(context)
    if (target === undefined) throw this.#noTarget()
    this.tunnels++
    target.tunnels++
    return new TunnelLease(host, target, target.begin(), key)
  }

  /** A tunnel lease is over. */
  tunnelReleased (): void {
    this.tunnels--
  }

  /** A waiter whose client left: out of the queue at once. */
  cancel (w: LeaseWaiter): void {
    this.#queue.cancel(w)
    this.#checkEmpty()
  }

  /** A target and a connection now; null when it must wait; throws 503 `NO_TARGET` when no target can serve. */
  #admit (context: PickContext<Target>): Lease | null {
    if (this.#limit !== null && this.active >= this.#limit.limit) return null
    const host = this.#host
    const target = host.pick(context)
    if (target === undefined) {
      if (host.mayServe()) return null
      throw this.#noTarget()
    }
    const conn = host.connect(target, false)
    if (conn === undefined) return null
    this.active++
    this.admitted++
    target.leased++
    const lease = new Lease(host, target, conn, target.begin(), context.key)
    lease.next = this.#live
    if (this.#live !== null) this.#live.prev = lease
    this.#live = lease
    return lease
  }

  #noTarget (): SssonectorError {
    this.#host.refusedNoTarget()
    return this.#reject(new NoTargetError(this.#host.name) as unknown as SssonectorError, 'no_target', this.#host.noTargetRetryAfter())
  }

  /** A lease is over. */
  released (lease: Lease): void {
    if (lease.prev === null && this.#live !== lease) return
    if (lease.prev !== null) lease.prev.next = lease.next
    else this.#live = lease.next
    if (lease.next !== null) lease.next.prev = lease.prev
    lease.prev = null
    lease.next = null
    this.active--
  }

  /** The leases granted and not yet released. */
  get live (): Lease[] {
    const out: Lease[] = []
    for (let l = this.#live; l !== null; l = l.next) out.push(l)
    return out
  }

  /** Resolves once nobody waits in the queue. */
  async whenEmpty (): Promise<void> {
    if (this.#queue.size === 0) return
    await new Promise<void>((resolve) => { this.#onEmpty.push(resolve) })
  }

  #checkEmpty (): void {
    if (this.#queue.size !== 0 || this.#onEmpty.length === 0) return
    const waiting = this.#onEmpty
    this.#onEmpty = []
    for (const fn of waiting) fn()
  }

  /** Capacity came free, or a target's state moved: serves the queue (and fails it when no target can serve any more). */
  drain (): void {
    if (this.#queue.size === 0) return
    if (this.#draining) {
      this.#drainAgain = true
      return
    }
    this.#draining = true
    try {
      do {
        this.#drainAgain = false
        for (let w = this.#queue.peek(); w !== undefined; w = this.#queue.peek()) {
          let lease: Lease | null
          try {
            lease = this.#admit(w as LeaseWaiter)
          } catch (err) {
            for (let x = this.#queue.shift(); x !== undefined; x = this.#queue.shift()) x.fail(err as Error)
            break
          }
          if (lease === null) break
          this.#queue.shift()
          w.grant(lease)
        }
      } while (this.#drainAgain)
    } finally {
      this.#draining = false
    }
    this.#checkEmpty()
  }

  #arm (deadline: number): void {
    this.#timer = setTimeout(() => { this.#expire() }, Math.max(0, deadline - this.#now()))
    this.#timer.unref()
  }

  #expire (): void {
    this.#timer = null
    const now = this.#now()
    let w = this.#queue.peek()
    while (w !== undefined && w.deadline <= now) {
      this.#queue.shift()
      w.fail(this.#reject(new PoolExhaustedError(this.#host.name) as unknown as SssonectorError, 'pool_exhausted', this.#queueRetryAfter))
      w = this.#queue.peek()
    }
    if (w !== undefined) this.#arm(w.deadline)
    this.#checkEmpty()
  }

  /** Fails every waiter (closing: `destroy()`, or a close whose queue cannot drain). */
  failAll (err: () => Error): void {
    for (let w = this.#queue.shift(); w !== undefined; w = this.#queue.shift()) w.fail(err())
    this.stop()
    this.#checkEmpty()
  }

  /** Whether nothing waits. */
  get idle (): boolean {
    return this.#queue.size === 0
  }

  /** Stops the queue's timer. */
  stop (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }

  /** A refusal, counted by category, with when to try again. */
  #reject (err: SssonectorError, category: ErrorCategory, retryAfter: number): SssonectorError {
    err.retryAfter = retryAfter
    this.rejected[category] = (this.rejected[category] ?? 0) + 1
    return err
  }

  /** The 503 of a closed upstream, counted. */
  closedError (): SssonectorError {
    return this.#reject(new ClosedError(this.#host.name) as SssonectorError, 'no_target', this.#retryAfter)
  }
}

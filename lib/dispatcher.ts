import { Dispatcher } from 'undici'
import type { Target } from './target.js'
import type { Lease } from './lease.js'
import type { LeaseWaiter } from './admission.js'

type Callback = (err: Error | null, data: null) => void

/** What the dispatcher needs of its upstream: leases, and its lifecycle. */
export interface LeaseSource {
  acquire: (waiter: LeaseWaiter) => void
  cancel: (waiter: LeaseWaiter) => void
  close: ((callback: Callback) => void) & (() => Promise<void>)
  destroy: ((err: Error | null, callback: Callback) => void) & ((err?: Error | null) => Promise<void>)
}

/** A request of plain undici use waiting for a lease of its own. */
class DispatchWaiter implements LeaseWaiter {
  deadline = 0
  cancelled = false
  readonly key: string | undefined
  readonly #opts: Dispatcher.DispatchOptions
  readonly #handler: Dispatcher.DispatchHandler

  constructor (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) {
    this.#opts = opts
    this.#handler = handler
    const key = (opts as { hashKey?: unknown }).hashKey
    this.key = typeof key === 'string' ? key : undefined
  }

  shouldSelectAnotherHost (_target: Target): boolean {
    return false
  }

  grant (lease: Lease): void {
    lease.own = true
    lease.dispatch(this.#opts, this.#handler)
  }

  fail (err: Error): void {
    if (typeof this.#handler.onResponseError === 'function') this.#handler.onResponseError(undefined as never, err)
    else this.#handler.onError?.(err)
  }
}

/**
 * The upstream as an undici Dispatcher, for plain undici use
 * (`undici.request(url, { dispatcher })`): each dispatch takes a lease of its
 * own (waiting in the queue if it must), runs its attempts through it, and
 * releases it when the exchange ends. The target decides the origin and the
 * Host, whatever the URL said. `close()` and `destroy()` are the upstream's.
 */
export class UpstreamDispatcher extends Dispatcher {
  readonly #source: LeaseSource

  constructor (source: LeaseSource) {
    super()
    this.#source = source
  }

  override dispatch (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    this.#source.acquire(new DispatchWaiter(opts, handler))
    return true
  }

  override close (): Promise<void>
  override close (callback: Callback): void
  override close (callback?: Callback): Promise<void> | undefined {
    if (callback === undefined) return this.#source.close()
    this.#source.close(callback)
    return undefined
  }

  override destroy (err?: Error | null): Promise<void>
  override destroy (callback: Callback): void
  override destroy (err: Error | null, callback: Callback): void
  override destroy (errOrCallback?: Error | null | Callback, callback?: Callback): Promise<void> | undefined {
    if (typeof errOrCallback === 'function') {
      this.#source.destroy(null, errOrCallback)
      return undefined
    }
    if (callback !== undefined) {
      this.#source.destroy(errOrCallback ?? null, callback)
      return undefined
    }
    return this.#source.destroy(errOrCallback ?? null)
  }
}

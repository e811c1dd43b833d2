import type { Dispatcher } from 'undici'
import type { ErrorCategory } from '../types/index.js'
import type { Target } from './target.js'
import type { Connection } from './connection-pool.js'
import type { Ticket } from './down-state.js'
import { Exchange } from './exchange.js'
import type { AttemptOutcome, ExchangeHost, ExchangeRecord } from './exchange.js'
import { ClientAbortError, PoolExhaustedError } from './errors.js'
import { keyedRequest } from './retry-policy.js'

/** Where a lease gives its slot back, and what its exchange needs (the upstream implements both). */
export interface LeaseOwner extends ExchangeHost {
  /** The lease is over: its admission slot is free. */
  released: (lease: Lease) => void
}

type Headers = Record<string, unknown> | unknown[] | null | undefined

/** A request's Content-Length, from its headers as an object or a flat list; -1 when it has none. */
function requestLength (headers: Headers): number {
  if (headers == null) return -1
  if (!Array.isArray(headers)) return Number(headers['content-length'] ?? -1)
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i] === 'content-length') return Number(headers[i + 1])
  }
  return -1
}

/** Reads a request body of known length in full, for replay. */
async function readAll (body: AsyncIterable<Buffer>, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length)
  let at = 0
  for await (const chunk of body) {
    if (at + chunk.length > length) throw Object.assign(new Error('request body longer than its Content-Length'), { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' })
    chunk.copy(out, at)
    at += chunk.length
  }
  if (at !== length) throw Object.assign(new Error('request body shorter than its Content-Length'), { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' })
  return out
}

/**
 * A request's hold on its upstream: the admission slot, the target the
 * balancer chose and the connection taken on it. The one seam every caller
 * uses (the proxy route, `upstream.request()`, `upstream.dispatcher`):
 * acquire it (admission, queue, pick), `dispatch(opts, handler)` once (the
 * attempts, with failover, run inside), `release()` once the response is
 * over. Releasing it under an exchange still running ends that exchange.
 */
export class Lease implements ExchangeRecord {
  readonly #owner: LeaseOwner
  /** The target of the request's first attempt. */
  readonly target: Target
  #conn: Connection | null
  readonly #ticket: Ticket
  #exchange: Exchange | null = null
  /** The consistent-hash key it was admitted with. */
  readonly key: string | undefined
  released = false
  /** Released by its exchange's end (plain undici use), not by the caller. */
  own = false
  status = 0
  category: ErrorCategory | null = null
  latency = 0
  attempts = 0
  history: AttemptOutcome[] | null = null
  /** Admission's list of the leases granted and not yet released. */
  prev: Lease | null = null
  next: Lease | null = null

  constructor (owner: LeaseOwner, target: Target, conn: Connection, ticket: Ticket, key: string | undefined) {
    this.#owner = owner
    this.target = target
    this.#conn = conn
    this.#ticket = ticket
    this.key = key
  }

  /**
   * Sends the request: attempts on the leased target first, then, within the
   * retry policy, on others. Once per lease. A small idempotent (or keyed,
   * see `keyedRequest`) body given as a stream is read in full first (within
   * `retry.bufferBody`), so a retry can send it again.
   */
  dispatch (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const conn = this.#conn
    if (conn === null || this.released) {
      // One dispatch per lease: a second one (a caller's own retry) gets a lease of its own.
      const err = new PoolExhaustedError(this.#owner.name)
      if (typeof handler.onResponseError === 'function') handler.onResponseError(undefined as unknown as Dispatcher.DispatchController, err)
      else handler.onError?.(err)
      return false
    }
    this.#conn = null
    const owner = this.#owner
    const exchange = this.#exchange = new Exchange(owner, this, opts, handler, this.key)
    const slot = { target: this.target, conn, ticket: this.#ticket }
    const body = opts.body as { pipe?: unknown } | null | undefined
    const policy = owner.config.retry
    if (policy !== null && body != null && typeof body.pipe === 'function' && (policy.methods.has(opts.method) || keyedRequest(policy, opts.method, opts.headers))) {
      const length = requestLength(opts.headers as Headers)
      if (length > 0 && length <= policy.bufferBody) {
        readAll(body as unknown as AsyncIterable<Buffer>, length).then((buf) => {
          opts.body = buf
          exchange.start(slot)
        }, (err: Error) => { exchange.failBefore(slot, err) })
        return true
      }
    }
    exchange.start(slot)
    return true
  }

  /** Ends the exchange in flight, if any (a request timeout of the caller's, say). */
  abort (reason: Error): void {
    this.#exchange?.abort(reason)
  }

  /** The exchange ended (ExchangeRecord): a lease of plain undici use is over with it. */
  ended (): void {
    if (this.own) this.release()
  }

  /** Gives the slot back, once. A connection never used goes back idle; an exchange still running is ended (nobody reads its answer). */
  release (): void {
    if (this.released) return
    this.released = true
    const exchange = this.#exchange
    if (exchange !== null && !exchange.done) exchange.abort(new ClientAbortError('the response closed before the upstream\'s answer ended'))
    const conn = this.#conn
    if (conn !== null) {
      this.#conn = null
      this.target.putConnection(conn, true)
      this.target.abandon(this.#ticket)
    }
    this.#owner.released(this)
  }
}

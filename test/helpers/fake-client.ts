import { EventEmitter, once } from 'node:events'
import type { Dispatcher } from 'undici'
import type { ConnectionClient, ConnectionFactory } from '../../lib/connection-pool.js'

type Handler = Dispatcher.DispatchHandler

/** A controller as undici hands one to a handler of its current API. */
class FakeController implements Dispatcher.DispatchController {
  aborted = false
  paused = false
  reason: Error | null = null
  rawHeaders: Buffer[] = []
  rawTrailers: Buffer[] = []
  readonly #onAbort: (err: Error) => void
  constructor (onAbort: (err: Error) => void) { this.#onAbort = onAbort }
  abort (reason: Error): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    this.#onAbort(reason)
  }

  pause (): void { this.paused = true }
  resume (): void { this.paused = false }
}

/**
 * A stand-in for one connection's client, made through the pool's factory seam:
 * it records what is dispatched on it and lets a test end attempts and close
 * its "socket" by hand, speaking undici's current handler API as undici does
 * (a destroyed client fails the handler). For unit and property tests of the
 * pool's bookkeeping; everything that touches sockets is tested against real servers.
 */
export class FakeClient extends EventEmitter implements ConnectionClient {
  readonly origin: string
  destroyed = false
  /** Handlers of attempts in flight, with their controllers. */
  readonly inflight: Array<{ handler: Handler, controller: FakeController }> = []
  /** What each attempt asked for. */
  readonly requests: Dispatcher.DispatchOptions[] = []
  dispatched = 0

  constructor (origin: string) {
    super()
    this.origin = origin
  }

  dispatch (opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    if (this.inflight.length > 0) throw new Error('two attempts at once on one connection')
    dispatchLog.push(this)
    queueMicrotask(() => { dispatches.emit('dispatch', this) })
    if (this.destroyed) {
      fail(handler, null, Object.assign(new Error('The client is destroyed'), { code: 'UND_ERR_DESTROYED' }))
      return false
    }
    this.dispatched++
    this.requests.push({ ...opts })
    const entry = { handler, controller: new FakeController((err) => { this.#end(entry, err) }) }
    this.inflight.push(entry)
    if (this.dispatched === 1) this.emit('connect')
    handler.onRequestStart?.(entry.controller, undefined)
    return true
  }

  #end (entry: { handler: Handler, controller: FakeController }, err: Error): void {
    const i = this.inflight.indexOf(entry)
    if (i === -1) return
    this.inflight.splice(i, 1)
    fail(entry.handler, entry.controller, err)
  }

  async destroy (): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    const err = Object.assign(new Error('destroyed'), { code: 'UND_ERR_DESTROYED' })
    for (const { handler, controller } of this.inflight.splice(0)) fail(handler, controller, err)
  }

  /** The attempt on it answers `status` with `body` and ends. */
  complete (status = 200, body?: Buffer, headers: Record<string, string> = {}): void {
    const entry = this.inflight.shift()
    if (entry === undefined) return
    const { handler, controller } = entry
    const all = body === undefined ? headers : { ...headers, 'content-length': String(body.length) }
    controller.rawHeaders = Object.entries(all).flatMap(([k, v]) => [Buffer.from(k), Buffer.from(v)])
    handler.onResponseStart?.(controller, status, all, 'OK')
    if (body !== undefined) handler.onResponseData?.(controller, body)
    handler.onResponseEnd?.(controller, {})
  }

  /** The attempt on it fails (a reset, unless another error is given). */
  fail (err: Error = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' })): void {
    const entry = this.inflight.shift()
    if (entry !== undefined) fail(entry.handler, entry.controller, err)
  }

  /** Its socket closes (peer, timeout), with this error given to the 'disconnect' event. */
  closeSocket (err: Error = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' })): void {
    for (const { handler, controller } of this.inflight.splice(0)) fail(handler, controller, err)
    this.emit('disconnect', this.origin, [this], err)
  }
}

function fail (handler: Handler, controller: FakeController | null, err: Error): void {
  if (typeof handler.onResponseError === 'function') handler.onResponseError(controller as never, err)
  else handler.onError?.(err)
}

export function fakeFactory (made: FakeClient[]): ConnectionFactory {
  return (origin) => {
    const c = new FakeClient(origin)
    made.push(c)
    return c
  }
}

/** Tells of every attempt dispatched on a stand-in client. */
const dispatches = new EventEmitter()
/** Every stand-in client an attempt was dispatched on, in order (a dispatch is logged as it happens). */
const dispatchLog: FakeClient[] = []

/** How many attempts were dispatched so far: the index the next one will have. */
export function dispatchCount (): number {
  return dispatchLog.length
}

/**
 * Resolves with the client of the n-th dispatch (0-based, see dispatchCount),
 * at once when it already happened: a retry whose backoff fired while the
 * test awaited something else is not missed.
 */
export async function dispatchAt (n: number): Promise<FakeClient> {
  while (dispatchLog.length <= n) await once(dispatches, 'dispatch')
  return dispatchLog[n]
}

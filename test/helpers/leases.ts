import type { Dispatcher } from 'undici'
import type { Upstream } from '../../lib/upstream.js'
import type { Lease } from '../../lib/lease.js'
import type { LeaseWaiter } from '../../lib/admission.js'

/** A handler that ignores what it is told. */
export const noop: Dispatcher.DispatchHandler = { onError () {}, onComplete () {}, onHeaders () { return true }, onData () { return true }, onConnect () {} }

/**
 * A lease now, or null when the request would have to wait (it does not stay
 * queued); throws the 503 error when admission refuses it.
 */
export function admit (up: Upstream, key?: string): Lease | null {
  let lease: Lease | null = null
  let refused: Error | null = null
  const w: LeaseWaiter = {
    deadline: 0,
    cancelled: false,
    key,
    shouldSelectAnotherHost: () => false,
    grant (l) { lease = l },
    fail (err) { refused = err }
  }
  up.acquire(w)
  if (refused !== null) throw refused
  if (lease === null) up.cancel(w)
  return lease
}

/** Sends a lease's request (GET /), with a handler that ignores the answer unless one is given. */
export function send (lease: Lease, handler: Dispatcher.DispatchHandler = noop, opts: Partial<Dispatcher.DispatchOptions> = {}): void {
  lease.dispatch({ path: '/', method: 'GET', headers: {}, ...opts } as Dispatcher.DispatchOptions, handler)
}

/** Lets what the pool does after an attempt's end (a turn of the event loop later: its connection back) happen. */
export async function settled (): Promise<void> {
  await new Promise<void>((resolve) => { setImmediate(resolve) })
}

import { EventEmitter } from 'node:events'
import type { Dispatcher } from 'undici'
import type { ConnectionClient, ConnectionFactory } from '../../lib/connection-pool.js'

/**
 * A stand-in for one connection's client, made through the pool's factory seam:
 * it records what is dispatched on it and lets a test end attempts and close
 * its "socket" by hand. For unit and property tests of the pool's bookkeeping;
 * everything that touches sockets is tested against real servers.
 */
export class FakeClient extends EventEmitter implements ConnectionClient {
  readonly origin: string
  destroyed = false
  /** Handlers of attempts in flight. */
  readonly inflight: Dispatcher.DispatchHandler[] = []
  dispatched = 0

  constructor (origin: string) {
    super()
    this.origin = origin
  }

  dispatch (_opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    if (this.destroyed) throw new Error('dispatch on a destroyed client')
    if (this.inflight.length > 0) throw new Error('two attempts at once on one connection')
    this.dispatched++
    this.inflight.push(handler)
    if (this.dispatched === 1) this.emit('connect')
    return true
  }

  async destroy (): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    const err = Object.assign(new Error('destroyed'), { code: 'UND_ERR_DESTROYED' })
    for (const h of this.inflight.splice(0)) h.onError?.(err)
  }

  /** The attempt on it ends well. */
  complete (): void {
    const h = this.inflight.shift()
    h?.onHeaders?.(200, [], () => {}, 'OK')
    h?.onComplete?.(null)
  }

  /** The attempt on it fails (a reset). */
  fail (): void {
    const h = this.inflight.shift()
    h?.onError?.(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }))
  }

  /** Its socket closes (peer, timeout). */
  closeSocket (): void {
    const err = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' })
    for (const h of this.inflight.splice(0)) h.onError?.(err)
    this.emit('disconnect')
  }
}

export function fakeFactory (made: FakeClient[]): ConnectionFactory {
  return (origin) => {
    const c = new FakeClient(origin)
    made.push(c)
    return c
  }
}

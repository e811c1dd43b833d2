import cluster from 'node:cluster'
import { randomBytes } from 'node:crypto'
import { hostname } from 'node:os'
import type { SharedStats, TargetHealthCause } from '../types/index.js'
import { OptionsError } from './errors.js'

/** Version of the messages: a replica ignores any other. */
export const VERSION = 1
/** Clocks are trusted to this far apart (ms): a message stamped further from the receiver's clock is ignored. */
export const MAX_SKEW = 5000
/** Publishes in flight at most; past it, reports are dropped (a slow Redis never piles them up). */
export const MAX_IN_FLIGHT = 1000
/** A receiver holds a peer's report this much past the peer's deadline, so the replica that saw the failure makes the trial (ms). */
export const PEER_GRACE = 250
/** The longest a peer's report holds a target out (ms): past it, this replica tries for itself. */
export const MAX_PEER_TTL = 5 * 60 * 1000

/** One report: a target of an upstream left rotation (until `ttl` ms from its sending) or came back. */
export interface Report {
  v: number
  /** The sender's replica id. */
  from: string
  /** The sender's clock when sent (ms since the epoch). */
  at: number
  /** Upstream name and the target's origin (its address). */
  u: string
  t: string
  e: 'down' | 'up'
  /** The sender's cause and reason (down), or what cleared it (up). */
  c: TargetHealthCause | null
  r: string
  /** How long it holds from `at` (ms), for `down`. */
  ttl: number
}

/** What carries the reports: Redis pub/sub, or the cluster primary over IPC. */
export interface Transport {
  readonly mode: 'redis' | 'cluster'
  readonly connected: boolean
  /** Sends a report; false when it could not go (disconnected, too many in flight). */
  publish (message: string): boolean
  /** Reports from every replica (own echoes included); called once. */
  subscribe (onMessage: (message: string) => void, onState: (connected: boolean, err: string | null) => void): void
  close (): Promise<void>
}

/** Where reports land: the upstreams. */
export interface ReportSink {
  /** Applies a peer's report to the target; false when no such upstream or target is here. */
  peerReport (upstream: string, origin: string, event: 'down' | 'up', until: number, reason: string): boolean
}

export interface SharedLogger {
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  debug (obj: object, msg: string): void
}

/**
 * Shared target state between replicas (HAProxy's peers, NGINX Plus's zone
 * sync): each change of a target's rotation that this replica saw for itself
 * goes out as a small versioned report; the peers' reports come in and take
 * a target out (cause `peer`) until the peer's deadline plus a grace, or
 * bring it back. Never on the request path: a send is fire-and-forget, a
 * report is applied when it arrives, and with the transport down every
 * replica runs on its own state.
 */
export class SharedState {
  readonly replica: string
  readonly #transport: Transport
  readonly #sink: ReportSink
  readonly #log: SharedLogger
  readonly #now: () => number
  #connected = false
  #since: number
  readonly counts = { sent: 0, received: 0, applied: 0, ignored: 0, dropped: 0 }

  constructor (transport: Transport, sink: ReportSink, log: SharedLogger, now: () => number = Date.now) {
    this.replica = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`
    this.#transport = transport
    this.#sink = sink
    this.#log = log
    this.#now = now
    this.#since = now()
  }

  /** Starts listening; returns at once (connecting goes on in the background). */
  start (): void {
    this.#transport.subscribe((m) => { this.#receive(m) }, (connected, err) => { this.#state(connected, err) })
  }

  async close (): Promise<void> {
    await this.#transport.close()
  }

  /** A target's rotation changed here, for a cause of this replica's own: tell the peers. */
  report (upstream: string, origin: string, event: 'down' | 'up', cause: TargetHealthCause | null, reason: string, ttl: number): void {
    const report: Report = { v: VERSION, from: this.replica, at: this.#now(), u: upstream, t: origin, e: event, c: cause, r: reason.slice(0, 200), ttl: Math.max(0, Math.round(ttl)) }
    if (this.#transport.publish(JSON.stringify(report))) this.counts.sent++
    else this.counts.dropped++
  }

  stats (): SharedStats {
    return { mode: this.#transport.mode, replica: this.replica, connected: this.#connected, since: this.#since, ...this.counts }
  }

  #state (connected: boolean, err: string | null): void {
    if (connected === this.#connected) return
    this.#connected = connected
    this.#since = this.#now()
    const fields = { shared: this.#transport.mode, replica: this.replica }
    if (connected) this.#log.info(fields, 'shared state connected')
    else this.#log.warn({ ...fields, err }, 'shared state disconnected: running on this replica\'s own state, reconnecting with backoff')
  }

  #receive (message: string): void {
    let r: Report
    try {
      r = JSON.parse(message) as Report
    } catch {
      this.counts.ignored++
      return
    }
    if (r === null || typeof r !== 'object' || r.from === this.replica) return
    this.counts.received++
    const now = this.#now()
    if (r.v !== VERSION || typeof r.u !== 'string' || typeof r.t !== 'string' || (r.e !== 'down' && r.e !== 'up') ||
      typeof r.at !== 'number' || typeof r.ttl !== 'number' || Math.abs(now - r.at) > MAX_SKEW) {
      this.counts.ignored++
      return
    }
    // The deadline is the peer's, on this clock: its remaining time from now, never past MAX_PEER_TTL, plus the grace.
    const until = now + Math.min(MAX_PEER_TTL, Math.max(0, r.ttl - Math.max(0, now - r.at))) + PEER_GRACE
    const reason = r.e === 'down' ? `${r.from}: ${r.c ?? 'down'}: ${String(r.r)}` : `${r.from}: back in rotation`
    if (this.#sink.peerReport(r.u, r.t, r.e, until, reason)) this.counts.applied++
    else this.counts.ignored++
  }
}

/** Reports through Redis pub/sub (ioredis): one connection publishes, one subscribes; both reconnect with backoff. */
export async function redisTransport (url: string, key: string): Promise<Transport> {
  let Redis: typeof import('ioredis').Redis
  try {
    Redis = (await import('ioredis')).Redis
  } catch {
    throw new OptionsError('shared.redis: the ioredis package is not installed (npm install ioredis)')
  }
  const channel = `${key}:targets`
  // Nothing waits for Redis: a command while disconnected fails at once
  // (no offline queue, no retry per request), a slow one after a second.
  const options = {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: 1000,
    commandTimeout: 1000,
    // Reconnects from 50 ms, doubling to 2 s, jittered.
    retryStrategy: (n: number) => Math.round(Math.min(2000, 50 * 2 ** Math.min(n, 6)) * (0.5 + Math.random() / 2))
  }
  const pub = new Redis(url, options)
  const sub = new Redis(url, options)
  let inFlight = 0
  let subscribed = false
  let closed = false
  return {
    mode: 'redis',
    get connected () { return pub.status === 'ready' && subscribed },
    publish (message) {
      if (pub.status !== 'ready' || inFlight >= MAX_IN_FLIGHT) return false
      inFlight++
      pub.publish(channel, message).catch(() => {}).finally(() => { inFlight-- })
      return true
    },
    subscribe (onMessage, onState) {
      let lastError: string | null = null
      const state = (): void => { onState(pub.status === 'ready' && subscribed, lastError) }
      for (const c of [pub, sub]) {
        c.on('error', (err: Error) => { lastError = err.message })
        c.on('close', () => {
          if (c === sub) subscribed = false
          state()
        })
        c.on('ready', () => {
          if (c === pub) {
            state()
            return
          }
          sub.subscribe(channel).then(() => {
            subscribed = true
            state()
          }, (err: Error) => {
            lastError = err.message
            sub.disconnect(true)
          })
        })
        c.connect().catch(() => {})
      }
      sub.on('message', (ch: string, message: string) => { if (ch === channel) onMessage(message) })
    },
    async close () {
      if (closed) return
      closed = true
      pub.disconnect()
      sub.disconnect()
    }
  }
}

/** Reports between node:cluster workers, through the primary (which runs `relayClusterState()`). */
export function clusterTransport (key: string): Transport {
  if (!cluster.isWorker || typeof process.send !== 'function') {
    throw new OptionsError('shared.cluster: this process is not a node:cluster worker (use shared.redis between separate processes)')
  }
  let listener: ((m: unknown) => void) | null = null
  return {
    mode: 'cluster',
    get connected () { return process.connected },
    publish (message) {
      if (!process.connected) return false
      process.send!({ sssonector: key, report: message })
      return true
    },
    subscribe (onMessage, onState) {
      listener = (m: unknown) => {
        const msg = m as { sssonector?: unknown, report?: unknown } | null
        if (msg !== null && typeof msg === 'object' && msg.sssonector === key && typeof msg.report === 'string') onMessage(msg.report)
      }
      process.on('message', listener)
      process.once('disconnect', () => { onState(false, 'the IPC channel to the primary closed') })
      onState(process.connected, null)
    },
    async close () {
      if (listener !== null) process.off('message', listener)
      listener = null
    }
  }
}

/**
 * In the node:cluster primary: passes each worker's target reports to every
 * other worker (`shared: { cluster: true }` in the workers). Returns a
 * function that stops it.
 */
export function relayClusterState (): () => void {
  if (!cluster.isPrimary) throw new Error('relayClusterState() runs in the node:cluster primary')
  const relay = (from: import('node:cluster').Worker, m: unknown): void => {
    const msg = m as { sssonector?: unknown, report?: unknown } | null
    if (msg === null || typeof msg !== 'object' || typeof msg.sssonector !== 'string' || typeof msg.report !== 'string') return
    for (const w of Object.values(cluster.workers ?? {})) if (w !== undefined && w !== from && w.isConnected()) w.send(msg)
  }
  cluster.on('message', relay)
  return () => { cluster.off('message', relay) }
}

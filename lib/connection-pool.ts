import type { Dispatcher } from 'undici'
import type { TlsOptions } from '../types/index.js'
import type { ResolvedHttp2, ResolvedPool, ResolvedTimeouts } from './options/index.js'
import { isFramingAnomaly } from './errors.js'
import { IdleTimeoutLearner } from './idle-timeout.js'

/** What a target's connections are made with. */
export interface ConnectionSettings {
  pool: ResolvedPool
  timeouts: ResolvedTimeouts
  tls: TlsOptions
  /** How targets are spoken to: HTTP/1.1 (one request per connection at a time), HTTP/2 (multiplexed), or ALPN's choice over TLS. */
  protocol?: 'http1' | 'http2' | 'auto'
  http2?: ResolvedHttp2
}

/**
 * One connection as the pool sees it: an undici Client holding one socket
 * (pipelining 1). It emits 'connect' and 'disconnect' as its socket opens and closes.
 */
export interface ConnectionClient {
  dispatch (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean
  destroy (): Promise<void>
  on (event: 'connect' | 'disconnect' | 'goaway' | 'capacity', listener: (...args: unknown[]) => void): unknown
  /** Multiplexed connections: the streams it may carry at once now (0 while it goes away). */
  readonly capacity?: number
  /** Multiplexed connections: the upstream's SETTINGS came (until then `capacity` is our own cap, a guess). */
  readonly settled?: boolean
}

/** Makes the client of one connection: the seam tests and other transports use. */
export type ConnectionFactory = (origin: string, settings: ConnectionSettings) => ConnectionClient

/** Connections open and idle across one upstream's targets, against its caps. */
export class SharedLimits {
  /** Connections that exist (connecting, busy or idle). */
  open = 0
  /** Idle connections, watched ones included (see IdleTimeoutLearner). */
  idle = 0
  /** Multiplexed upstreams: attempts in flight across its targets' connections. */
  streams = 0
  readonly maxActive: number
  readonly maxIdle: number
  /** Asks for an idle sweep by then at the latest (the upstream sets it). */
  sweepBy: (due: number) => void = () => {}

  constructor (maxActive: number, maxIdle: number) {
    this.maxActive = maxActive
    this.maxIdle = maxIdle
  }
}

/** Hears of each connection a pool opens and closes. */
export interface PoolObserver {
  opened (): void
  /** `age`: ms it was open. */
  closed (age: number): void
  /** An idle connection showed a framing anomaly; undici closed it. */
  anomaly (err: Error): void
}

/** A pooled connection: its client, its state, and when it opened and last went idle. */
export class Connection {
  readonly client: ConnectionClient
  readonly pool: TargetPool
  readonly openedAt: number
  /** When it last went idle: its answer ended. */
  idleSince = 0
  /** Index in the pool's idle stack, -1 when not idle. */
  idleIndex = -1
  /** Its answer ended: on its way back to the pool (after a turn of the event loop). */
  returning = false
  /** Requests it carried (attempts it was handed out for). */
  requests = 0
  /** Its socket has connected at least once. */
  connected = false
  /** The socket closed (peer, timeout or error): never reused. */
  broken = false
  /** Destroyed by the pool. */
  closed = false
  /** Retired idle before the target's learned idle timeout, kept open (never handed out) to see when the target closes it. */
  watched = false
  /** Its watch is over: the verdict waits for the events of this turn. */
  watchEnding = false
  /** Multiplexed: attempts on it now. */
  streams = 0

  constructor (client: ConnectionClient, pool: TargetPool, now: number) {
    this.client = client
    this.pool = pool
    this.openedAt = now
  }
}

function onConnect (this: { conn: Connection }): void {
  this.conn.connected = true
  // undici reconnects a client that still has a request queued: a fresh socket.
  this.conn.broken = false
}

function onGoaway (this: { conn: Connection }): void {
  // Takes no new stream; its streams finish, then it closes.
  this.conn.broken = true
  this.conn.pool.drained(this.conn)
}

function onCapacity (this: { conn: Connection }): void {
  this.conn.pool.grew(this.conn)
}

function onDisconnect (this: { conn: Connection }, _origin: unknown, _targets: unknown, err: unknown): void {
  const conn = this.conn
  conn.broken = true
  if (conn.pool.multiplexed) {
    conn.pool.drained(conn)
    return
  }
  // A socket that closed on a framing anomaly (bytes on an idle socket, a second
  // answer, bytes after a complete response): undici destroyed it; the target hears.
  if (err != null && (conn.idleIndex !== -1 || conn.returning) && isFramingAnomaly(err)) conn.pool.observer?.anomaly(err as Error)
  // An idle socket the peer closed leaves the idle set on the event, not on reuse;
  // its idle age teaches the pool the target's own idle timeout.
  if (conn.idleIndex !== -1 || conn.watched) conn.pool.idleClosed(conn, err)
}

/**
 * Whether a socket closed by the peer's doing (its FIN, or a reset): undici's
 * 'other side closed' or 'closed', ECONNRESET, EPIPE. Not a framing anomaly,
 * nor undici's own close at a Keep-Alive hint ('socket idle timeout').
 */
function peerClosed (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  if (code === 'ECONNRESET' || code === 'EPIPE') return true
  return code === 'UND_ERR_SOCKET' && !isFramingAnomaly(err)
}

function putReusable (pool: TargetPool, conn: Connection): void {
  pool.put(conn, true)
}

function endWatch (pool: TargetPool, conn: Connection, age: number): void {
  pool.endWatch(conn, age)
}

/**
 * The connections of one target, with the seed's Get/Put semantics:
 * `take()` hands out the most recently used idle connection (LIFO keeps
 * sockets warm) or opens a new one while under the caps; `put()` takes it
 * back, keeping it idle unless it broke or `maxIdle` idle connections exist
 * across the upstream already. Nothing is ever written to a socket to test it:
 * a socket that closed is dropped on its 'disconnect' event.
 */
export class TargetPool {
  readonly origin: string
  readonly #settings: ConnectionSettings
  readonly #limits: SharedLimits
  readonly #factory: ConnectionFactory
  readonly #now: () => number
  readonly #onFree: () => void
  readonly #maxPerTarget: number
  /** HTTP/2 (or ALPN's choice): a connection carries several attempts at once. */
  readonly multiplexed: boolean
  /** Idle connections, most recently used last. */
  readonly idle: Connection[] = []
  /** Connections that exist (connecting, busy or idle). */
  open = 0
  busy = 0
  /** Connections opened and closed since start. */
  opened = 0
  closedCount = 0
  /** Told of each connection opened and closed (metrics, debug logs). */
  observer: PoolObserver | null = null
  /** The target's own idle timeout, learned from its idle closes. */
  readonly keepAlive: IdleTimeoutLearner
  /** The retired connection watched now, if any (one at a time). */
  #watched: Connection | null = null
  /**
   * Multiplexed: the streams a connection to this target may carry at once,
   * as the SETTINGS of the last that had them said (with our own cap). A new
   * connection is packed to it until its own SETTINGS come, a round trip
   * later: packed to `maxStreams` meanwhile, a burst would leave streams
   * waiting on it for slots the target does not give, while the pool could
   * open another connection for them.
   */
  #streamLimit = Infinity
  readonly #all = new Set<Connection>()
  readonly #destroying = new Set<Promise<void>>()
  #closing = false
  #onEmpty: (() => void) | null = null

  constructor (origin: string, settings: ConnectionSettings, limits: SharedLimits, factory: ConnectionFactory, now: () => number, onFree: () => void) {
    this.origin = origin
    this.#settings = settings
    this.#limits = limits
    this.#factory = factory
    this.#now = now
    this.#onFree = onFree
    this.#maxPerTarget = settings.pool.maxActivePerTarget
    this.multiplexed = (settings.protocol ?? 'http1') !== 'http1'
    this.keepAlive = new IdleTimeoutLearner(settings.pool.idleTimeout)
  }

  /** Connections in use now: over HTTP/1.1 the attempts in flight (`busy`); over HTTP/2 those carrying a stream at least. */
  busyConnections (): number {
    if (!this.multiplexed) return this.busy
    let n = 0
    for (const c of this.#all) if (c.streams > 0) n++
    return n
  }

  /** Whether `take()` can hand out a connection now, counting an idle one of another target that could be closed to make room. */
  hasCapacity (): boolean {
    if (this.#closing) return false
    if (this.multiplexed) return this.#roomForStream() && (this.#withRoom() !== null || this.open < this.#maxPerTarget)
    if (this.idle.length > 0) return true
    if (this.open >= this.#maxPerTarget) return false
    return this.#limits.open < this.#limits.maxActive || this.#limits.idle > 0
  }

  /** Whether a new connection fits under both caps without closing anything. */
  canOpen (): boolean {
    if (this.multiplexed && !this.#roomForStream()) return false
    return !this.#closing && this.open < this.#maxPerTarget && this.#limits.open < this.#limits.maxActive
  }

  /**
   * Multiplexed: `maxActivePerTarget` and `maxActive` cap the attempts in
   * flight (streams), as they cap connections in use over HTTP/1.1, where a
   * connection carries one at a time.
   */
  #roomForStream (): boolean {
    return this.busy < this.#maxPerTarget && this.#limits.streams < this.#limits.maxActive
  }

  /** Multiplexed: the open connection with room for a stream that carries the most already (streams packed on few connections), or null. */
  #withRoom (): Connection | null {
    let best: Connection | null = null
    for (const c of this.#all) {
      if (c.broken || c.closed || c.watched) continue
      const cap = c.client.settled === false ? Math.min(c.client.capacity ?? 1, this.#streamLimit) : c.client.capacity ?? 1
      if (c.streams < cap && (best === null || c.streams > best.streams)) best = c
    }
    return best
  }

  #takeStream (): Connection | undefined {
    if (!this.#roomForStream()) return undefined
    let conn = this.#withRoom()
    if (conn === null) {
      if (!this.canOpen()) return undefined
      conn = this.#openConnection()
    } else if (conn.idleIndex !== -1) {
      this.#removeIdle(conn)
    }
    conn.streams++
    this.busy++
    this.#limits.streams++
    conn.requests++
    return conn
  }

  #putStream (conn: Connection): void {
    conn.streams--
    this.busy--
    this.#limits.streams--
    if (conn.streams === 0) {
      if (conn.broken || this.#closing || this.#limits.idle >= this.#limits.maxIdle || this.#retired(conn, this.#now())) {
        this.#destroy(conn)
      } else {
        conn.idleSince = this.#now()
        conn.idleIndex = this.idle.length
        this.idle.push(conn)
        this.#limits.idle++
      }
    } else if (!conn.broken && this.#retired(conn, this.#now())) {
      // Served its time: no new stream; closed when its last one ends.
      conn.broken = true
    }
    this.#checkEmpty()
    this.#onFree()
  }

  /** Multiplexed: a connection that takes no new stream (GOAWAY, closed): closed now if it carries none. */
  drained (conn: Connection): void {
    if (conn.streams !== 0 || conn.closed) return
    this.#removeIdle(conn)
    this.#destroy(conn)
    this.#onFree()
  }

  /** A connection's capacity changed (its settings came, ALPN chose HTTP/2): the target's limit is learned, waiters may be served. */
  grew (conn: Connection): void {
    const cap = conn.client.capacity ?? 0
    if (conn.client.settled === true && cap > 0) this.#streamLimit = cap
    this.#onFree()
  }

  /**
   * Get: the most recently used idle connection, else a new one under the caps,
   * else undefined. `fresh` prefers a new connection when one fits: a retry after
   * a reset should not land on a socket as old as the one that broke.
   */
  take (fresh = false): Connection | undefined {
    if (this.#closing) return undefined
    if (this.multiplexed) return this.#takeStream()
    // A fresh one when asked and it fits; else the idle ones first.
    const idle = fresh && this.canOpen() ? [] : this.idle
    const retireAt = idle.length > 0 ? this.keepAlive.retireAt() : Infinity
    const now = retireAt === Infinity ? 0 : this.#now()
    while (idle.length > 0) {
      const conn = idle.pop()!
      conn.idleIndex = -1
      this.#limits.idle--
      if (conn.broken) {
        this.#destroy(conn)
        continue
      }
      // Idle as long as the target keeps idle connections, nearly: it may close it under the request.
      if (now - conn.idleSince >= retireAt) {
        this.#retire(conn)
        continue
      }
      this.busy++
      conn.requests++
      return conn
    }
    if (!this.canOpen()) return undefined
    const conn = this.#openConnection()
    this.busy++
    conn.requests++
    return conn
  }

  #openConnection (): Connection {
    const client = this.#factory(this.origin, this.#settings)
    const conn = new Connection(client, this, this.#now())
    const ctx = { conn }
    client.on('connect', onConnect.bind(ctx))
    client.on('disconnect', onDisconnect.bind(ctx))
    if (this.multiplexed) {
      client.on('goaway', onGoaway.bind(ctx))
      client.on('capacity', onCapacity.bind(ctx))
    }
    this.#all.add(conn)
    this.open++
    this.opened++
    this.#limits.open++
    this.observer?.opened()
    return conn
  }

  /** Whether a connection has served its time: `maxRequestsPerConnection` requests, or older than `maxConnectionAge`. */
  #retired (conn: Connection, now: number): boolean {
    const { maxRequestsPerConnection, maxConnectionAge } = this.#settings.pool
    return (maxRequestsPerConnection !== 0 && conn.requests >= maxRequestsPerConnection) ||
      (maxConnectionAge !== 0 && now - conn.openedAt >= maxConnectionAge)
  }

  /** Put: back to the idle set when it can serve again, else closed. */
  put (conn: Connection, reusable: boolean): void {
    if (this.multiplexed) {
      this.#putStream(conn)
      return
    }
    this.busy--
    // Idle from the end of its answer (putAfterTurn), the nearest we see to the target's own start of idle.
    const idleSince = conn.returning ? conn.idleSince : this.#now()
    conn.returning = false
    // A watched connection yields its place under maxIdle to one that can serve.
    if (this.#watched !== null && this.#limits.idle >= this.#limits.maxIdle) this.#destroy(this.#unwatch())
    if (!reusable || conn.broken || this.#closing || this.#limits.idle >= this.#limits.maxIdle || this.#retired(conn, this.#now())) {
      this.#destroy(conn)
    } else {
      conn.idleSince = idleSince
      const retireAt = this.keepAlive.retireAt()
      if (retireAt <= 0) {
        // The target closes idle connections at once: none is reused.
        this.#retire(conn)
      } else {
        conn.idleIndex = this.idle.length
        this.idle.push(conn)
        this.#limits.idle++
        if (retireAt !== Infinity) this.#limits.sweepBy(conn.idleSince + retireAt)
      }
    }
    this.#checkEmpty()
    this.#onFree()
  }

  /**
   * Put, reusable, after a full turn of the event loop, as undici waits itself
   * before reusing a socket: bytes already on their way (a stray second answer
   * written with the last one, read in the same poll) reach an idle socket, and
   * undici closes it, instead of being taken for the answer of a request
   * dispatched on it meanwhile.
   */
  putAfterTurn (conn: Connection): void {
    // A stream ends alone: the connection's other streams and frames are not its.
    if (this.multiplexed) {
      this.#putStream(conn)
      return
    }
    conn.returning = true
    conn.idleSince = this.#now()
    setImmediate(putReusable, this, conn)
  }

  /** Drops an idle connection whose socket closed. */
  discard (conn: Connection): void {
    this.#removeIdle(conn)
    this.#destroy(conn)
    this.#onFree()
  }

  /** An idle (or watched) connection's socket closed: a close of the target's is a sample of its idle timeout. */
  idleClosed (conn: Connection, err: unknown): void {
    if (this.multiplexed) {
      this.drained(conn)
      return
    }
    if (peerClosed(err)) this.keepAlive.closed(this.#now() - conn.idleSince)
    if (!conn.watched) {
      this.discard(conn)
      return
    }
    this.#destroy(this.#unwatch())
    this.#onFree()
  }

  /** The learned idle timeout (ms) of the target, or null; and the idle age from which the pool retires a connection. */
  learnedIdle (): { learned: number | null, retireAt: number | null } {
    const learned = this.keepAlive.learned
    if (learned === null) return { learned: null, retireAt: null }
    return { learned: Math.round(learned * 10) / 10, retireAt: Math.round(Math.max(0, this.keepAlive.retireAt()) * 10) / 10 }
  }

  /** An idle connection (out of the idle set) retired before the learned age: watched if none is, else closed. */
  #retire (conn: Connection): void {
    this.keepAlive.retired++
    if (this.#watched !== null || this.#closing) {
      this.#destroy(conn)
      return
    }
    conn.watched = true
    this.#watched = conn
    this.#limits.idle++
    this.#limits.sweepBy(conn.idleSince + this.keepAlive.watchFor())
  }

  #unwatch (): Connection {
    const conn = this.#watched!
    conn.watched = false
    this.#watched = null
    this.#limits.idle--
    return conn
  }

  /** Closes the least recently used idle connection (a watched one first), to make room elsewhere. */
  evictIdle (): boolean {
    if (this.#watched !== null) {
      this.#destroy(this.#unwatch())
      return true
    }
    if (this.idle.length === 0) return false
    const conn = this.idle[0]
    this.#removeIdle(conn)
    this.#destroy(conn)
    return true
  }

  /** When its least recently used idle (or watched) connection went idle, or Infinity. */
  oldestIdle (): number {
    if (this.#watched !== null) return this.#watched.idleSince
    return this.idle.length > 0 ? this.idle[0].idleSince : Infinity
  }

  /**
   * Closes idle connections idle for `idleTimeout` or more (or past
   * `maxConnectionAge`), retires those past the learned age, ends the watch
   * of one that outlived it; returns when the next one will be due, or Infinity.
   */
  sweep (now: number): number {
    const timeout = this.#settings.pool.idleTimeout
    let closed = false
    const watched = this.#watched
    if (watched !== null && !watched.watchEnding && now - watched.idleSince >= this.keepAlive.watchFor()) {
      // Its close may be among this turn's events, not read yet: the verdict waits for them.
      watched.watchEnding = true
      setImmediate(endWatch, this, watched, this.keepAlive.watchFor())
    }
    const due = Math.min(timeout, this.keepAlive.retireAt())
    while (this.idle.length > 0 && now - this.idle[0].idleSince >= due) {
      const conn = this.idle[0]
      this.#removeIdle(conn)
      if (now - conn.idleSince < timeout) this.#retire(conn)
      else this.#destroy(conn)
      closed = true
    }
    if (this.#settings.pool.maxConnectionAge !== 0) {
      for (let i = this.idle.length - 1; i >= 0; i--) {
        const conn = this.idle[i]
        if (!this.#retired(conn, now)) continue
        this.#removeIdle(conn)
        this.#destroy(conn)
        closed = true
      }
    }
    if (closed) this.#onFree()
    return this.nextSweep()
  }

  /** A watched connection outlived its watch (`age` ms idle), unless its close came meanwhile: the target keeps idle connections at least that long. */
  endWatch (conn: Connection, age: number): void {
    if (this.#watched !== conn) return
    this.keepAlive.survived(age)
    this.#destroy(this.#unwatch())
    this.#onFree()
  }

  /** When the next idle connection is due to be closed (idle timeout, or age), or Infinity. */
  nextSweep (): number {
    const watched = this.#watched
    let due = watched === null || watched.watchEnding ? Infinity : watched.idleSince + this.keepAlive.watchFor()
    if (this.idle.length === 0) return due
    due = Math.min(due, this.idle[0].idleSince + Math.min(this.#settings.pool.idleTimeout, this.keepAlive.retireAt()))
    const maxAge = this.#settings.pool.maxConnectionAge
    if (maxAge !== 0) for (const conn of this.idle) due = Math.min(due, conn.openedAt + maxAge)
    return due
  }

  #removeIdle (conn: Connection): void {
    const i = conn.idleIndex
    if (i === -1) return
    this.idle.splice(i, 1)
    for (let j = i; j < this.idle.length; j++) this.idle[j].idleIndex = j
    conn.idleIndex = -1
    this.#limits.idle--
  }

  #destroy (conn: Connection): void {
    if (conn.closed) return
    conn.closed = true
    this.#all.delete(conn)
    this.open--
    this.closedCount++
    this.#limits.open--
    this.observer?.closed(this.#now() - conn.openedAt)
    const p = conn.client.destroy().catch(() => {})
    this.#destroying.add(p)
    p.then(() => { this.#destroying.delete(p) }, () => {})
  }

  #checkEmpty (): void {
    if (this.#onEmpty !== null && this.busy === 0) {
      const fn = this.#onEmpty
      this.#onEmpty = null
      fn()
    }
  }

  /** Ages (ms) of the connections open now. */
  ages (now: number): number[] {
    const out: number[] = []
    for (const c of this.#all) out.push(now - c.openedAt)
    return out
  }

  /** Stops handing out connections, closes the idle ones, waits for the busy ones, then closes those too. */
  async close (): Promise<void> {
    this.#closing = true
    if (this.#watched !== null) this.#destroy(this.#unwatch())
    while (this.idle.length > 0) {
      const conn = this.idle.pop()!
      conn.idleIndex = -1
      this.#limits.idle--
      this.#destroy(conn)
    }
    if (this.busy > 0) await new Promise<void>((resolve) => { this.#onEmpty = resolve })
    // Busy connections were closed as they came back; any left never came back.
    for (const conn of [...this.#all]) this.#destroy(conn)
    await Promise.all(this.#destroying)
  }
}

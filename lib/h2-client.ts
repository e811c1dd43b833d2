import { EventEmitter } from 'node:events'
import http2 from 'node:http2'
import tls from 'node:tls'
import type { Readable } from 'node:stream'
import type { IncomingHttpHeaders } from 'node:http'
import { Client, errors } from 'undici'
import type { Dispatcher } from 'undici'
import type { ConnectionClient, ConnectionSettings } from './connection-pool.js'
import type { ResolvedHttp2 } from './options/index.js'

type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController
type Options = Dispatcher.DispatchOptions

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants

/**
 * An HTTP/2 stream the upstream never processed: refused (REFUSED_STREAM), or
 * above the last stream its GOAWAY said it would finish, or sent on a
 * connection already going away. Nothing of it reached the application: it
 * may go to another connection whatever its method, and says nothing bad of
 * its target (NGINX sends GOAWAY every `keepalive_requests`).
 */
export class RefusedStreamError extends Error {
  readonly code = 'UND_ERR_SOCKET'
  readonly category = 'refused' as const
  constructor (message: string) {
    super(message)
    this.name = 'RefusedStreamError'
  }
}

/** Request headers HTTP/2 does not carry (RFC 9113 8.2.2): the connection's own, and Host (`:authority` instead). */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings'])

/** The `:authority`, `:path`, and the other headers of a request as HTTP/2 sends them. */
function h2Headers (opts: Options, scheme: string, fallbackAuthority: string): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {}
  let authority = fallbackAuthority
  const add = (rawName: unknown, value: unknown): void => {
    if (value == null) return
    const name = String(rawName).toLowerCase()
    if (name === 'host') {
      if (String(value) !== '') authority = String(value)
      return
    }
    if (name.charCodeAt(0) === 58 /* : */ || CONNECTION_SPECIFIC.has(name)) return
    // TE may only say "trailers" (gRPC's servers ask for it).
    if (name === 'te' && String(value).trim().toLowerCase() !== 'trailers') return
    const prior = out[name]
    if (prior === undefined) out[name] = Array.isArray(value) ? value.map(String) : String(value)
    else out[name] = ([] as string[]).concat(prior as string | string[], Array.isArray(value) ? value.map(String) : String(value))
  }
  const headers = opts.headers as unknown
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) for (const [k, v] of headers as unknown[][]) add(k, v)
    else for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1])
  } else if (headers != null) {
    for (const name in headers as Record<string, unknown>) add(name, (headers as Record<string, unknown>)[name])
  }
  // gRPC asks every call for `TE: trailers` (PROTOCOL-HTTP2.md); hop-by-hop, the client's never reaches here.
  if (out.te === undefined && typeof out['content-type'] === 'string' && out['content-type'].startsWith('application/grpc')) out.te = 'trailers'
  out[':method'] = opts.method
  out[':path'] = opts.path
  out[':scheme'] = scheme
  out[':authority'] = authority
  return out
}

/** An answer's headers as undici hands them: no pseudo-header. */
function plainHeaders (headers: http2.IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {}
  for (const name in headers) {
    if (name.charCodeAt(0) === 58) continue
    out[name] = headers[name] as string | string[]
  }
  return out
}

function rawOf (headers: IncomingHttpHeaders | null): Buffer[] | null {
  if (headers === null) return null
  const out: Buffer[] = []
  for (const name in headers) {
    const v = headers[name]
    if (Array.isArray(v)) for (const x of v) out.push(Buffer.from(name), Buffer.from(x))
    else if (v !== undefined) out.push(Buffer.from(name), Buffer.from(String(v)))
  }
  return out
}

const kRequest = Symbol('sssonector.h2Request')
type RequestStream = http2.ClientHttp2Stream & { [kRequest]: H2Request }
const NO_CONTEXT = Object.freeze({})

function noop (): void {}
function onHeadersTimeout (req: H2Request): void { req.headersTimedOut() }
function onBodyTimeout (req: H2Request): void { req.bodyTimedOut() }
function onStreamResponse (this: RequestStream, headers: http2.IncomingHttpHeaders): void { this[kRequest].streamResponse(headers) }
function onStreamData (this: RequestStream, chunk: Buffer): void { this[kRequest].streamData(chunk) }
function onStreamTrailers (this: RequestStream, trailers: http2.IncomingHttpHeaders): void { this[kRequest].trailersCame(trailers) }
function onStreamEnd (this: RequestStream): void { this[kRequest].readableEnded() }
function onStreamClose (this: RequestStream): void { this[kRequest].streamClosed(this) }

/** One request on one HTTP/2 stream, with the controller its handler holds (undici's current handler API). */
class H2Request implements Controller {
  readonly client: H2Client
  readonly opts: Options
  readonly handler: Handler
  stream: http2.ClientHttp2Stream | null = null
  #aborted: Error | null = null
  #paused = false
  #done = false
  #headers: IncomingHttpHeaders | null = null
  #trailers: IncomingHttpHeaders | null = null
  #headersTimer: NodeJS.Timeout | null = null
  #bodyTimer: NodeJS.Timeout | null = null
  /** The answer's headers came. */
  answered = false

  constructor (client: H2Client, opts: Options, handler: Handler) {
    this.client = client
    this.opts = opts
    this.handler = handler
  }

  get aborted (): boolean { return this.#aborted !== null }
  get paused (): boolean { return this.#paused }
  get reason (): Error | null { return this.#aborted }
  get rawHeaders (): Buffer[] | null { return rawOf(this.#headers) }
  get rawTrailers (): Buffer[] | null { return rawOf(this.#trailers) }

  abort (reason: Error): void {
    if (this.#done || this.#aborted !== null) return
    this.#aborted = reason
    const stream = this.stream
    if (stream !== null && !stream.destroyed) stream.close(NGHTTP2_CANCEL)
    this.fail(reason)
  }

  pause (): void {
    this.#paused = true
    this.stream?.pause()
    this.#stopBodyTimer()
  }

  resume (): void {
    this.#paused = false
    this.stream?.resume()
    if (this.answered) this.#armBodyTimer()
  }

  /** Starts the stream on a session that is ready (or connecting: Node queues it). */
  start (session: http2.ClientHttp2Session): void {
    if (this.#aborted !== null || this.#done) return
    const opts = this.opts
    const body = opts.body as Readable | Buffer | string | null | undefined
    const hasBody = body != null && !(typeof body === 'string' ? body.length === 0 : body instanceof Uint8Array ? body.length === 0 : false)
    let stream: http2.ClientHttp2Stream
    try {
      stream = session.request(h2Headers(opts, this.client.scheme, this.client.authority), { endStream: !hasBody })
    } catch (err) {
      // A session going away takes no new stream: nothing was sent.
      const code = (err as { code?: string }).code
      this.fail(code === 'ERR_HTTP2_GOAWAY_SESSION' || code === 'ERR_HTTP2_INVALID_SESSION' ? new RefusedStreamError(`HTTP/2 connection going away: ${(err as Error).message}`) : err as Error)
      return
    }
    this.stream = stream
    this.client.streamOpened()
    const headersTimeout = typeof opts.headersTimeout === 'number' ? opts.headersTimeout : this.client.settings.timeouts.headers
    if (headersTimeout > 0) {
      this.#headersTimer = setTimeout(onHeadersTimeout, headersTimeout, this)
      this.#headersTimer.unref()
    }
    // Listeners shared by every stream, which finds its request on itself: no closures per stream.
    (stream as RequestStream)[kRequest] = this
    stream.on('response', onStreamResponse)
    stream.on('data', onStreamData)
    stream.on('trailers', onStreamTrailers)
    stream.on('end', onStreamEnd)
    stream.on('error', noop)
    stream.on('close', onStreamClose)
    if (hasBody) {
      if (typeof body === 'string' || body instanceof Uint8Array) stream.end(body)
      else {
        body.on('error', (err) => { this.abort(err) })
        body.pipe(stream)
      }
    }
    this.handler.onRequestStart?.(this, NO_CONTEXT)
  }

  /** Its headers timer fired (see start). */
  headersTimedOut (): void {
    this.#headersTimer = null
    this.abort(new errors.HeadersTimeoutError())
  }

  /** Its answer's body stalled (see #armBodyTimer). */
  bodyTimedOut (): void {
    this.#bodyTimer = null
    this.abort(new errors.BodyTimeoutError())
  }

  /** Its answer's trailers. */
  trailersCame (trailers: http2.IncomingHttpHeaders): void {
    this.#trailers = plainHeaders(trailers)
  }

  /** The readable side ended: on a reset too (the peer died mid-answer), so the answer is whole only if the stream then closes cleanly (see streamClosed). */
  readableEnded (): void {
    this.#ended = true
  }

  streamResponse (headers: http2.IncomingHttpHeaders): void {
    if (this.#done) return
    const status = Number(headers[':status'])
    this.#stopHeadersTimer()
    this.answered = true
    this.#headers = plainHeaders(headers)
    this.#armBodyTimer()
    this.handler.onResponseStart?.(this, status, this.#headers, '')
  }

  streamData (chunk: Buffer): void {
    if (this.#done) return
    this.#bodyTimer?.refresh()
    this.handler.onResponseData?.(this, chunk)
  }

  #onEnd (): void {
    if (this.#done || !this.answered) return
    this.#finish()
    this.handler.onResponseEnd?.(this, this.#trailers ?? {})
  }

  /** Its answer's END_STREAM came (see streamClosed). */
  #ended = false

  streamClosed (stream: http2.ClientHttp2Stream): void {
    this.client.streamClosed()
    if (this.#done) return
    const code = stream.rstCode
    // Above the last stream the upstream's GOAWAY promised to finish, or refused: never processed.
    if (!this.answered && (code === NGHTTP2_REFUSED_STREAM || this.client.beyondGoaway(stream.id))) {
      this.fail(new RefusedStreamError(`HTTP/2 stream refused (${code === NGHTTP2_REFUSED_STREAM ? 'REFUSED_STREAM' : 'GOAWAY'})`))
      return
    }
    if (this.answered && this.#ended && (code === NGHTTP2_NO_ERROR || code === undefined)) {
      this.#onEnd()
      return
    }
    const err = this.client.lastError ?? new errors.SocketError(code === NGHTTP2_NO_ERROR ? 'other side closed' : `HTTP/2 stream reset (code ${code ?? 'none'})`)
    this.fail(err)
  }

  #armBodyTimer (): void {
    const ms = typeof this.opts.bodyTimeout === 'number' ? this.opts.bodyTimeout : this.client.settings.timeouts.body
    if (ms <= 0 || this.#paused || this.#done) return
    if (this.#bodyTimer !== null) {
      this.#bodyTimer.refresh()
      return
    }
    this.#bodyTimer = setTimeout(onBodyTimeout, ms, this)
    this.#bodyTimer.unref()
  }

  #stopBodyTimer (): void {
    if (this.#bodyTimer !== null) clearTimeout(this.#bodyTimer)
    this.#bodyTimer = null
  }

  #stopHeadersTimer (): void {
    if (this.#headersTimer !== null) clearTimeout(this.#headersTimer)
    this.#headersTimer = null
  }

  #finish (): boolean {
    if (this.#done) return false
    this.#done = true
    this.#stopHeadersTimer()
    this.#stopBodyTimer()
    this.client.requestDone(this)
    return true
  }

  /** Fails it once: its handler hears, its stream is cancelled. */
  fail (err: Error): void {
    if (!this.#finish()) return
    const stream = this.stream
    if (stream !== null && !stream.destroyed) stream.close(NGHTTP2_CANCEL)
    const body = this.opts.body as Readable | null | undefined
    if (body != null && typeof (body as Readable).unpipe === 'function' && stream !== null) body.unpipe(stream)
    this.handler.onResponseError?.(this, err)
  }
}

/**
 * One pooled HTTP/2 connection to a target, on Node's `http2` (prior
 * knowledge over http, ALPN `h2` over https), behind the pool's
 * `ConnectionClient` seam and undici's handler API. Unlike undici's own
 * HTTP/2 client it honours a GOAWAY's last stream: streams up to it finish,
 * later ones fail as refused (another connection takes them), and the
 * connection takes no new stream. A PING every `pingInterval` closes a
 * connection whose peer stopped answering before a request meets it.
 * With `alpn: 'auto'` over https it offers h2 and http/1.1, and serves over
 * an undici Client on the same socket when the upstream picks HTTP/1.1.
 */
export class H2Client extends EventEmitter implements ConnectionClient {
  readonly origin: string
  readonly settings: ConnectionSettings
  readonly h2: ResolvedHttp2
  readonly scheme: string
  readonly authority: string
  readonly #auto: boolean
  #session: http2.ClientHttp2Session | null = null
  /** Over ALPN, the upstream chose HTTP/1.1: requests go through this client on the same socket. */
  #h1: Client | null = null
  #waiting: Array<[Options, Handler]> = []
  #connecting = false
  #connected = false
  #destroyed = false
  #goawayLast = -1
  /** The upstream will take no new stream here (GOAWAY, closed, PING unanswered). */
  draining = false
  /** What the upstream allows at once, with our own cap. */
  remoteMax = Infinity
  /** The upstream's SETTINGS came: `capacity` is its word, no longer our guess. */
  settled = false
  lastError: Error | null = null
  /** Streams open now. */
  streams = 0
  #requests = new Set<H2Request>()
  #ping: NodeJS.Timeout | null = null
  #pingWait: NodeJS.Timeout | null = null
  #connectTimer: NodeJS.Timeout | null = null
  /** The negotiated protocol, once connected: 'h2' or 'http/1.1'. */
  protocol: 'h2' | 'http/1.1' | null = null

  constructor (origin: string, settings: ConnectionSettings, h2: ResolvedHttp2, auto: boolean) {
    super()
    this.origin = origin
    this.settings = settings
    this.h2 = h2
    const url = new URL(origin)
    this.scheme = url.protocol === 'https:' ? 'https' : 'http'
    this.authority = url.host
    this.#auto = auto && this.scheme === 'https'
  }

  /** Streams this connection may carry at once now: 0 while going away; 1 until ALPN is known when it may turn out HTTP/1.1. */
  get capacity (): number {
    if (this.draining || this.#destroyed) return 0
    if (this.#h1 !== null || (this.#auto && this.protocol === null)) return 1
    return Math.min(this.h2.maxStreams, this.remoteMax)
  }

  dispatch (opts: Options, handler: Handler): boolean {
    if (this.#h1 !== null) return this.#h1.dispatch(opts, handler)
    if (this.#destroyed || this.draining) {
      handler.onResponseError?.(undefined as unknown as Controller, new RefusedStreamError('HTTP/2 connection going away'))
      return true
    }
    if (!this.#connected) {
      this.#waiting.push([opts, handler])
      if (!this.#connecting) this.#connect()
      return true
    }
    this.#start(opts, handler)
    return true
  }

  #start (opts: Options, handler: Handler): void {
    const req = new H2Request(this, opts, handler)
    this.#requests.add(req)
    req.start(this.#session!)
  }

  #connect (): void {
    this.#connecting = true
    const { tls: t, timeouts } = this.settings
    const tlsOptions: tls.ConnectionOptions = {
      rejectUnauthorized: t.rejectUnauthorized ?? true,
      ...(t.ca !== undefined ? { ca: t.ca } : {}),
      ...(t.cert !== undefined ? { cert: t.cert } : {}),
      ...(t.key !== undefined ? { key: t.key } : {}),
      ...(t.servername !== undefined ? { servername: t.servername } : {})
    }
    const servername = this.#waiting[0]?.[0] !== undefined ? (this.#waiting[0][0] as { servername?: string }).servername : undefined
    if (servername !== undefined) tlsOptions.servername = servername
    if (timeouts.connect > 0) {
      this.#connectTimer = setTimeout(() => {
        this.#connectTimer = null
        this.#sessionFailed(new errors.ConnectTimeoutError(`no HTTP/2 connection preface (SETTINGS) within ${timeouts.connect} ms`))
      }, timeouts.connect)
      this.#connectTimer.unref()
    }
    if (this.#auto) {
      const url = new URL(this.origin)
      const socket = tls.connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 443), ALPNProtocols: ['h2', 'http/1.1'], ...tlsOptions })
      socket.once('error', (err) => { this.#sessionFailed(err) })
      socket.once('secureConnect', () => {
        if (socket.alpnProtocol === 'h2') {
          this.#open(http2.connect(this.origin, { createConnection: () => socket, settings: { enablePush: false } }))
          return
        }
        this.#useH1(socket, tlsOptions)
      })
      return
    }
    this.#open(http2.connect(this.origin, { ...(this.scheme === 'https' ? tlsOptions : {}), settings: { enablePush: false } }))
  }

  /** The upstream answered ALPN with HTTP/1.1: an undici Client on this socket serves from here, one request at a time. */
  #useH1 (socket: tls.TLSSocket, tlsOptions: tls.ConnectionOptions): void {
    this.#clearConnectTimer()
    socket.removeAllListeners('error')
    this.protocol = 'http/1.1'
    let given = false
    const { pool, timeouts } = this.settings
    const client = this.#h1 = new Client(this.origin, {
      pipelining: 1,
      keepAliveTimeout: Math.max(pool.idleTimeout, 1),
      keepAliveMaxTimeout: Math.max(pool.idleTimeout, 1),
      headersTimeout: timeouts.headers,
      bodyTimeout: timeouts.body,
      // The socket ALPN opened, once; a reconnect is a fresh one that offers HTTP/1.1 alone.
      connect: (connectOpts, cb) => {
        if (!given) {
          given = true
          // Never synchronously: undici connects from inside its resume loop, and a callback
          // made before the connector returns finds that loop still running and is lost (the
          // request queued on it is never written).
          process.nextTick(cb, null, socket)
          return
        }
        // With the first's TLS options (client certificate, server name), and the name undici asks for when it has one.
        const url = new URL(this.origin)
        const s = tls.connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 443), ALPNProtocols: ['http/1.1'], ...tlsOptions, ...(typeof connectOpts.servername === 'string' && connectOpts.servername !== '' ? { servername: connectOpts.servername } : {}) })
        s.once('secureConnect', () => { cb(null, s) })
        s.once('error', (err) => { cb(err, null) })
      }
    })
    client.on('connect', (...args) => { this.emit('connect', ...args) })
    client.on('disconnect', (...args) => { this.emit('disconnect', ...args) })
    const waiting = this.#waiting
    this.#waiting = []
    for (const [opts, handler] of waiting) client.dispatch(opts, handler)
    this.emit('capacity')
  }

  #open (session: http2.ClientHttp2Session): void {
    this.#session = session
    session.on('remoteSettings', (settings) => {
      const before = this.capacity
      const first = !this.settled
      this.settled = true
      if (typeof settings.maxConcurrentStreams === 'number') this.remoteMax = settings.maxConcurrentStreams
      if (first) this.#ready()
      // The first SETTINGS, or a change: the pool learns the target's limit (its next connections are packed to it) and serves waiters.
      if (first || this.capacity !== before) this.emit('capacity')
    })
    session.on('goaway', (code: number, lastStreamID: number) => {
      this.#goawayLast = lastStreamID
      this.draining = true
      if (code !== NGHTTP2_NO_ERROR) this.lastError = new errors.SocketError(`HTTP/2 GOAWAY with code ${code}`)
      this.emit('goaway', code, lastStreamID)
    })
    session.on('error', (err: Error) => {
      if (!this.#connected) {
        this.#sessionFailed(err)
        return
      }
      this.lastError = err
    })
    session.on('close', () => { this.#closed() })
    session.on('frameError', () => {})
    session.unref()
  }

  /**
   * Connected: the target's first SETTINGS came (its connection preface), not
   * merely the socket. A process that is stopped or hung has its connection
   * accepted by the kernel all the same; it never sends SETTINGS, and the
   * connect timeout fails it as a failed connect (retried elsewhere, whatever
   * the method; the target taken out), before any request went out on it.
   * Requests start only now, so the first are also packed to the target's own
   * stream limit, and a failed connect leaves their bodies unread.
   */
  #ready (): void {
    this.#clearConnectTimer()
    this.#connected = true
    this.protocol = 'h2'
    this.emit('connect', this.origin, [this])
    this.#armPing()
    const waiting = this.#waiting
    this.#waiting = []
    for (const [opts, handler] of waiting) this.#start(opts, handler)
  }

  /** The connect failed: every request waiting on it fails with its error (a failed connect: nothing was sent). */
  #sessionFailed (err: Error): void {
    this.#clearConnectTimer()
    if (this.lastError === null) this.lastError = err
    const waiting = this.#waiting
    this.#waiting = []
    for (const [, handler] of waiting) handler.onResponseError?.(undefined as unknown as Controller, err)
    for (const req of [...this.#requests]) if (!req.answered) req.fail(err)
    this.draining = true
    this.#session?.destroy()
    this.#closed()
  }

  #closed (): void {
    this.#stopPing()
    this.#clearConnectTimer()
    const first = !this.#destroyed
    this.draining = true
    this.#destroyed = true
    const err = this.lastError ?? new errors.SocketError('other side closed')
    for (const req of [...this.#requests]) req.fail(err)
    if (first || this.#connected) this.emit('disconnect', this.origin, [this], err)
    this.#connected = false
  }

  #clearConnectTimer (): void {
    if (this.#connectTimer !== null) clearTimeout(this.#connectTimer)
    this.#connectTimer = null
  }

  /** Whether a stream id is above the last one the upstream's GOAWAY will finish. */
  beyondGoaway (id: number | undefined): boolean {
    return this.#goawayLast >= 0 && (id === undefined || id > this.#goawayLast)
  }

  streamOpened (): void { this.streams++ }
  streamClosed (): void { this.streams-- }

  requestDone (req: H2Request): void {
    this.#requests.delete(req)
  }

  #armPing (): void {
    const every = this.h2.pingInterval
    if (every <= 0) return
    this.#ping = setInterval(() => { this.#sendPing() }, every)
    this.#ping.unref()
  }

  #sendPing (): void {
    const session = this.#session
    if (session === null || session.destroyed || this.#pingWait !== null) return
    this.#pingWait = setTimeout(() => {
      this.#pingWait = null
      this.lastError = new errors.SocketError(`HTTP/2 PING unanswered for ${this.h2.pingTimeout} ms`)
      this.emit('pingTimeout')
      session.destroy(this.lastError)
    }, this.h2.pingTimeout)
    this.#pingWait.unref()
    try {
      session.ping((err) => {
        if (this.#pingWait !== null) clearTimeout(this.#pingWait)
        this.#pingWait = null
        if (err !== null && err !== undefined) this.lastError ??= err
      })
    } catch {
      if (this.#pingWait !== null) clearTimeout(this.#pingWait)
      this.#pingWait = null
    }
  }

  #stopPing (): void {
    if (this.#ping !== null) clearInterval(this.#ping)
    if (this.#pingWait !== null) clearTimeout(this.#pingWait)
    this.#ping = null
    this.#pingWait = null
  }

  async destroy (): Promise<void> {
    if (this.#h1 !== null) {
      await this.#h1.destroy().catch(() => {})
      return
    }
    const waiting = this.#waiting
    this.#waiting = []
    const err = new errors.ClientDestroyedError()
    for (const [, handler] of waiting) handler.onResponseError?.(undefined as unknown as Controller, err)
    const session = this.#session
    if (session === null || session.destroyed) {
      this.#closed()
      return
    }
    await new Promise<void>((resolve) => {
      session.once('close', () => { resolve() })
      session.destroy()
    })
  }
}

import http from 'node:http'
import https from 'node:https'
import type { ClientRequest, IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyReply } from 'fastify'
import type { Upstream } from './upstream.js'
import type { TunnelLease } from './tunnel-lease.js'
import type { OpenTunnel } from './target.js'
import { ClientAbortError, ConnectTimeoutError, HeadersTimeoutError, UpstreamStatusError, categorize, faultOf, toUpstreamError } from './errors.js'
import type { SssonectorError } from './errors.js'
import { stripResponseHeaders } from './forward.js'
import { FrameEdges, closeFrame } from './frames.js'

/** Stands for the request once the tunnel is open (nothing reads it then). */
const OPEN: TunnelRequest = Object.freeze({
  upgrade: Object.freeze({ socket: null as unknown as Duplex, head: Buffer.alloc(0) }),
  path: '',
  method: '',
  headers: [],
  keepHost: false,
  reply: null as unknown as FastifyReply,
  fail: () => {}
})

/** Bytes of a client's kept before the 101 (its first frames); beyond them, its socket is paused. */
const EARLY_LIMIT = 64 * 1024

/** A tunnel closed by the gateway ends this long after its close frames at most, answered or not (ms). */
export const CLOSE_GRACE = 1000

const kUpgrade = Symbol('sssonector.upgrade')

/** Marks a raw request as an upgrade the server handed over (before it is routed through Fastify). */
export function markUpgrade (req: IncomingMessage, upgrade: Upgrade): void {
  (req as IncomingMessage & { [kUpgrade]?: Upgrade })[kUpgrade] = upgrade
}

/** The upgrade a raw request carries, if it is one. */
export function upgradeOf (req: IncomingMessage): Upgrade | undefined {
  return (req as IncomingMessage & { [kUpgrade]?: Upgrade })[kUpgrade]
}

/** An upgrade request as the server handed it over: the client's socket and the bytes read past its head. */
export interface Upgrade {
  readonly socket: Duplex
  readonly head: Buffer
}

/** What the route hands the tunnel: where to go, what to send, and how to answer the client before a 101. */
export interface TunnelRequest {
  readonly upgrade: Upgrade
  /** The path (and query) the target sees, after the route's prefix rewrite. */
  readonly path: string
  readonly method: string
  /** The headers the target sees, as a flat list: `host` first (filled in per attempt unless `keepHost`). */
  readonly headers: unknown[]
  readonly keepHost: boolean
  readonly reply: FastifyReply
  /** Answers the client with an error (503, 502, 504) through the reply. */
  readonly fail: (err: SssonectorError) => void
}

/**
 * One proxied WebSocket (any HTTP Upgrade): the upgrade is sent to the
 * lease's target on a connection of its own (TCP, or TLS with the upstream's
 * `tls` options), within `timeouts.connect` and `timeouts.headers`. A `101`
 * is passed to the client and the two sockets are piped both ways, byte for
 * byte, with backpressure (`pipe`): frames, subprotocols and extensions pass
 * untouched, as through NGINX or HAProxy. A connect failure, a reset before
 * the answer, or a retriable 5xx (`retry.statusCodes`) moves the upgrade to
 * another target within the upstream's retries; any other answer goes to the
 * client as it came. Each attempt's result feeds its target's state; a client
 * that leaves says nothing of the target.
 */
export class Tunnel implements OpenTunnel {
  readonly #upstream: Upstream
  readonly #lease: TunnelLease
  /** What the upgrade needs until its 101; let go then, so an open tunnel keeps no request, reply or headers. */
  #req: TunnelRequest
  readonly #client: Duplex
  #attempt: ClientRequest | null = null
  #target: Duplex | null = null
  #timer: NodeJS.Timeout | null = null
  #started = 0
  #done = false
  #closing = false
  /** Frame edges each way, for a WebSocket (client to target, target to client); null for another protocol. */
  #edges: [FrameEdges, FrameEdges] | null = null
  readonly #onClientGone: () => void
  readonly #onEarly: (chunk: Buffer) => void
  /** The client's bytes read after its upgrade request, before the 101. */
  readonly #early: Buffer[] = []
  #earlyBytes = 0

  constructor (upstream: Upstream, lease: TunnelLease, req: TunnelRequest) {
    this.#upstream = upstream
    this.#lease = lease
    this.#req = req
    this.#client = req.upgrade.socket
    this.#onClientGone = () => { this.#clientGone() }
    this.#onEarly = (chunk: Buffer) => {
      this.#early.push(chunk)
      this.#earlyBytes += chunk.length
      if (this.#earlyBytes >= EARLY_LIMIT) this.#client.pause()
    }
    // Until the 101, the client's bytes (its first frames, if it sends them early) are kept, up to
    // EARLY_LIMIT, then wait in its socket; reading them, the gateway sees the client leave.
    const client = this.#client
    client.on('data', this.#onEarly)
    client.once('end', this.#onClientGone)
    client.once('close', this.#onClientGone)
    lease.watch(this)
  }

  /** Stops watching the client's socket for the handshake. */
  #unwatch (): void {
    const client = this.#client
    client.removeListener('data', this.#onEarly)
    client.removeListener('end', this.#onClientGone)
    client.removeListener('close', this.#onClientGone)
  }

  /** Sends the upgrade to the lease's target. */
  start (): void {
    const lease = this.#lease
    const target = lease.target
    const config = this.#upstream.config
    const url = new URL(target.origin)
    const list = this.#req.headers
    const headers: Array<[string, string]> = []
    for (let i = 0; i < list.length; i += 2) {
      const name = list[i] as string
      const value = i === 0 && !this.#req.keepHost ? target.host : list[i + 1]
      if (Array.isArray(value)) for (const v of value) headers.push([name, String(v)])
      else headers.push([name, String(value)])
    }
    const secure = url.protocol === 'https:'
    const tls = config.tls
    const options = {
      host: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
      port: url.port === '' ? (secure ? 443 : 80) : Number(url.port),
      method: this.#req.method,
      path: this.#req.path,
      headers: headers.flat(),
      agent: false as const,
      setHost: false,
      ...(secure ? { ca: tls.ca, cert: tls.cert, key: tls.key, servername: target.servername ?? (/^[\d.]+$|:/.test(url.hostname) ? undefined : url.hostname), rejectUnauthorized: tls.rejectUnauthorized ?? true } : {})
    }
    this.#started = this.#upstream.clock()
    const attempt = this.#attempt = (secure ? https : http).request(options)
    target.attemptStarted()
    let ended = false
    const end = (): boolean => {
      if (ended) return false
      ended = true
      target.attemptEnded()
      this.#clearTimer()
      return true
    }
    this.#arm(config.timeouts.connect, () => new ConnectTimeoutError(`${target.origin} (${config.timeouts.connect} ms)`))
    attempt.once('socket', (socket) => {
      socket.once(secure ? 'secureConnect' : 'connect', () => {
        if (ended) return
        this.#arm(config.timeouts.headers, () => new HeadersTimeoutError(`${target.origin} (${config.timeouts.headers} ms)`))
      })
    })
    attempt.on('error', (err) => {
      if (!end()) return
      this.#failed(err)
    })
    attempt.once('upgrade', (res: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (!end()) {
        socket.destroy()
        return
      }
      this.#open(res, socket, head)
    })
    attempt.once('response', (res: IncomingMessage) => {
      if (!end()) {
        res.destroy()
        return
      }
      this.#answered(res)
    })
    attempt.end()
  }

  #arm (ms: number, error: () => Error): void {
    this.#clearTimer()
    this.#timer = setTimeout(() => {
      this.#timer = null
      this.#attempt?.destroy(error())
    }, ms)
    this.#timer.unref()
  }

  #clearTimer (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }

  #latency (): number {
    return this.#upstream.clock() - this.#started
  }

  /** No answer: a connect failure, a reset, a timeout. Another target, or the error to the client. */
  #failed (err: Error): void {
    // The client left (its attempt was ended for that): put as such in #clientGone.
    if (this.#done) return
    const e = toUpstreamError(err)
    const category = categorize(e)
    const lease = this.#lease
    lease.result({ category, status: 0, latency: this.#latency(), retried: faultOf(category) === 'target' && this.#canRetry() })
    if (faultOf(category) !== 'target') return
    this.#upstream.attemptFailed(lease.target, category, lease.attempts, lease.attempts < this.#upstream.tunnelAttempts)
    if (lease.next()) {
      this.#upstream.retried(category)
      this.start()
      return
    }
    this.#finish('failed')
    this.#req.fail(e)
  }

  #canRetry (): boolean {
    return this.#lease.attempts < this.#upstream.tunnelAttempts
  }

  /** An answer other than 101: a retriable 5xx moves to another target; anything else goes to the client as it came. */
  #answered (res: IncomingMessage): void {
    if (this.#done) {
      res.destroy()
      return
    }
    const status = res.statusCode ?? 0
    const lease = this.#lease
    const retriable = status >= 500 && this.#upstream.config.retry?.statusCodes.has(status) === true
    if (retriable && this.#canRetry()) {
      lease.result({ category: 'http_5xx', status, latency: this.#latency(), retried: true })
      res.destroy()
      this.#attempt?.destroy()
      this.#upstream.attemptFailed(lease.target, 'http_5xx', lease.attempts, true)
      if (lease.next()) {
        this.#upstream.retried('http_5xx')
        this.start()
        return
      }
      this.#finish('failed')
      this.#req.fail(new UpstreamStatusError(String(status)) as unknown as SssonectorError)
      return
    }
    lease.result({ category: status >= 500 ? 'http_5xx' : null, status, latency: this.#latency() })
    this.#finish(status >= 500 ? 'failed' : 'refused')
    const reply = this.#req.reply
    const headers = { ...res.headers } as Record<string, unknown>
    stripResponseHeaders(headers)
    // The connection ends with this answer: the client's socket was taken for the upgrade.
    headers.connection = 'close'
    reply.code(status).headers(headers as Record<string, string | string[]>)
    reply.send(res)
  }

  /** 101: the head to the client, then the byte tunnel. */
  #open (res: IncomingMessage, socket: Duplex, head: Buffer): void {
    const lease = this.#lease
    const client = this.#client
    if (this.#done) {
      socket.destroy()
      return
    }
    lease.result({ category: null, status: 101, latency: this.#latency() })
    this.#upstream.upgraded('ok')
    this.#target = socket
    this.#attempt = null
    this.#unwatch()
    client.pause()
    // The reply is over for Fastify: the socket is the tunnel's now.
    const reply = this.#req.reply
    reply.hijack()
    reply.raw.detachSocket(client as import('node:net').Socket)
    let out = `HTTP/1.1 101 ${res.statusMessage ?? 'Switching Protocols'}\r\n`
    const raw = res.rawHeaders
    for (let i = 0; i < raw.length; i += 2) out += `${raw[i]}: ${raw[i + 1]}\r\n`
    client.write(`${out}\r\n`)
    const early = this.#early.length === 0 ? this.#req.upgrade.head : Buffer.concat([this.#req.upgrade.head, ...this.#early])
    this.#early.length = 0
    this.#req = OPEN
    if (String(res.headers.upgrade).toLowerCase() === 'websocket') {
      const up = new FrameEdges()
      const down = new FrameEdges()
      this.#edges = [up, down]
      up.feed(early)
      down.feed(head)
      client.on('data', (chunk: Buffer) => { up.feed(chunk) })
      socket.on('data', (chunk: Buffer) => { down.feed(chunk) })
    }
    if (head.length > 0) client.write(head)
    if (early.length > 0) socket.write(early)
    lease.opened()
    const close = (): void => { this.#closed() }
    client.once('close', close)
    socket.once('close', close)
    client.on('error', close)
    socket.on('error', close)
    const idle = this.#upstream.config.timeouts.tunnelIdle
    // Any byte either way is read or written on the client's socket: its timeout is the tunnel's idleness.
    if (idle > 0) {
      const s = client as import('node:net').Socket
      s.setTimeout(idle)
      s.once('timeout', () => { this.close('idle') })
    }
    client.pipe(socket)
    socket.pipe(client)
    client.resume()
  }

  /**
   * Closes the tunnel (idle, its target leaving, the app closing). A
   * WebSocket gets a close frame 1001 (going away) each way where its bytes
   * stand at a frame's end (always, but in the middle of a frame still being
   * sent), then both sockets end; they are destroyed CLOSE_GRACE later if
   * still open. Another protocol's sockets are destroyed at once.
   */
  close (why: string): void {
    if (this.#closing || this.#done) return
    this.#closing = true
    const client = this.#client
    const target = this.#target
    if (target === null) {
      // Its upgrade is under way: it ends, and the client gets 503 CLOSED (nothing said of the target).
      const attempt = this.#attempt
      this.#attempt = null
      this.#lease.result({ category: 'no_target', status: 0, latency: this.#latency() })
      this.#finish(null)
      this.#req.fail(this.#upstream.closedError() as SssonectorError)
      // With an error, so its 'error' handler ends the attempt on its target.
      attempt?.destroy(new ClientAbortError(`tunnel closed during its upgrade: ${why}`))
      return
    }
    const edges = this.#edges
    if (edges === null) {
      client.destroy()
      target?.destroy()
      return
    }
    client.unpipe(target)
    target.unpipe(client)
    client.pause()
    target.pause()
    const reason = why === 'idle' ? 'idle' : 'going away'
    if (edges[0].atEdge) target.write(closeFrame(1001, reason, true))
    if (edges[1].atEdge) client.write(closeFrame(1001, reason, false))
    client.end()
    target.end()
    // Read what comes back (the peers' own close frames) so their FIN is seen.
    client.resume()
    target.resume()
    const timer = setTimeout(() => { this.#closed(true) }, CLOSE_GRACE)
    timer.unref()
    const done = (): void => { if (client.closed && target.closed) clearTimeout(timer) }
    client.once('close', done)
    target.once('close', done)
  }

  /** One side closed (or, `force`, the close's grace is over): both go; the slot goes back. While the gateway closes it, each side may finish its close first. */
  #closed (force = false): void {
    if (this.#closing && !force && !(this.#client.closed && this.#target?.closed !== false)) return
    this.#client.destroy()
    this.#target?.destroy()
    if (this.#done) return
    this.#done = true
    this.#lease.release()
  }

  /** The client left before the 101: the attempt ends, which says nothing of the target. */
  #clientGone (): void {
    if (this.#done) return
    const attempt = this.#attempt
    this.#attempt = null
    this.#lease.result({ category: 'client_abort', status: 0, latency: this.#latency() })
    this.#finish(null)
    this.#client.destroy()
    attempt?.destroy(new ClientAbortError('the client closed its connection during the upgrade'))
  }

  /** The upgrade ends without a tunnel: the slot goes back. */
  #finish (result: 'failed' | 'refused' | null): void {
    if (this.#done) return
    this.#done = true
    this.#clearTimer()
    this.#unwatch()
    if (result !== null) this.#upstream.upgraded(result)
    this.#lease.release()
  }
}

import { Dispatcher } from 'undici'
import type { Readable } from 'node:stream'
import { STATUS_CODES } from 'node:http'
import type { IncomingMessage, ServerResponse, IncomingHttpHeaders } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, preHandlerHookHandler } from 'fastify'
import httpProxy from '@fastify/http-proxy'
import type { ResolvedRoute } from './options/index.js'
import { DEFAULTS } from './options/defaults.js'
import type { Upstream } from './upstream.js'
import type { Lease } from './lease.js'
import type { LeaseWaiter } from './admission.js'
import type { TunnelLease } from './tunnel-lease.js'
import { Tunnel, upgradeOf } from './tunnel.js'
import type { Upgrade } from './tunnel.js'
import type { Target } from './target.js'
import { BadRequestError, BodyTooLargeError, UnknownUpstreamError, toUpstreamError } from './errors.js'
import type { SssonectorError } from './errors.js'
import { connectionListed, forwardHeaders, forwardedFor, stripResponseHeaders, userHeaders } from './forward.js'
import { BodyGuard, BufferedBody, ReplayBody, prefetch } from './request-body.js'
import { kDeadline, kKeepHost } from './exchange.js'
import { endTrailersOnly, grpcErrorHead, grpcStatusOf, grpcTimeout, isGrpc } from './grpc.js'
import { ClientBodyError } from './errors.js'
import { hash32 } from './balancer.js'
import { Relay, hasOnSend } from './relay.js'
import type { RelayRoute } from './relay.js'

const kLease = Symbol('sssonector.lease')
const kWaiter = Symbol('sssonector.waiter')
const kHeaders = Symbol('sssonector.headers')
const kHeld = Symbol('sssonector.held')
const kKey = Symbol('sssonector.key')
const kBody = Symbol('sssonector.body')
/** A gRPC call's end by its `grpc-timeout` (Date.now() ms), or 0 for none. */
const kGrpc = Symbol('sssonector.grpc')
const kUpstream = Symbol('sssonector.upstream')
type LeasedMessage = IncomingMessage & { [kLease]?: Lease, [kWaiter]?: RouteWaiter, [kBody]?: Readable, [kUpstream]?: Upstream, [kGrpc]?: number }
type HoldingSocket = Socket & { [kHeld]?: LeasedMessage[] }
type Headers = IncomingHttpHeaders & Record<string, string | string[] | number | undefined>

/** A placeholder for http-proxy's path checks and reply-from's URL: the lease decides the target, its Host and its origin. */
const PLACEHOLDER = 'http://upstream.sssonector.invalid'

/**
 * What reply-from carries from `rewriteRequestHeaders` to the dispatcher in
 * place of the headers object: the request's lease (none when the app called
 * `reply.from()` before the route took one), its upstream and key, and its
 * headers as the upstream will see them. reply-from copies it
 * (`Object.assign`) with its symbol keys, whatever tick it dispatches in.
 */
class Carrier {
  [kLease]: Lease | undefined
  [kHeaders]: unknown[]
  [kUpstream]: Upstream
  [kKey]: string | undefined
  /** The app's hook set Host: every attempt sends it. */
  [kKeepHost]: boolean

  constructor (lease: Lease | undefined, headers: unknown[], upstream: Upstream, key: string | undefined, keepHost: boolean) {
    this[kLease] = lease
    this[kHeaders] = headers
    this[kUpstream] = upstream
    this[kKey] = key
    this[kKeepHost] = keepHost
  }
}

/**
 * The route's dispatcher, given to reply-from: a request that comes with its
 * lease runs on it. One that comes without (a `reply.from()` the app calls in
 * the route's own preHandler, before the route's admission) takes a lease of
 * its own through its upstream's dispatcher: queue, failover and all.
 */
class RouteDispatcher extends Dispatcher {
  readonly #fallback: Upstream

  constructor (fallback: Upstream) {
    super()
    this.#fallback = fallback
  }

  override dispatch (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    // A copy of the carrier (reply-from's Object.assign), so known by its keys.
    const carrier = opts.headers as unknown as Carrier | null | undefined
    if (carrier == null || carrier[kHeaders] === undefined) return this.#fallback.dispatcher.dispatch(opts, handler)
    opts.headers = carrier[kHeaders] as string[]
    if (opts.body instanceof BufferedBody) opts.body = opts.body.buffer
    if (carrier[kKeepHost]) (opts as { [kKeepHost]?: boolean })[kKeepHost] = true
    const lease = carrier[kLease]
    if (lease !== undefined) return lease.dispatch(opts, handler)
    const key = carrier[kKey]
    if (key !== undefined) (opts as { hashKey?: string }).hashKey = key
    return carrier[kUpstream].dispatcher.dispatch(opts, handler)
  }

  // reply-from never closes a dispatcher it was given; the upstream's lifecycle is the plugin's.
  override async close (): Promise<void> {}
  override async destroy (): Promise<void> {}
}

/**
 * A destination path as the upstream receives it: as given when it is plain
 * (what nearly every request has), else as WHATWG URL parsing leaves it (dot
 * segments resolved, characters a path may not hold percent-encoded), as
 * reply-from sends it.
 */
const PLAIN_PATH = /^\/[\w\-.~!$&'()*+,;=:@/%]*$/
const DOT_SEGMENT = /\/(\.|%2e)/i

function upstreamPath (dest: string): string {
  if (PLAIN_PATH.test(dest) && !DOT_SEGMENT.test(dest)) return dest
  return new URL(dest.startsWith('//') ? '.' + dest : dest, PLACEHOLDER).pathname
}

/** Headers without `Connection` and those it names, as reply-from hands them to an app's `rewriteRequestHeaders`. */
function withoutConnection (headers: Headers): Headers {
  const connection = headers.connection
  if (connection === undefined) return headers
  delete headers.connection
  for (const name of connectionListed(connection)) delete headers[name]
  return headers
}

/** Chooses a route's upstream per request: its name, the app's function, or a weighted split (sticky by key). */
type Choose = (request: FastifyRequest) => Upstream

function chooser (route: ResolvedRoute, upstreams: ReadonlyMap<string, Upstream>): Choose {
  const { upstream: choice, sticky } = route
  const names = (): string => [...upstreams.keys()].join(', ')
  if (typeof choice === 'string') {
    const u = upstreams.get(choice)!
    return () => u
  }
  if (typeof choice === 'function') {
    return (request) => {
      const name = choice(request)
      const u = typeof name === 'string' ? upstreams.get(name) : undefined
      if (u === undefined) throw new UnknownUpstreamError(JSON.stringify(name), names())
      return u
    }
  }
  // Cumulative weights: a draw in [0, total) falls in one upstream's range.
  // A key's draw is its hash, so it stays on one upstream while the weights do,
  // and when they change only the keys in the ranges that moved change upstream.
  const split = choice.filter((c) => c.weight > 0)
  const bounds: number[] = []
  const picks: Upstream[] = []
  let total = 0
  for (const c of split) {
    total += c.weight
    bounds.push(total)
    picks.push(upstreams.get(c.name)!)
  }
  const pick = (draw: number): Upstream => {
    let i = 0
    while (draw >= bounds[i]) i++
    return picks[i]
  }
  if (sticky === undefined) return () => pick(Math.random() * total)
  return (request) => {
    const key = sticky(request)
    return pick(key === undefined ? Math.random() * total : hash32(key) % total)
  }
}

/**
 * Lets go of what a request holds: its lease, or its place in the queue;
 * then the rest of its body, streaming through its guard (after an answer
 * that came before the body ended, a 503, a failure: nobody will read it,
 * and the guard's gap timer would keep it, with its buffers, for ever).
 */
function letGo (req: LeasedMessage): void {
  const lease = req[kLease]
  if (lease !== undefined) lease.release()
  else {
    const w = req[kWaiter]
    if (w !== undefined) w.upstream.cancel(w)
  }
  const body = req[kBody]
  if (body !== undefined) {
    req[kBody] = undefined
    if (!body.readableEnded) body.destroy()
  }
}

/**
 * Releases the request's lease once its response is closed ('close' fires on
 * every path the hooks miss); a request still queued leaves the queue.
 */
function onResponseClose (this: ServerResponse): void {
  const req = this.req as LeasedMessage
  const held = (req.socket as HoldingSocket | null)?.[kHeld]
  if (held !== undefined) {
    const i = held.indexOf(req)
    if (i !== -1) held.splice(i, 1)
  }
  letGo(req)
}

/**
 * A pipelined response queued behind one that closes its connection never
 * gets 'close': the requests its socket still holds let go when it closes.
 */
function onSocketClose (this: HoldingSocket): void {
  const held = this[kHeld]
  if (held === undefined) return
  this[kHeld] = []
  for (const req of held) letGo(req)
}

/** Tracks a request on its socket until its response closes. */
function hold (req: LeasedMessage): void {
  const socket = req.socket as HoldingSocket | null
  if (socket === null) return
  let held = socket[kHeld]
  if (held === undefined) {
    held = socket[kHeld] = []
    socket.once('close', onSocketClose)
  }
  held.push(req)
}

/** What a request does once it has its lease: forwards it, or goes on to the route's handler (`done`). */
type Proceed = (scope: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void

/**
 * A path @fastify/http-proxy's check (WHATWG URL resolution, against the
 * rewrite prefix) leaves as it is: rooted, not `//`, no `%`, `\\`, `?`, `#`,
 * space or control character, and no segment that starts with a dot (`..`,
 * `.`, and `..;`, which some servers take for `..`).
 */
const SIMPLE_PATH = /^\/(?!\/)[\w\-.~!$&'()*+,;=:@/]*$/

function simplePath (path: string): boolean {
  return SIMPLE_PATH.test(path) && !path.includes('/.')
}

/**
 * Whether a destination climbs: a `..` anywhere at a segment's edge, once
 * percent-decoded (`..;/` too, which Tomcat and others resolve as `..`), or
 * one that does not decode. reply-from refuses these with 400; so does the
 * route that forwards itself.
 */
export function climbs (dest: string): boolean {
  let decoded = dest
  if (dest.includes('%')) {
    try {
      decoded = decodeURIComponent(dest)
    } catch {
      return true
    }
  }
  return decoded === '..' || decoded.includes('/..') || decoded.includes('../')
}

/**
 * The prefix a destination must stay within, as @fastify/http-proxy's handler
 * derives it (the route's rewrite prefix) and checks it (the prefix itself, or
 * under it), when a simple destination can be checked by its text; null when
 * it cannot (a prefix with parameters, or one URL parsing would change), and
 * the handler checks every request.
 */
export function destinationBoundary (scopePrefix: string, rewritePrefix: string | undefined): string | null {
  if (scopePrefix.includes(':')) return null
  const p = rewritePrefixOf(scopePrefix, rewritePrefix)
  if (p === '') return '/'
  return simplePath(p) ? p : null
}

/**
 * The destination @fastify/http-proxy's `fromParameters` makes of a request
 * path, when the path's text settles it: simple (see `simplePath`), no `//`,
 * and the route's prefix at its start. Then http-proxy's character-by-character
 * prefix match (decoding, case, duplicate slashes) ends where the prefix ends,
 * and the destination is the rewrite prefix (as http-proxy derives it, see
 * `rewritePrefixOf`) and the rest. Null for any other path: it takes
 * `fromParameters` itself.
 */
export function rewriteSimple (path: string, scopePrefix: string, rewritePrefix: string): string | null {
  if (!path.startsWith(scopePrefix) || !simplePath(path) || path.includes('//') || scopePrefix.includes('//')) return null
  const dest = rewritePrefix + path.slice(scopePrefix.length)
  // (none left: http-proxy's turns on the query string; it decides)
  return dest === '' ? null : dest
}

/** The rewrite prefix @fastify/http-proxy derives for a route (its `generateRewritePrefix`, the upstream's path being `/`). */
export function rewritePrefixOf (scopePrefix: string, rewritePrefix: string | undefined): string {
  const p = rewritePrefix !== undefined && rewritePrefix !== '' ? rewritePrefix : '/'
  return !scopePrefix.endsWith('/') && p.endsWith('/') ? p.slice(0, -1) : p
}

/** Whether a destination path passes @fastify/http-proxy's check as its text shows: simple, and the prefix itself or under it. */
export function withinBoundary (dest: string, prefix: string): boolean {
  return simplePath(dest) && dest.startsWith(prefix) &&
    (dest.length === prefix.length || prefix.charCodeAt(prefix.length - 1) === 47 || dest.charCodeAt(prefix.length) === 47)
}

/** A proxied request waiting for its lease: its own balancer context (its consistent-hash key). */
class RouteWaiter implements LeaseWaiter {
  deadline = 0
  cancelled = false
  readonly key: string | undefined
  readonly upstream: Upstream
  readonly #scope: FastifyInstance
  readonly #request: FastifyRequest
  readonly #reply: FastifyReply
  readonly #done: HookHandlerDoneFunction
  readonly #proceed: Proceed

  constructor (upstream: Upstream, scope: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction, key: string | undefined, proceed: Proceed) {
    this.upstream = upstream
    this.key = key
    this.#scope = scope
    this.#request = request
    this.#reply = reply
    this.#done = done
    this.#proceed = proceed
  }

  shouldSelectAnotherHost (_target: Target): boolean {
    return false
  }

  grant (lease: Lease): void {
    const raw = this.#request.raw as LeasedMessage
    raw[kWaiter] = undefined
    raw[kLease] = lease
    this.#proceed(this.#scope, this.#request, this.#reply, this.#done)
  }

  fail (err: Error): void {
    (this.#request.raw as LeasedMessage)[kWaiter] = undefined
    sendError(this.#reply, err as SssonectorError)
  }
}

function sendError (reply: FastifyReply, err: SssonectorError): void {
  if (reply.sent || reply.raw.destroyed) return
  if ((reply.request.raw as LeasedMessage)[kGrpc] !== undefined) {
    // A gRPC client reads a status, not an HTTP error: trailers-only, the status in the head.
    reply.hijack()
    const res = reply.raw
    if (res.headersSent) {
      res.destroy()
      return
    }
    endTrailersOnly(res, 200, grpcErrorHead(grpcStatusOf(err.category, err.statusCode ?? 500, err.code), err.message, err.code))
    return
  }
  if (err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter))
  // The rest of an unread body would be taken for the next request: the connection ends with this answer.
  if (err.statusCode === 413 || !reply.request.raw.complete) reply.header('connection', 'close')
  reply.send(err)
}

/**
 * Under Fastify's default error handler, a 503 `NO_TARGET` gets the default
 * answer without the default error line (with a stack) per request: the
 * upstream logs these itself, at most one line per interval with the count
 * (Upstream#refusedNoTarget). Any other error goes on to the default
 * handler; an app's own handler (set before the plugin) is left alone.
 */
function quietRefusals (scope: FastifyInstance): void {
  if (scope.errorHandler.name !== 'defaultErrorHandler') return
  scope.setErrorHandler(function (err: Partial<SssonectorError>, _request, reply) {
    if (err.code !== 'FST_SSSONECTOR_NO_TARGET') throw err
    const statusCode = err.statusCode ?? 503
    reply.code(statusCode).type('application/json; charset=utf-8')
    return JSON.stringify({ statusCode, code: err.code, error: STATUS_CODES[statusCode], message: err.message })
  })
}

/** Registers one proxy route on @fastify/http-proxy, wired through the upstream's pool. */
export function registerRoute (fastify: FastifyInstance, route: ResolvedRoute, upstreams: ReadonlyMap<string, Upstream>, app: { readonly closing: boolean }): void {
  const { prefix } = route
  // Fastify's request.routeOptions builds a new object on every read: take the limit once.
  const bodyLimit = route.bodyLimit ?? fastify.initialConfig.bodyLimit ?? 1024 * 1024
  const userOpts = route.proxy
  const userReply = (userOpts.replyOptions ?? {}) as Record<string, unknown>
  const userRewriteRequestHeaders = userReply.rewriteRequestHeaders as ((req: FastifyRequest, h: Headers) => Headers) | undefined
  const userRewriteHeaders = userReply.rewriteHeaders as ((h: Record<string, unknown>, r: FastifyRequest) => Record<string, unknown>) | undefined
  const userPreHandler = (userOpts.preHandler ?? userOpts.beforeHandler) as preHandlerHookHandler | undefined
  const choose = chooser(route, upstreams)
  const dispatcher = new RouteDispatcher(typeof route.upstream === 'string' ? upstreams.get(route.upstream)! : upstreams.values().next().value!)

  /** The request's key for consistent-hash balancing on its upstream. */
  function keyOf (upstream: Upstream, request: FastifyRequest): string | undefined {
    const hashKey = upstream.config.balance === 'consistent-hash' ? upstream.config.hashKey : undefined
    return hashKey === undefined ? undefined : hashKey(request)
  }

  /** Takes the request's slot (or its place in the queue); `done` once it has one. An upgrade on a WebSocket route takes a tunnel instead. */
  function acquire (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    const raw = request.raw as LeasedMessage
    const upstream = raw[kUpstream]!
    if (route.websocket) {
      const upgrade = upgradeOf(raw)
      if (upgrade !== undefined) {
        openTunnel(this, request, reply, upstream, upgrade)
        return
      }
    }
    const w = new RouteWaiter(upstream, this, request, reply, done, keyOf(upstream, request), proceed)
    raw[kWaiter] = w
    upstream.acquire(w)
  }

  /**
   * First of the route's preHandlers: chooses the request's upstream, answers
   * 413 beyond the body limit, and reads the body's start (all of a small
   * one), holding no connection meanwhile. Then, with no preHandler of the
   * route's own, takes the slot; with one, that runs first (auth, or a
   * `reply.from()` of its own), so a request it rejects takes no slot.
   */
  function prepare (scope: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction, then: typeof acquire | null): void {
    const raw = request.raw as LeasedMessage
    reply.raw.on('close', onResponseClose)
    // Pipelined behind an answer not yet written (Node gives it the socket later).
    if (reply.raw.socket === null) hold(raw)
    let upstream: Upstream
    try {
      upstream = raw[kUpstream] = choose(request)
    } catch (err) {
      reply.send(err)
      return
    }
    const header = request.headers['content-length']
    const length = header === undefined ? -1 : Number(header)
    if (length > bodyLimit) {
      sendError(reply, new BodyTooLargeError(bodyLimit) as unknown as SssonectorError)
      return
    }
    const body = request.body as Readable | undefined | null
    if (isGrpc(request.headers['content-type'])) {
      const ms = grpcTimeout(request.headers['grpc-timeout'])
      raw[kGrpc] = ms === null ? 0 : Date.now() + ms
      if (body != null && typeof body.pipe === 'function') {
        // A call streams both ways from its start (a client stream may wait for an answer before its next
        // message): nothing is read ahead, no gap limit (the call's deadline bounds it), no size limit (its
        // messages' are the client's and the server's).
        // What it passed on is kept up to `retry.bufferBody`, so that a stream the upstream never processed can go elsewhere.
        const guard = new BodyGuard(Infinity, 0, 0)
        body.on('error', (err) => { guard.destroy(new ClientBodyError(err.message, { cause: err })) })
        request.body = raw[kBody] = body.pipe(guard)
        // (reply-from, on a route that takes it, reads a stream)
        if (lean) request.body = new ReplayBody(guard, upstream.config.retry?.bufferBody ?? 0)
      }
      if (then === null) done()
      else then.call(scope, request, reply, done)
      return
    }
    if (body == null || typeof body.pipe !== 'function') {
      if (then === null) done()
      else then.call(scope, request, reply, done)
      return
    }
    const bufferBody = upstream.config.retry?.bufferBody ?? DEFAULTS.retry.bufferBody
    prefetch(body, length, bufferBody, bodyLimit, upstream.config.timeouts.clientBody, (err, prefetched) => {
      if (err !== null) {
        const e = toUpstreamError(err)
        upstream.clientError(e.category)
        sendError(reply, e)
        return
      }
      request.body = prefetched
      if (!(prefetched instanceof BufferedBody)) raw[kBody] = prefetched!
      if (then === null) done()
      else then.call(scope, request, reply, done)
    })
  }

  function admit (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    prepare(this, request, reply, done, acquire)
  }

  function prepareOnly (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    // The route's preHandler may call reply.from() itself: a bare call gets the
    // route's reply options (Host, X-Forwarded-*, errors as 502/503/504), as
    // the route's own handler passes them.
    (reply as unknown as { from: typeof routeFrom }).from = routeFrom
    prepare(this, request, reply, done, null)
  }

  function routeFrom (this: FastifyReply, source?: string, opts?: object): FastifyReply {
    const from = (Object.getPrototypeOf(this) as { from: (this: FastifyReply, source?: string, opts?: object) => FastifyReply }).from
    return from.call(this, source, opts === undefined ? replyOptions : opts)
  }

  /**
   * The headers the upstream sees, as a flat list, `host` first: its value is
   * '' (each attempt fills in its target's) unless the app's
   * `rewriteRequestHeaders` set a Host of its own, sent on every attempt; then
   * X-Forwarded-*; the app's hook has the last word. `given`: the Host of the
   * target chosen, if one is.
   */
  function headerList (request: FastifyRequest, headers: Headers, given: string | undefined): unknown[] {
    const forwarded = {
      for: forwardedFor(headers['x-forwarded-for'], request.raw.socket.remoteAddress),
      proto: request.protocol,
      host: request.host
    }
    if (userRewriteRequestHeaders === undefined) return forwardHeaders(headers, forwarded)
    // The app's hook sees (and may change) every header that goes out, Host
    // as the request's target has it (none before the pool chose one).
    headers.host = given
    if (forwarded.for !== null) headers['x-forwarded-for'] = forwarded.for
    headers['x-forwarded-proto'] = forwarded.proto
    headers['x-forwarded-host'] = forwarded.host
    const out = userRewriteRequestHeaders(request, headers)
    const list = userHeaders(out)
    // A Host of its own: every attempt sends it (as NGINX's proxy_set_header Host).
    if (out.host !== undefined && out.host !== given) list[1] = String(out.host)
    return list
  }

  function rewriteRequestHeaders (request: FastifyRequest, headers: Headers): Headers {
    const raw = request.raw as LeasedMessage
    const lease = raw[kLease]
    const upstream = raw[kUpstream]!
    const list = headerList(request, headers, lease === undefined ? undefined : lease.target.host)
    return new Carrier(lease, list, upstream, lease === undefined ? keyOf(upstream, request) : undefined, list[1] !== '') as unknown as Headers
  }

  /**
   * An upgrade on a `websocket: true` route, after the app's hooks: a tunnel
   * slot and a target (or a 503 now), then the upgrade to the target, with
   * failover before its 101 (see tunnel.ts). A path that escapes the rewrite
   * prefix gets 400, as on the HTTP path.
   */
  function openTunnel (scope: FastifyInstance, request: FastifyRequest, reply: FastifyReply, upstream: Upstream, upgrade: Upgrade): void {
    let path: string
    try {
      path = (reply as unknown as { fromParameters: (url: string, params: unknown, prefix: string) => { url: string } })
        .fromParameters(request.url, request.params, scope.prefix).url
    } catch (err) {
      reply.send(err)
      return
    }
    let lease: TunnelLease
    try {
      // Closing: no new tunnel (the open ones are closed at the end of the close's delay).
      if (app.closing) throw upstream.closedError()
      lease = upstream.tunnel(keyOf(upstream, request))
    } catch (err) {
      sendError(reply, err as SssonectorError)
      return
    }
    const headers = { ...request.headers } as Headers
    const list = headerList(request, headers, lease.target.host)
    const keepHost = list[1] !== ''
    list.push('connection', 'Upgrade')
    if (request.headers.upgrade !== undefined) list.push('upgrade', request.headers.upgrade)
    new Tunnel(upstream, lease, {
      upgrade,
      path,
      method: request.method,
      headers: list,
      keepHost,
      reply,
      fail: (err) => { sendError(reply, err) }
    }).start()
  }

  function rewriteHeaders (headers: Record<string, unknown>, request: FastifyRequest): Record<string, unknown> {
    stripResponseHeaders(headers)
    // Closing: the client takes its next request elsewhere.
    if (app.closing) headers.connection = 'close'
    return userRewriteHeaders === undefined ? headers : userRewriteHeaders(headers, request)
  }

  function onError (reply: FastifyReply, { error }: { error: Error & { cause?: unknown } }): void {
    // reply-from wraps what the dispatcher failed with; the dispatcher's error is the cause.
    sendError(reply, toUpstreamError(error.cause ?? error))
  }

  /**
   * The route's handler (in place of @fastify/http-proxy's call to
   * `reply.from()`), once http-proxy has rewritten and checked the path: the
   * request goes out on its lease and the answer comes back through a Relay,
   * with no URL, header object or stream built on the way. reply-from still
   * serves the reply options only it implements (`onResponse`, `queryString`,
   * `method`, `body`, `contentType`), a body the app parsed, and a
   * `reply.from()` the app calls itself.
   */
  const logRequests = userOpts.disableRequestLogging === false
  let relayRoute: RelayRoute | null = null
  const timeout = userReply.timeout as number | undefined
  function forward (request: FastifyRequest, reply: FastifyReply, dest: string, options: { rewriteHeaders: RelayRoute['rewriteHeaders'] }, simple?: true): unknown {
    const raw = request.raw as LeasedMessage
    const lease = raw[kLease]
    const body = request.body as (Readable & { buffer?: Buffer }) | null | undefined
    if (lease === undefined || (body != null && typeof body.pipe !== 'function')) {
      return (reply as unknown as { from: (source: string, opts: object) => unknown }).from(dest, options)
    }
    // (a simple path, from `proceed`, has no segment that starts with a dot)
    if (simple !== true && climbs(dest)) {
      sendError(reply, new BadRequestError('its path climbs out of the route (a `..` segment)') as unknown as SssonectorError)
      return undefined
    }
    if (logRequests) request.log.info({ source: dest }, 'fetching from remote server')
    const url = raw.url!
    const q = url.indexOf('?')
    const path = q === -1 ? upstreamPath(dest) : upstreamPath(dest) + url.slice(q)
    const headers = userRewriteRequestHeaders === undefined ? request.headers as Headers : withoutConnection({ ...request.headers } as Headers)
    const list = headerList(request, headers, lease.target.host)
    const opts: Dispatcher.DispatchOptions & { [kKeepHost]?: boolean } = {
      origin: lease.target.origin,
      path,
      method: raw.method as Dispatcher.HttpMethod,
      headers: list as string[],
      body: body == null ? null : body instanceof BufferedBody ? body.buffer : body
    }
    if (timeout !== undefined) {
      opts.headersTimeout = timeout
      opts.bodyTimeout = timeout
    }
    if (list[1] !== '') opts[kKeepHost] = true
    const grpcEnd = raw[kGrpc]
    if (grpcEnd !== undefined && grpcEnd !== 0) {
      // (already past it: the exchange's deadline fires at once, DEADLINE_EXCEEDED)
      (opts as { [kDeadline]?: number })[kDeadline] = Math.max(1, grpcEnd - Date.now())
    }
    relayRoute ??= {
      rewriteHeaders: options.rewriteHeaders,
      get verbatim () { return userRewriteHeaders === undefined && !app.closing },
      fail: sendError,
      logRequests
    }
    // A gRPC call goes straight to the client: onSend hooks (compression, say) would break its framing and lose its trailers.
    lease.dispatch(opts, new Relay(relayRoute, request, reply, grpcEnd !== undefined || !hasOnSend(request), grpcEnd !== undefined))
    return undefined
  }
  /**
   * Once the request has its lease, on a route the plugin forwards itself: a
   * destination whose text settles @fastify/http-proxy's check (see
   * `withinBoundary`) goes out from here, past the handler, whose check
   * parses three URLs a request; any other goes on to the handler, which
   * checks it (400 when it escapes the prefix) and forwards it the same way.
   */
  let boundary: string | null | undefined
  // http-proxy's reply options (the same object for every request: its Location rewrite wraps ours), from the first fromParameters
  let fromOptions: { rewriteHeaders: RelayRoute['rewriteHeaders'] } | undefined
  let rewriteTo: string | undefined
  const ownRewrite = typeof userOpts.preRewrite !== 'function'
  function proceed (scope: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (lean) boundary ??= destinationBoundary(scope.prefix, userOpts.rewritePrefix as string | undefined)
    if (!lean || boundary === null) {
      done()
      return
    }
    // A simple path is rewritten here as http-proxy would (no URL checks to run: withinBoundary below is stricter)
    const url = request.url
    const q = url.indexOf('?')
    let dest = fromOptions !== undefined && ownRewrite
      ? rewriteSimple(q === -1 ? url : url.slice(0, q), scope.prefix, rewriteTo ??= rewritePrefixOf(scope.prefix, userOpts.rewritePrefix as string | undefined))
      : null
    if (dest === null) {
      let target: { url: string, options: { rewriteHeaders: RelayRoute['rewriteHeaders'] } }
      try {
        target = (reply as unknown as { fromParameters: (url: string, params: unknown, prefix: string) => typeof target }).fromParameters(url, request.params, scope.prefix)
      } catch {
        // (the handler answers it)
        done()
        return
      }
      fromOptions = target.options
      const tq = target.url.indexOf('?')
      dest = tq === -1 ? target.url : target.url.slice(0, tq)
    }
    if (!withinBoundary(dest, boundary!)) {
      done()
      return
    }
    try {
      forward(request, reply, dest, fromOptions!, true)
    } catch (err) {
      // (an app's rewriteRequestHeaders that throws: answered as the handler's throw would be)
      reply.send(err)
    }
  }

  const lean = userOpts.handler === undefined && userReply.onResponse === undefined && userReply.queryString === undefined &&
    userReply.method === undefined && userReply.body === undefined && userReply.contentType === undefined

  const replyOptions = {
    ...userReply,
    rewriteRequestHeaders,
    rewriteHeaders,
    onError,
    // reply-from's own retries re-use the first upstream and leak the discarded
    // body: the pool retries instead, on another target.
    retryDelay: () => null
  }

  const proxyOptions = {
    ...userOpts,
    ...(prefix === undefined ? {} : { prefix }),
    upstream: PLACEHOLDER,
    undici: dispatcher,
    disableRequestLogging: userOpts.disableRequestLogging ?? true,
    preHandler: (userPreHandler === undefined ? admit : [prepareOnly, userPreHandler, acquire]) as preHandlerHookHandler,
    ...(lean ? { handler: forward } : {}),
    replyOptions
  } as unknown as Parameters<typeof httpProxy>[1]
  // In a scope of its own, where the refusals the upstream logs are answered without a line per request.
  fastify.register(async (scope) => {
    quietRefusals(scope)
    await scope.register(httpProxy, proxyOptions)
  })
}

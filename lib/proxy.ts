import { Transform } from 'node:stream'
import type { TransformCallback, Readable } from 'node:stream'
import type { IncomingMessage, ServerResponse, IncomingHttpHeaders } from 'node:http'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, preHandlerHookHandler } from 'fastify'
import httpProxy from '@fastify/http-proxy'
import type { ResolvedRoute } from './options/index.js'
import { kLease } from './upstream.js'
import type { Lease, Upstream } from './upstream.js'
import type { Waiter } from './queue.js'
import { BodyTooLargeError, toUpstreamError } from './errors.js'
import type { SssonectorError } from './errors.js'

const kWaiter = Symbol('sssonector.waiter')
type LeasedMessage = IncomingMessage & { [kLease]?: Lease, [kWaiter]?: ProxyWaiter }
type Headers = IncomingHttpHeaders & { [kLease]?: Lease }

// Hop-by-hop headers (RFC 9110 7.6.1 and the classic list of RFC 2616 13.5.1):
// they describe one connection, never the next. reply-from already drops
// Connection, the headers it names, and Transfer-Encoding.
const PLACEHOLDER = 'http://upstream.sssonector.invalid'
const HOP_BY_HOP_REQUEST = ['keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authorization']
const HOP_BY_HOP_RESPONSE = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authenticate']

/**
 * Releases the request's lease once its response is closed ('close' fires on
 * every path, the hooks do not); a request still queued leaves the queue.
 */
function onResponseClose (this: ServerResponse): void {
  const req = this.req as LeasedMessage
  const lease = req[kLease]
  if (lease !== undefined) {
    lease.release()
    return
  }
  const w = req[kWaiter]
  if (w !== undefined) w.upstream.cancel(w)
}

/** A proxied request waiting in its upstream's queue for a connection. */
class ProxyWaiter implements Waiter<Lease> {
  deadline: number
  cancelled = false
  key: string | undefined = undefined
  readonly upstream: Upstream
  readonly #request: FastifyRequest
  readonly #reply: FastifyReply
  readonly #done: HookHandlerDoneFunction

  constructor (upstream: Upstream, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    this.upstream = upstream
    this.deadline = upstream.queueDeadline()
    this.#request = request
    this.#reply = reply
    this.#done = done
  }

  grant (lease: Lease): void {
    const raw = this.#request.raw as LeasedMessage
    raw[kWaiter] = undefined
    start(lease, raw, this.#reply, this.#done)
  }

  fail (err: Error): void {
    (this.#request.raw as LeasedMessage)[kWaiter] = undefined
    sendError(this.#reply, err as SssonectorError)
  }
}

/** The request holds its lease: on to the handler. */
function start (lease: Lease, raw: LeasedMessage, reply: FastifyReply, done: HookHandlerDoneFunction): void {
  raw[kLease] = lease
  lease.upstream.armRequestTimeout(lease, (err) => {
    // Nothing sent yet: 504. Otherwise the response can only be cut.
    if (!reply.sent) sendError(reply, err)
    else reply.raw.destroy(err)
  })
  done()
}

/** Counts a streamed (chunked) request body and fails it past the limit. */
class BodyLimit extends Transform {
  #left: number
  readonly #limit: number

  constructor (limit: number) {
    super()
    this.#left = limit
    this.#limit = limit
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#left -= chunk.length
    if (this.#left < 0) {
      cb(new BodyTooLargeError(this.#limit))
      return
    }
    cb(null, chunk)
  }
}

function sendError (reply: FastifyReply, err: SssonectorError): void {
  if (err.retryAfter !== undefined) reply.header('retry-after', String(err.retryAfter))
  // The rest of an unread body would be taken for the next request: the connection ends with this answer.
  if (err.statusCode === 413 || !reply.request.raw.complete) reply.header('connection', 'close')
  reply.send(err)
}

/** Registers one proxy route on @fastify/http-proxy, wired through the upstream's pool. */
export function registerRoute (fastify: FastifyInstance, route: ResolvedRoute, upstream: Upstream, app: { readonly closing: boolean }): void {
  const { prefix } = route
  // Fastify's request.routeOptions builds a new object on every read: take the limit once.
  const bodyLimit = route.bodyLimit ?? fastify.initialConfig.bodyLimit ?? 1024 * 1024
  const userOpts = route.proxy
  const userReply = (userOpts.replyOptions ?? {}) as Record<string, unknown>
  const userRewriteRequestHeaders = userReply.rewriteRequestHeaders as ((req: FastifyRequest, h: Headers) => Headers) | undefined
  const userPreHandler = (userOpts.preHandler ?? userOpts.beforeHandler) as preHandlerHookHandler | undefined
  const hashKey = upstream.config.balance === 'consistent-hash' ? upstream.config.hashKey : undefined

  // Last of the route's preHandlers, so the app's own hooks (auth) run first and a
  // rejected request takes no slot.
  function admit (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    const limit = bodyLimit
    const length = request.headers['content-length']
    if (length !== undefined && Number(length) > limit) {
      sendError(reply, new BodyTooLargeError(limit) as unknown as SssonectorError)
      return
    }
    // A chunked body has no length up front: count it as it streams
    // (http-proxy's pass-through parser bypasses Fastify's bodyLimit).
    if (length === undefined && request.body != null && typeof (request.body as Readable).pipe === 'function') {
      const counter = new BodyLimit(limit)
      const source = request.body as Readable
      source.on('error', (err) => counter.destroy(err))
      request.body = source.pipe(counter)
    }
    let lease: Lease | null
    const key = hashKey === undefined ? undefined : hashKey(request)
    try {
      lease = upstream.tryAdmit(key)
    } catch (err) {
      sendError(reply, err as SssonectorError)
      return
    }
    reply.raw.on('close', onResponseClose)
    const raw = request.raw as LeasedMessage
    if (lease !== null) {
      start(lease, raw, reply, done)
      return
    }
    // Every target is at its caps: wait, bounded, for a connection.
    const w = new ProxyWaiter(upstream, request, reply, done)
    w.key = key
    const err = upstream.enqueue(w)
    if (err !== null) {
      sendError(reply, err)
      return
    }
    raw[kWaiter] = w
  }

  function rewriteRequestHeaders (request: FastifyRequest, headers: Headers): Headers {
    const lease = (request.raw as LeasedMessage)[kLease]!
    // reply-from set the placeholder's host: the target's own goes out (undici takes TLS SNI from it too).
    headers.host = lease.target.host
    // Only properties the object has are set (to undefined: undici skips them);
    // a new one would make reply-from's copy of it a slow object.
    for (let i = 0; i < HOP_BY_HOP_REQUEST.length; i++) {
      if (headers[HOP_BY_HOP_REQUEST[i]] !== undefined) headers[HOP_BY_HOP_REQUEST[i]] = undefined
    }
    const peer = request.raw.socket.remoteAddress
    const prior = headers['x-forwarded-for']
    const chain = prior === undefined ? null : Array.isArray(prior) ? prior.join(', ') : prior
    const forwardedFor = peer === undefined ? chain : chain === null ? peer : `${chain}, ${peer}`
    if (userRewriteRequestHeaders !== undefined) {
      // The app's hook sees (and may change) every header that goes out.
      if (forwardedFor !== null) headers['x-forwarded-for'] = forwardedFor
      headers['x-forwarded-proto'] = request.protocol
      headers['x-forwarded-host'] = request.host
      const out = userRewriteRequestHeaders(request, headers)
      upstream.dispatcher.handoff = lease
      return out
    }
    // The dispatcher adds these as it sends the request.
    if (prior !== undefined) headers['x-forwarded-for'] = undefined
    if (headers['x-forwarded-proto'] !== undefined) headers['x-forwarded-proto'] = undefined
    if (headers['x-forwarded-host'] !== undefined) headers['x-forwarded-host'] = undefined
    lease.forwardedFor = forwardedFor
    lease.forwardedProto = request.protocol
    lease.forwardedHost = request.host ?? null
    upstream.dispatcher.handoff = lease
    return headers
  }

  function rewriteHeaders (headers: Record<string, unknown>, request: FastifyRequest): Record<string, unknown> {
    for (let i = 0; i < HOP_BY_HOP_RESPONSE.length; i++) {
      if (headers[HOP_BY_HOP_RESPONSE[i]] !== undefined) delete headers[HOP_BY_HOP_RESPONSE[i]]
    }
    // Closing: the client takes its next request elsewhere.
    if (app.closing) headers.connection = 'close'
    const user = userReply.rewriteHeaders as ((h: Record<string, unknown>, r: FastifyRequest) => Record<string, unknown>) | undefined
    return user === undefined ? headers : user(headers, request)
  }

  function onError (reply: FastifyReply, { error }: { error: Error & { cause?: unknown } }): void {
    // reply-from wraps what the dispatcher failed with; the dispatcher's error is the cause.
    const err = toUpstreamError(error.cause ?? error)
    // A client that hung up has nobody left to answer.
    if (err.category === 'client_abort' && reply.raw.destroyed) return
    sendError(reply, err)
  }

  const replyOptions = {
    ...userReply,
    rewriteRequestHeaders,
    rewriteHeaders,
    onError,
    // reply-from's own retries re-use the first upstream and leak the discarded
    // body: the pool retries instead, on another target.
    retryDelay: () => null
  }

  fastify.register(httpProxy, {
    ...userOpts,
    prefix,
    // A placeholder for http-proxy's path checks and reply-from's URL: the lease
    // decides the target, its Host and its origin. (A getUpstream hook would
    // cost http-proxy an object spread and a closure per request.)
    upstream: PLACEHOLDER,
    undici: upstream.dispatcher,
    disableRequestLogging: userOpts.disableRequestLogging ?? true,
    preHandler: (userPreHandler === undefined ? admit : [userPreHandler, admit]) as preHandlerHookHandler,
    replyOptions
  } as unknown as Parameters<typeof httpProxy>[1])
}

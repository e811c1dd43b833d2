import { Readable } from 'node:stream'
import type { IncomingHttpHeaders, ServerResponse } from 'node:http'
import type { Dispatcher } from 'undici'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { ProtocolError, toUpstreamError } from './errors.js'
import { connectionListed, hopByHopResponse } from './forward.js'
import type { SssonectorError } from './errors.js'
import { endTrailersOnly, endWithGrpcStatus, grpcStatusOf } from './grpc.js'

type Controller = Dispatcher.DispatchController
type Headers = Record<string, unknown>

/**
 * Fastify keeps the headers an app's hooks set (`reply.header()`) and a
 * route's hooks on symbols of its own; found by their descriptions on the
 * first request. Where they are not (another Fastify), the relay takes the
 * public path: `reply.getHeaders()`, and Fastify's `reply.send()` as if the
 * route had onSend hooks.
 */
let kReplyHeaders: symbol | null | undefined
let kRouteContext: symbol | null | undefined

function symbolOf (o: object, description: string): symbol | null {
  return Object.getOwnPropertySymbols(o).find((s) => s.description === description) ?? null
}

/** The headers the app set on the reply, as Fastify holds them (not a copy). */
function replyHeaders (reply: FastifyReply): Headers {
  if (kReplyHeaders === undefined) kReplyHeaders = symbolOf(reply, 'fastify.reply.headers')
  if (kReplyHeaders === null) return reply.getHeaders() as Headers
  return (reply as unknown as Record<symbol, Headers>)[kReplyHeaders]
}

/** Whether the request's route runs onSend hooks (the app's or a plugin's): they see the answer through `reply.send()`. */
export function hasOnSend (request: FastifyRequest): boolean {
  if (kRouteContext === undefined) kRouteContext = symbolOf(request, 'fastify.context')
  if (kRouteContext === null) return true
  const context = (request as unknown as Record<symbol, { onSend?: unknown } | undefined>)[kRouteContext]
  return context === undefined || context.onSend !== null
}

/** A header value Node refuses: the characters an HTTP field value may not hold (as @fastify/http-proxy strips them). */
const INVALID_VALUE = /[^\t\x20-\x7E\x80-\xFF]/g

function sanitize (headers: Headers): void {
  for (const name in headers) {
    const value = headers[name]
    if (typeof value === 'string') headers[name] = value.replace(INVALID_VALUE, '')
    else if (Array.isArray(value)) headers[name] = value.map((v) => typeof v === 'string' ? v.replace(INVALID_VALUE, '') : v)
  }
}

/** What a relay needs of its route: the answer's headers as the client sees them, and how a failure is answered. */
export interface RelayRoute {
  /** Rewrites the upstream's headers in place or returns new ones (hop-by-hop rules, Location, the app's hook). */
  rewriteHeaders: (headers: Headers, request: FastifyRequest) => Headers
  /**
   * Whether an answer with no `Location` may go out with the upstream's headers
   * as they came, its hop-by-hop ones left out: `rewriteHeaders` would change
   * nothing else (no hook of the app's, the app not closing).
   */
  readonly verbatim: boolean
  /** Answers a failure that came before the answer's head (502/503/504 with its code). */
  fail: (reply: FastifyReply, err: SssonectorError) => void
  /** Logs what reply-from logs when a route turns request logging on. */
  logRequests: boolean
}

function onDrain (this: ServerResponse & { [kResume]?: Controller | null }): void {
  const controller = this[kResume]
  if (controller != null) {
    this[kResume] = null
    controller.resume()
  }
}

const kResume = Symbol('sssonector.resume')

/** Trailer fields as the client gets them, hop-by-hop and pseudo ones left out; null when none is left. */
export function forwardedTrailers (trailers: IncomingHttpHeaders): Record<string, string | string[]> | null {
  let out: Record<string, string | string[]> | null = null
  for (const name in trailers) {
    const value = trailers[name]
    if (value === undefined || name.charCodeAt(0) === 58 || hopByHopResponse(name, [])) continue
    out ??= {}
    out[name] = value
  }
  return out
}

function push (list: string[], name: string, value: unknown): void {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) list.push(name, String(value[i]))
  } else list.push(name, String(value))
}

/**
 * The body of an answer for routes with onSend hooks: Fastify pipes it to the
 * client; the upstream is paused while it is full, and resumed when read.
 */
class AnswerBody extends Readable {
  controller: Controller | null = null

  override _read (): void {
    this.controller?.resume()
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    const controller = this.controller
    this.controller = null
    // The client went away (Fastify destroys the payload): the lease's release aborts the exchange.
    if (err !== null && controller !== null && !controller.aborted) controller.abort(err)
    callback(err)
  }
}

/**
 * The upstream's answer to one proxied request, written to the client as it
 * comes (undici's current handler API, under the request's exchange): the head
 * once the exchange passes it on (failover is over by then), the body chunk
 * by chunk with backpressure (a full client socket pauses the upstream's), the
 * end. A failure before the head is answered through Fastify (the app's error
 * handler, a JSON body with its code); after it, the client's connection is
 * cut, as the head promised more. With no onSend hook on the route, the head
 * and the body go to the response directly (the reply hijacked once the head
 * is out; onResponse and the request log still run on its finish); with
 * onSend hooks, through `reply.send()` of a stream, where they see it.
 */
export class Relay implements Dispatcher.DispatchHandler {
  readonly #route: RelayRoute
  readonly #request: FastifyRequest
  readonly #reply: FastifyReply
  readonly #direct: boolean
  /** A gRPC call: a failure after the head ends it with a gRPC status in trailers. */
  readonly #grpc: boolean
  #body: AnswerBody | null = null
  #started = false
  /** A gRPC trailers-only head, held for the end. */
  #trailersOnly: Headers | null = null
  #trailersOnlyStatus = 200

  constructor (route: RelayRoute, request: FastifyRequest, reply: FastifyReply, direct: boolean, grpc = false) {
    this.#route = route
    this.#request = request
    this.#reply = reply
    this.#direct = direct
    this.#grpc = grpc
  }

  onRequestStart (): void {}

  onResponseStart (controller: Controller, statusCode: number, upstreamHeaders: IncomingHttpHeaders): void {
    if (statusCode < 200) return
    const reply = this.#reply
    const request = this.#request
    if (statusCode > 599) {
      // Fastify and Node answer no such status: the upstream's answer is malformed.
      controller.abort(new ProtocolError(`status ${statusCode}`))
      return
    }
    // The client went away, or something else answered it meanwhile (Fastify's handler timeout, say).
    if (reply.raw.destroyed || request.raw.aborted || reply.raw.headersSent) {
      controller.abort(new Error('the client went away'))
      return
    }
    if (this.#route.logRequests) request.log.info('response received')
    if (this.#grpc && upstreamHeaders['grpc-status'] !== undefined) {
      // gRPC's trailers-only answer (the status in the head): it goes out as it came, head and end in one frame.
      this.#started = true
      this.#trailersOnly = this.#route.rewriteHeaders(upstreamHeaders as Headers, request)
      this.#trailersOnlyStatus = statusCode
      reply.hijack()
      return
    }
    // An HTTP/1.1 connection whose request body was not read cannot carry another request (an HTTP/2 stream ends alone).
    const close = request.raw.httpVersionMajor < 2 && !request.raw.complete
    this.#started = true
    if (this.#direct && this.#route.verbatim && upstreamHeaders.location === undefined) {
      try {
        reply.raw.writeHead(statusCode, this.#verbatim(statusCode, upstreamHeaders as Headers, close))
        reply.hijack()
        return
      } catch {
        // A value Node refuses (one the app set): the general path below cleans it.
      }
    }
    let headers = this.#route.rewriteHeaders(upstreamHeaders as Headers, request)
    if (close) headers.connection = 'close'
    // No content on a 204 (RFC 9110 8.6), as Fastify answers it.
    if (statusCode === 204) {
      delete headers['content-length']
      delete headers['content-type']
    }
    if (!this.#direct) {
      reply.code(statusCode)
      reply.headers(headers as Record<string, string | number | string[] | undefined>)
      const body = this.#body = new AnswerBody()
      body.controller = controller
      reply.send(body)
      return
    }
    const res = reply.raw
    try {
      res.writeHead(statusCode, this.#list(headers))
    } catch {
      // A value Node refuses (a control character an app's hook put in): dropped, as @fastify/http-proxy drops it.
      headers = { ...headers }
      sanitize(headers)
      res.writeHead(statusCode, this.#list(headers))
    }
    reply.hijack()
  }

  /**
   * The head's fields as a flat list, the upstream's headers as they came but
   * the hop-by-hop ones (and, on a 204, Content-Length and Content-Type); the
   * app's own first, where the upstream sends none of the same name.
   */
  #verbatim (statusCode: number, headers: Headers, close: boolean): string[] {
    const list: string[] = []
    const listed = connectionListed(headers.connection)
    const own = replyHeaders(this.#reply)
    for (const name in own) {
      const value = own[name]
      if (value === undefined || (close && name === 'connection')) continue
      if (name !== 'set-cookie' && headers[name] !== undefined && !hopByHopResponse(name, listed)) continue
      push(list, name, value)
    }
    for (const name in headers) {
      const value = headers[name]
      if (value === undefined || hopByHopResponse(name, listed)) continue
      if (statusCode === 204 && (name === 'content-length' || name === 'content-type')) continue
      push(list, name, value)
    }
    if (close) list.push('connection', 'close')
    return list
  }

  /** The head's fields as a flat list: the app's own, then the upstream's (the upstream's win, Set-Cookie adds up: as Fastify's `reply.header()`). */
  #list (headers: Headers): string[] {
    const list: string[] = []
    const own = replyHeaders(this.#reply)
    for (const name in own) {
      const value = own[name]
      if (value === undefined || (name !== 'set-cookie' && headers[name] !== undefined)) continue
      push(list, name, value)
    }
    for (const name in headers) {
      const value = headers[name]
      if (value !== undefined) push(list, name, value)
    }
    return list
  }

  onResponseData (controller: Controller, chunk: Buffer): void {
    const body = this.#body
    if (body !== null) {
      if (!body.push(chunk)) controller.pause()
      return
    }
    const res = this.#reply.raw as ServerResponse & { [kResume]?: Controller | null }
    const head = this.#trailersOnly
    if (head !== null) {
      // Not trailers-only after all: the head goes out first.
      this.#trailersOnly = null
      res.writeHead(this.#trailersOnlyStatus, this.#list(head))
    }
    if (!res.write(chunk)) {
      controller.pause()
      if (res[kResume] === undefined) res.on('drain', onDrain)
      res[kResume] = controller
    }
  }

  onResponseEnd (_controller: Controller, trailers?: IncomingHttpHeaders): void {
    const body = this.#body
    if (body !== null) {
      body.controller = null
      body.push(null)
      return
    }
    const res = this.#reply.raw
    const head = this.#trailersOnly
    if (head !== null) {
      this.#trailersOnly = null
      endTrailersOnly(res as ServerResponse, this.#trailersOnlyStatus, head as Record<string, string | string[] | number>)
      return
    }
    // The upstream's trailers (gRPC's status): HTTP/2 carries them; HTTP/1.1 in a chunked answer.
    if (trailers !== undefined) {
      const out = forwardedTrailers(trailers)
      if (out !== null) res.addTrailers(out)
    }
    res.end()
  }

  onResponseError (_controller: Controller | undefined, err: Error): void {
    const body = this.#body
    if (body !== null) {
      body.controller = null
      body.destroy(err)
      return
    }
    if (this.#started) {
      if (this.#grpc) {
        // A gRPC client reads the call's end from its trailers: the gateway's status, not a reset it cannot tell apart.
        const e = toUpstreamError(err)
        endWithGrpcStatus(this.#reply.raw as ServerResponse, grpcStatusOf(e.category, e.statusCode, e.code), e.message)
        return
      }
      // The head promised a body that will not come whole: the client's connection ends.
      this.#reply.raw.destroy()
      return
    }
    this.#route.fail(this.#reply, toUpstreamError(err))
  }
}

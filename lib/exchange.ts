import { errors } from 'undici'
import type { Dispatcher } from 'undici'
import type { IncomingHttpHeaders } from 'node:http'
import type { ErrorCategory } from '../types/index.js'
import type { ResolvedUpstream } from './options/index.js'
import type { Target } from './target.js'
import type { Connection } from './connection-pool.js'
import type { Ticket } from './down-state.js'
import type { PickContext } from './balancer.js'
import type { Hedging, LineEntry } from './hedge-policy.js'
import { keyedRequest, retryAfterError, retryAfterStatus } from './retry-policy.js'
import { retryAfterMs } from './peak-ewma.js'
import type { RetryBudget, RetryVerdict } from './retry-policy.js'
import { fullJitter } from './backoff.js'
import {
  ClientBodyError, DeadlineError, NoTargetError, RequestTimeoutError, UpstreamStatusError, faultOf, toUpstreamError
} from './errors.js'
import type { SssonectorError } from './errors.js'

/**
 * Set on a request's options when its Host is the caller's to keep (a proxy
 * route's `rewriteRequestHeaders` set one): every attempt sends it, not its
 * target's.
 */
export const kKeepHost = Symbol('sssonector.keepHost')

/** Set on a request's options: ms the whole exchange may take (a gRPC call's `grpc-timeout`), under `timeouts.request` when that is shorter. */
export const kDeadline = Symbol('sssonector.deadline')

/**
 * undici times a response's headers on a coarse clock (a tick of about half a
 * second: a 100 ms timeout fires after 500 ms to a second). A headers timeout
 * under this is timed by the attempt itself, to the millisecond; longer ones
 * are left to undici, a second late at most.
 */
export const PRECISE_HEADERS_BELOW = 10_000

function onHeadersTimeout (attempt: Attempt): void {
  attempt.headersTimer = null
  const err = new errors.HeadersTimeoutError()
  if (attempt.controller === null) attempt.timedOut = err
  else attempt.controller.abort(err)
}

/** The attempt has its answer's headers, or ended without: its wait no longer bounds its target's estimate. */
function answered (attempt: Attempt): void {
  if (attempt.waitingSince < 0) return
  attempt.target.score.answered(attempt.waitingSince)
  attempt.waitingSince = -1
}

/** The hedge delay is over (see Exchange#sendHedge). */
function onHedgeDelay (exchange: Exchange): void {
  exchange.sendHedge()
}

type Handler = Dispatcher.DispatchHandler
type Controller = Dispatcher.DispatchController
type Options = Dispatcher.DispatchOptions & { origin: string | URL }

/** A target chosen for an attempt: the connection taken on it and the ticket its result takes back. */
export interface Slot {
  target: Target
  conn: Connection
  ticket: Ticket
}

/** What an exchange needs from its upstream (the upstream implements it; nothing here knows the upstream). */
export interface ExchangeHost {
  readonly name: string
  readonly config: ResolvedUpstream
  readonly budget: RetryBudget
  /** Hedged requests, null when off. */
  readonly hedge: Hedging | null
  /** Requests active now, against which the retry budget is measured. */
  readonly active: number
  now: () => number
  /** A monotonic clock in ms with sub-millisecond resolution: attempts' durations. */
  clock: () => number
  random: () => number
  /**
   * A target for the next attempt, chosen by the balancer with this request's
   * context, and a connection on it (`fresh`: a new one, when that target is the
   * one whose connection just broke); null when none can take it now.
   */
  take: (context: PickContext<Target>, broken: Target | null) => Slot | null
  /** Whether any target is in rotation. */
  anyInRotation: () => boolean
  /** Whether any target is not leaving, other than those given (a retry after a backoff might find it back, or take its trial). */
  anyTarget: (except: readonly Target[] | null) => boolean
  /** Whether some target fits this context now, asked of each target (no balancer state moves). */
  fits: (context: PickContext<Target>) => boolean
  /** Logs a failed attempt (debug for a client's fault, info when retried, warn when it was the last). */
  attemptFailed: (target: Target, category: ErrorCategory, attempt: number, retried: boolean) => void
  /** Logs a retry that could not happen. */
  retryGivenUp: (target: Target, category: ErrorCategory, attempt: number, why: string) => void
  /** Counts a retry, by the category of the attempt retried. */
  retried: (category: ErrorCategory) => void
}

/** What one attempt came to, kept on the lease once a request takes more than one. */
export interface AttemptOutcome {
  target: string
  /** The status of the answer, 0 when there was none. */
  status: number
  category: ErrorCategory | null
  /** Milliseconds. */
  latency: number
  retried: boolean
}

/** Where an exchange keeps its record and tells its end: the lease. */
export interface ExchangeRecord {
  /** Status or failure and latency (ms) of the last attempt, for metrics and logs. */
  status: number
  category: ErrorCategory | null
  latency: number
  attempts: number
  history: AttemptOutcome[] | null
  /** The exchange ended (answer complete, or failed). */
  ended: () => void
}

/** A retriable answer's body up to this size is kept while a retry is tried, and passed on if none can be; a larger one is cut. */
const KEEP_LIMIT = 64 * 1024
/**
 * A counted retry that finds the budget spent waits for room this many times
 * at most, backing off from `retry.baseDelay`, doubling, to `retry.maxDelay`
 * (about 0.9 s in all with the defaults, 1.6 s at most): a burst, such as a
 * target resetting a third of the requests while the rest is slow, is spread
 * out over the time the retries in flight take; a storm is still refused.
 */
const BUDGET_WAITS = 8
/** A retry that finds no target looks again after a backoff this many times at most (see Exchange#seek). */
const TARGET_WAITS = 4

/** A retriable answer kept while its retry is tried: passed on as it was if the retry cannot happen. */
interface KeptAnswer {
  status: number
  statusText: string
  rawHeaders: Buffer[]
  headers: IncomingHttpHeaders
  chunks: Buffer[]
  rawTrailers: Buffer[] | null
  trailers: IncomingHttpHeaders
}

type Body = Dispatcher.DispatchOptions['body']

/**
 * A request body that streams and can still be sent again (request-body.ts
 * ReplayBody): each attempt reads a view of its own; it reads as a stream
 * nothing has read (`readableDidRead` false) while all of it is kept.
 */
interface ReplayableBody {
  view: () => NodeJS.ReadableStream
}

function replayableBody (body: unknown): ReplayableBody | null {
  return body != null && typeof (body as Partial<ReplayableBody>).view === 'function' ? body as ReplayableBody : null
}
type BodyStream = { readableDidRead?: boolean, destroyed?: boolean, errored?: unknown, readableEnded?: boolean, pipe?: unknown }

/** Whether a request body can be sent again: none, a buffer, or a stream nothing has read yet. */
function replayable (body: Body): boolean {
  if (body == null || typeof body === 'string' || body instanceof Uint8Array) return true
  const r = body as BodyStream
  return r.readableDidRead === false && r.destroyed !== true
}

/** Whether the request body, a stream, has not come in whole. */
function unfinished (body: Body): boolean {
  if (body == null || typeof body === 'string' || body instanceof Uint8Array) return false
  const r = body as BodyStream
  return typeof r.pipe === 'function' && r.readableEnded !== true
}

/** The failure of the request body's own stream (the client's), or null. */
function bodyFailure (body: Body): unknown {
  if (body == null || typeof body === 'string' || body instanceof Uint8Array) return null
  return (body as BodyStream).errored ?? null
}

/** Sets the Host of an attempt's target in the request headers (a flat list from the route has it first). */
function setHost (opts: Options, host: string): void {
  const headers = opts.headers as unknown
  if (Array.isArray(headers)) {
    if (headers[0] === 'host') headers[1] = host
    else opts.headers = ['host', host, ...withoutHost(headers)] as unknown as string[]
  } else if (headers != null) {
    (headers as Record<string, unknown>).host = host
  } else {
    opts.headers = { host }
  }
}

function withoutHost (list: unknown[]): unknown[] {
  const out: unknown[] = []
  for (let i = 0; i < list.length; i += 2) {
    if (String(list[i]).toLowerCase() !== 'host') out.push(list[i], list[i + 1])
  }
  return out
}

/**
 * The resume callback the deprecated handler API hands on. Bound to the
 * attempt's controller alone: a closure over the attempt would keep the whole
 * request (exchange, lease, headers) reachable from the response stream that
 * holds it, long enough for V8 to promote every request to the old generation.
 */
function resumeOf (controller: Controller): () => void {
  return controller.resume.bind(controller)
}

/** One attempt on one target: undici's current handler API, forwarding to its exchange. */
class Attempt implements Handler {
  readonly exchange: Exchange
  readonly target: Target
  readonly conn: Connection
  readonly ticket: Ticket
  /** On the host's monotonic clock. */
  readonly startedAt: number
  controller: Controller | null = null
  status = 0
  /** When undici wrote it on a connected socket (the host's clock); -1 before. */
  sentAt = -1
  /** Milliseconds from then to its answer's headers (connecting is not the answer's time); -1 before they came. */
  headers = -1
  /** While it waits for its answer: when it began, on the host's `now` (its target's estimate reads its age, see PeakEwma#sent); -1 after. */
  waitingSince = -1
  /** Milliseconds its answer's `Retry-After` asked for (a 429 or 5xx), 0 when none. */
  retryAfter = 0
  /** Body bytes of the answer passed on. */
  bytes = 0
  /** A retriable answer being read and dropped (kept when it fits), or cut. */
  discarding = false
  kept: KeptAnswer | null = null
  /** The error this attempt was cut with, to tell it from any other. */
  cut: Error | null = null
  /** Its answer has no body (204, 304, an answer to HEAD): complete with its headers. */
  bodyless = false
  /** Its own headers timer (see PRECISE_HEADERS_BELOW), and the error it fired with before undici started the request. */
  headersTimer: NodeJS.Timeout | null = null
  timedOut: Error | null = null
  /** A hedge: the second attempt, sent while the first still ran. */
  readonly hedge: boolean

  constructor (exchange: Exchange, slot: Slot, now: number, hedge: boolean) {
    this.exchange = exchange
    this.target = slot.target
    this.conn = slot.conn
    this.ticket = slot.ticket
    this.startedAt = now
    this.hedge = hedge
  }

  /** Ends it from outside: aborted through its controller, or as soon as undici starts it. */
  cancel (reason: Error): void {
    this.#stopHeadersTimer()
    if (this.controller === null) this.timedOut = reason
    else this.controller.abort(reason)
  }

  /** Times the answer's headers itself, to the millisecond. */
  timeHeaders (ms: number): void {
    this.headersTimer = setTimeout(onHeadersTimeout, ms, this)
  }

  #stopHeadersTimer (): void {
    if (this.headersTimer !== null) {
      clearTimeout(this.headersTimer)
      this.headersTimer = null
    }
  }

  onRequestStart (controller: Controller): void {
    this.controller = controller
    if (this.timedOut !== null) {
      controller.abort(this.timedOut)
      return
    }
    this.exchange.onAttemptStart(this, controller)
  }

  onResponseStart (controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    this.controller = controller
    if (statusCode >= 200) this.#stopHeadersTimer()
    this.exchange.onAttemptHeaders(this, controller, statusCode, headers, statusMessage ?? '')
  }

  onResponseData (controller: Controller, chunk: Buffer): void {
    this.exchange.onAttemptData(this, controller, chunk)
  }

  onResponseEnd (controller: Controller, trailers: IncomingHttpHeaders): void {
    this.exchange.onAttemptEnd(this, controller, trailers)
  }

  onResponseError (_controller: Controller | undefined, err: Error): void {
    this.#stopHeadersTimer()
    this.exchange.onAttemptError(this, err)
  }
}

/** The controller a caller on undici's current handler API holds for the whole exchange: it follows the attempt passed on. */
class ExchangeController implements Controller {
  readonly #exchange: Exchange
  #paused = false
  target: Controller | null = null

  constructor (exchange: Exchange) {
    this.#exchange = exchange
  }

  get aborted (): boolean { return this.#exchange.abortReason !== null }
  get paused (): boolean { return this.#paused }
  get reason (): Error | null { return this.#exchange.abortReason }
  get rawHeaders (): Buffer[] | null { return (this.target?.rawHeaders as Buffer[] | undefined) ?? null }
  get rawTrailers (): Buffer[] | null { return (this.target?.rawTrailers as Buffer[] | undefined) ?? null }
  abort (reason: Error): void { this.#exchange.abort(reason) }
  pause (): void {
    this.#paused = true
    this.target?.pause()
  }

  resume (): void {
    this.#paused = false
    this.target?.resume()
  }
}

/**
 * One request through the upstream, over one or more attempts: each attempt
 * runs on a connection of its target; while nothing of the answer has gone to
 * the caller, a failed attempt moves to another target (failover), as the
 * pure retry decision (retry-policy.ts), the retry budget and the targets in
 * rotation allow. Each attempt's result goes once into its target. The caller's
 * handler may speak undici's current or deprecated handler API.
 */
export class Exchange implements PickContext<Target> {
  readonly #host: ExchangeHost
  readonly #record: ExchangeRecord
  readonly #opts: Options
  readonly #inner: Handler
  readonly #current: boolean
  #controller: ExchangeController | null = null
  #attempt: Attempt | null = null
  /** A hedge in flight beside `#attempt`, racing it to the first answer. */
  #hedge: Attempt | null = null
  #hedgeTimer: NodeJS.Timeout | null = null
  /** Its hedge's place in line for room in the budget (counted `denied` if the request ends first). */
  #inLine: LineEntry | null = null
  #tried: Target[] | null = null
  /** After a backoff, a target already tried may be taken again. */
  #allowTried = false
  /** The retry may only go to a target not tried yet (after a malformed answer). */
  #elsewhere = false
  #last: SssonectorError | null = null
  #kept: KeptAnswer | null = null
  /** The answer's headers went to the caller: no retry from here on. */
  #started = false
  #aborted: Error | null = null
  #wait: NodeJS.Timeout | null = null
  #deadline: NodeJS.Timeout | null = null
  /** Waits for room in the retry budget so far (see BUDGET_WAITS). */
  #budgetWaits = 0
  /** The target of the attempt in flight, or of the last one. */
  #lastTried: Target | null = null
  /** The attempt in flight is a counted retry (it holds room in the budget). */
  #counted = false
  #done = false
  readonly key: string | undefined
  /** The caller's Host is kept on every attempt (kKeepHost). */
  readonly #keepHost: boolean
  /** The caller's own timeouts when it gave them (reply-from's per-route `timeout`, undici's per-request options), else the upstream's. */
  readonly #headersTimeout: number
  readonly #bodyTimeout: number
  /** The request body when each attempt reads a view of it (see ReplayableBody), else null. */
  readonly #replayBody: ReplayableBody | null

  /** The request body as the caller gave it. */
  get #body (): Body {
    return (this.#replayBody ?? this.#opts.body) as Body
  }

  constructor (host: ExchangeHost, record: ExchangeRecord, opts: Dispatcher.DispatchOptions, inner: Handler, key: string | undefined) {
    this.#host = host
    this.#record = record
    this.#opts = opts as Options
    this.#inner = inner
    this.#current = typeof inner.onRequestStart === 'function'
    this.key = key
    this.#keepHost = (opts as { [kKeepHost]?: boolean })[kKeepHost] === true
    this.#replayBody = replayableBody(opts.body)
    this.#headersTimeout = typeof opts.headersTimeout === 'number' ? opts.headersTimeout : host.config.timeouts.headers
    this.#bodyTimeout = typeof opts.bodyTimeout === 'number' ? opts.bodyTimeout : host.config.timeouts.body
  }

  /** The balancer's context for a retry: targets this request tried are avoided until a backoff allows them again. */
  shouldSelectAnotherHost (target: Target): boolean {
    return !this.#allowTried && this.#tried !== null && this.#tried.includes(target)
  }

  get done (): boolean {
    return this.#done
  }

  get abortReason (): Error | null {
    return this.#aborted
  }

  /** Starts the first attempt, on the slot taken at admission; arms `timeouts.request`. */
  start (slot: Slot): void {
    const configured = this.#host.config.timeouts.request
    const given = (this.#opts as { [kDeadline]?: number })[kDeadline]
    const ms = given === undefined ? configured : configured === 0 ? Math.max(1, given) : Math.max(1, Math.min(configured, given))
    // The caller's own deadline, shorter than the upstream's: its end is the caller's, not the target's failure.
    const own = given !== undefined && ms !== configured
    if (ms !== 0) {
      this.#deadline = setTimeout(() => {
        this.#deadline = null
        this.abort(own ? new DeadlineError(`${ms} ms`) as Error : new RequestTimeoutError(`${ms} ms`))
      }, ms)
      this.#deadline.unref()
    }
    if (this.#current) {
      this.#controller = new ExchangeController(this)
      this.#inner.onRequestStart!(this.#controller, undefined)
    } else {
      const abort = (reason?: Error): void => { this.abort(reason ?? new Error('aborted')) };
      (this.#inner.onConnect as ((abort: (err?: Error) => void, context?: unknown) => void) | undefined)?.(abort, undefined)
    }
    this.#lastTried = slot.target
    if (this.#aborted !== null) {
      this.failBefore(slot, this.#aborted)
      return
    }
    this.#run(slot, false)
    const hedging = this.#host.hedge
    if (hedging !== null) this.#armHedge(hedging, slot.target)
  }

  /** Fails the exchange before its first attempt (its request body could not be read). */
  failBefore (slot: Slot, err: unknown): void {
    slot.target.putConnection(slot.conn, true)
    slot.target.abandon(slot.ticket)
    this.#fail(toUpstreamError(err))
  }

  #run (slot: Slot, hedge: boolean): void {
    const host = this.#host
    const o = this.#opts
    // The target decides the origin and the Host, whatever the caller's URL said (a Host of the route's own aside).
    o.origin = slot.target.origin
    if (!this.#keepHost) setHost(o, slot.target.host)
    // undici takes the TLS name from the Host header unless told: the target's name, whatever Host goes out.
    if (slot.target.servername !== undefined) (o as { servername?: string }).servername = slot.target.servername
    const headersTimeout = this.#headersTimeout
    o.headersTimeout = headersTimeout
    o.bodyTimeout = this.#bodyTimeout
    if (this.#replayBody !== null) o.body = this.#replayBody.view() as unknown as Body
    const attempt = new Attempt(this, slot, host.clock(), hedge)
    if (hedge) this.#hedge = attempt
    else this.#attempt = attempt
    this.#record.attempts++
    slot.target.attemptStarted()
    attempt.waitingSince = host.now()
    slot.target.score.sent(attempt.waitingSince)
    if (headersTimeout > 0 && headersTimeout < PRECISE_HEADERS_BELOW) attempt.timeHeaders(headersTimeout)
    slot.conn.client.dispatch(o, attempt)
  }

  onAttemptStart (attempt: Attempt, controller: Controller): void {
    if (attempt !== this.#attempt) return
    attempt.sentAt = this.#host.clock()
    if (this.#controller !== null) this.#controller.target = controller
    if (this.#aborted !== null) controller.abort(this.#aborted)
  }

  onAttemptHeaders (attempt: Attempt, controller: Controller, status: number, headers: IncomingHttpHeaders, statusText: string): void {
    if (status >= 200) answered(attempt)
    if (this.#hedge !== null && this.#race(attempt, controller, status)) return
    if (attempt !== this.#attempt || this.#done) return
    // 1xx (103 Early Hints): not passed on; the final answer follows.
    if (status < 200) return
    attempt.status = status
    attempt.headers = this.#host.clock() - (attempt.sentAt < 0 ? attempt.startedAt : attempt.sentAt)
    if ((status >= 500 || status === 429) && headers['retry-after'] !== undefined) attempt.retryAfter = retryAfterMs(headers['retry-after'], this.#host.now())
    if (status >= 500 && this.#retriesStatus(status)) {
      const length = Number(headers['content-length'] ?? -1)
      if (length >= 0 && length <= KEEP_LIMIT) {
        attempt.discarding = true
        attempt.kept = { status, statusText, rawHeaders: (controller.rawHeaders ?? []) as Buffer[], headers, chunks: [], rawTrailers: null, trailers: {} }
        return
      }
      // Too large (or of unknown length) to keep: cut it, only when an untried target can take the retry at once, within the budget.
      if (this.#host.budget.allows(this.#host.active) && this.#untriedAvailable(attempt.target)) {
        attempt.discarding = true
        attempt.cut = new UpstreamStatusError(status)
        controller.abort(attempt.cut)
        return
      }
    }
    this.#started = true
    this.#record.status = status
    if (attempt.hedge) this.#host.hedge!.won++
    if (this.#controller !== null) {
      this.#controller.target = controller
      this.#inner.onResponseStart?.(this.#controller, status, headers, statusText)
    } else if (this.#inner.onHeaders?.(status, (controller.rawHeaders ?? []) as Buffer[], resumeOf(controller), statusText) === false) {
      controller.pause()
    }
    // A 204, a 304 or an answer to HEAD is complete with its headers, whatever
    // Content-Length says (RFC 9110 8.6): the caller hears so now; the attempt
    // settles when undici is done with its connection (it reads a mismatch there).
    if (status === 204 || status === 304 || this.#opts.method === 'HEAD') {
      attempt.bodyless = true
      this.#complete(null, {})
    }
  }

  onAttemptData (attempt: Attempt, controller: Controller, chunk: Buffer): void {
    if (attempt !== this.#attempt || this.#done) return
    if (attempt.discarding) {
      attempt.kept?.chunks.push(chunk)
      return
    }
    attempt.bytes += chunk.length
    if (this.#controller !== null) {
      this.#inner.onResponseData?.(this.#controller, chunk)
      return
    }
    if (this.#inner.onData?.(chunk) === false) controller.pause()
  }

  onAttemptEnd (attempt: Attempt, controller: Controller, trailers: IncomingHttpHeaders): void {
    if (attempt.bodyless && attempt === this.#attempt) {
      this.#endAttempt(attempt, true, null, false)
      return
    }
    if (attempt !== this.#attempt || this.#done) return
    if (attempt.discarding) {
      const kept = attempt.kept!
      kept.rawTrailers = (controller.rawTrailers ?? null) as Buffer[] | null
      kept.trailers = trailers
      this.#kept = kept
      this.#last = new UpstreamStatusError(attempt.status) as unknown as SssonectorError
      this.#endAttempt(attempt, true, 'http_5xx', true)
      this.#retry('http_5xx', 'counted')
      return
    }
    this.#endAttempt(attempt, true, null, false)
    this.#complete((controller.rawTrailers ?? null) as Buffer[] | null, trailers)
  }

  onAttemptError (attempt: Attempt, err: Error): void {
    if (this.#hedge !== null && this.#raceFailed(attempt, err)) return
    if (attempt.bodyless && attempt === this.#attempt) {
      // Its answer was complete; undici closed the connection after it (a Content-Length it could not match, say).
      this.#endAttempt(attempt, false, null, false)
      return
    }
    if (attempt !== this.#attempt || this.#done) return
    if (attempt.cut !== null && err === attempt.cut) {
      this.#last = err as unknown as SssonectorError
      this.#endAttempt(attempt, false, 'http_5xx', true)
      this.#retry('http_5xx', 'counted')
      return
    }
    const e = this.#failure(err)
    const category = e.category
    const verdict = this.#started || this.#aborted !== null || faultOf(category) !== 'target' ? 'no' : retryAfterError(this.#host.config.retry, category, this.#facts())
    this.#endAttempt(attempt, false, category, verdict !== 'no')
    this.#last = e
    if (verdict !== 'no') {
      this.#retry(category, verdict)
      return
    }
    this.#fail(e)
  }

  /**
   * Whose fault an attempt's error was: the client's when its request body
   * broke (malformed, abandoned, too slow) or when it left; the target's
   * otherwise, as undici tells.
   */
  #failure (err: Error): SssonectorError {
    const body = this.#body
    const broken = bodyFailure(body)
    if (broken !== null) {
      const b = toUpstreamError(broken)
      return faultOf(b.category) === 'client' ? b : new ClientBodyError(String((broken as Error).message ?? broken), { cause: broken }) as unknown as SssonectorError
    }
    const e = toUpstreamError(this.#aborted ?? err)
    // The whole exchange ran out of time while the client was still sending: not the target's.
    if (e.category === 'request_timeout' && unfinished(body)) {
      const c = new ClientBodyError(`request body still arriving after ${e.message}`, { cause: e }) as unknown as SssonectorError
      c.category = 'client_timeout'
      c.statusCode = 408
      return c
    }
    return e
  }

  #facts (): { method: string, keyed: boolean, replayable: boolean, attempts: number, maxRetries: number } {
    const opts = this.#opts
    return { method: opts.method, keyed: keyedRequest(this.#host.config.retry, opts.method, opts.headers), replayable: replayable(this.#body), attempts: this.#record.attempts, maxRetries: this.#host.config.pool.maxRetries }
  }

  /** Whether an answer with this status is set aside for a retry: by policy, with a target to go to (the budget is asked when the retry starts; a kept answer waits for it). */
  #retriesStatus (status: number): boolean {
    if (this.#started || this.#aborted !== null) return false
    const host = this.#host
    if (retryAfterStatus(host.config.retry, status, this.#facts()) === 'no') return false
    return host.anyInRotation()
  }

  /** Whether a target not tried yet (other than this one) can take a retry now. */
  #untriedAvailable (current: Target): boolean {
    const tried = this.#tried
    return this.#host.fits({
      key: this.key,
      shouldSelectAnotherHost: (t) => t === current || (tried !== null && tried.includes(t))
    })
  }

  #endAttempt (attempt: Attempt, reusable: boolean, category: ErrorCategory | null, retried: boolean): void {
    this.#attempt = null
    if (this.#controller !== null) this.#controller.target = null
    if (this.#counted) {
      this.#counted = false
      this.#host.budget.active--
    }
    this.#settle(attempt, reusable, category, retried)
  }

  /** An attempt's end, into its target (connection, result) and the record. */
  #settle (attempt: Attempt, reusable: boolean, category: ErrorCategory | null, retried: boolean): void {
    const host = this.#host
    const target = attempt.target
    if (reusable) {
      target.putConnectionAfterTurn(attempt.conn)
    } else {
      target.putConnection(attempt.conn, false)
    }
    const latency = host.clock() - attempt.startedAt
    answered(attempt)
    target.attemptEnded()
    target.putResult(attempt.ticket, { category, status: attempt.status, latency, retried, headers: attempt.headers < 0 ? latency : attempt.headers, retryAfter: attempt.retryAfter })
    const record = this.#record
    record.category = category
    record.latency = latency
    if (retried || record.history !== null) {
      record.history ??= []
      record.history.push({ target: target.url, status: attempt.status, category, latency, retried })
    }
    if (category !== null && category !== 'http_5xx') host.attemptFailed(target, category, record.attempts, retried)
  }

  /**
   * The next attempt: an untried target at once; when none is left, any after
   * a backoff. A counted retry over the budget waits for room (BUDGET_WAITS),
   * then goes, or gives up: with the answer it kept, as it came, or with the
   * last failure.
   */
  #retry (category: ErrorCategory, verdict: RetryVerdict): void {
    const tried = this.#tried ??= []
    if (this.#lastTried !== null) tried.push(this.#lastTried)
    this.#elsewhere = verdict === 'elsewhere'
    if (verdict === 'free') this.#retryNow(category, false)
    else this.#withBudget(category)
  }

  #withBudget (category: ErrorCategory): void {
    const host = this.#host
    if (host.budget.allows(host.active)) {
      this.#retryNow(category, true)
      return
    }
    if (this.#budgetWaits >= BUDGET_WAITS) {
      this.#giveUp(category, 'retry budget spent')
      return
    }
    const policy = host.config.retry!
    const cap = Math.min(policy.maxDelay, policy.baseDelay * 2 ** this.#budgetWaits++)
    this.#sleep(policy.baseDelay + Math.floor(host.random() * cap), () => { this.#withBudget(category) })
  }

  #retryNow (category: ErrorCategory, counted: boolean): void {
    this.#host.retried(category)
    // After a reset or a malformed answer, not on a socket of the same target as old as the one that broke.
    const broken = category === 'reset' || category === 'protocol' ? this.#lastTried : null
    this.#seek(category, counted, broken, 0)
  }

  /**
   * A target for the retry: one not tried yet, at once. When none can take
   * it, it backs off (full jitter from `retry.baseDelay`, doubling) and looks
   * again, a target it tried included (unless the retry must go elsewhere),
   * up to TARGET_WAITS times: a target's trial under way, or one back from a
   * restart, takes it.
   */
  #seek (category: ErrorCategory, counted: boolean, broken: Target | null, waits: number): void {
    const host = this.#host
    this.#allowTried = waits > 0 && !this.#elsewhere
    const slot = host.take(this, broken)
    this.#allowTried = false
    if (slot !== null) {
      this.#go(slot, counted)
      return
    }
    // (A retry that must go elsewhere waits only for a target it did not try.)
    if (waits >= TARGET_WAITS || !host.anyTarget(this.#elsewhere ? this.#tried : null)) {
      this.#giveUp(category, waits === 0 ? 'no target left' : 'no target can take the retry')
      return
    }
    const policy = host.config.retry!
    this.#sleep(fullJitter(waits, policy.baseDelay, policy.maxDelay, host.random), () => { this.#seek(category, counted, broken, waits + 1) })
  }

  #go (slot: Slot, counted: boolean): void {
    if (counted) {
      this.#counted = true
      this.#host.budget.active++
    }
    this.#lastTried = slot.target
    this.#run(slot, false)
  }

  // ---------------------------------------------------------------- hedging

  /** Arms the hedge of the first attempt when the request may be hedged: an idempotent method, and no body or a buffered one. */
  #armHedge (hedging: Hedging, target: Target): void {
    const body = this.#opts.body
    if (this.#done || !hedging.methods.has(this.#opts.method) || !(body == null || typeof body === 'string' || body instanceof Uint8Array)) return
    const delay = hedging.delayFor(target)
    if (delay === null) return
    this.#hedgeTimer = setTimeout(onHedgeDelay, delay, this)
    this.#hedgeTimer.unref()
  }

  /**
   * The hedge delay is over: while the first attempt still has no answer, a
   * second goes to another target, within the hedge budget, through the
   * retries' machinery (`host.take`). The two race (see #race).
   */
  sendHedge (): void {
    this.#hedgeTimer = null
    if (!this.#wantsHedge()) return
    const hedging = this.#host.hedge!
    if (!hedging.allows()) {
      this.#inLine = hedging.wait(this)
      return
    }
    this.#hedgeNow()
  }

  /** Room in the hedge budget came for this request, which waited in line for it (see Hedging). */
  hedgeFromLine (): void {
    this.#inLine = null
    if (this.#wantsHedge()) this.#hedgeNow()
    else this.#host.hedge!.denied++
  }

  /** The first attempt is still the only one and has no answer: a hedge would race it. */
  #wantsHedge (): boolean {
    const first = this.#attempt
    return !this.#done && this.#aborted === null && first !== null && first.status === 0 && this.#record.attempts === 1
  }

  #hedgeNow (): void {
    const host = this.#host
    const tried = this.#tried ??= []
    tried.push(this.#attempt!.target)
    const slot = host.take(this, null)
    if (slot === null) return
    host.hedge!.spend()
    this.#run(slot, true)
  }

  /**
   * Response headers while a hedge races the first attempt: the first answer
   * wins, the other attempt is cancelled. A retriable 5xx is set aside (cut,
   * see #raceFailed): the other attempt goes on as its retry. True when the
   * event ends here.
   */
  #race (attempt: Attempt, controller: Controller, status: number): boolean {
    const hedge = this.#hedge!
    const first = this.#attempt!
    if ((attempt !== hedge && attempt !== first) || status < 200) return true
    if (status >= 500 && this.#retriesStatus(status)) {
      attempt.status = status
      attempt.cut = new UpstreamStatusError(status)
      controller.abort(attempt.cut)
      return true
    }
    this.#hedge = null
    this.#attempt = attempt
    this.#lastTried = attempt.target
    this.#host.hedge!.cancelled++
    this.#cancel(attempt === hedge ? first : hedge)
    return false
  }

  /**
   * An attempt failed while a hedge races the first: the other goes on alone,
   * in its place (it is the retry). Its failure is its target's as usual. True
   * when the event ends here.
   */
  #raceFailed (attempt: Attempt, err: Error): boolean {
    const hedge = this.#hedge!
    const first = this.#attempt!
    if (attempt !== hedge && attempt !== first) return true
    const other = attempt === hedge ? first : hedge
    const cut = attempt.cut !== null && err === attempt.cut
    const e = cut ? err as unknown as SssonectorError : this.#failure(err)
    const category: ErrorCategory = cut ? 'http_5xx' : e.category
    this.#hedge = null
    this.#attempt = other
    this.#lastTried = other.target
    if (this.#controller !== null) this.#controller.target = other.controller
    this.#tried!.push(attempt.target)
    this.#last = e
    this.#settle(attempt, false, category, faultOf(category) === 'target')
    return true
  }

  /**
   * Cancels the attempt that lost the race: aborted through its controller,
   * its connection closed (its answer may still be on the way: never back in
   * the pool), its result not its target's (it was not a failure); only its
   * time so far, a bound from below on its target's latency, is kept.
   */
  #cancel (loser: Attempt): void {
    loser.cancel(new Error('another attempt of the request answered first'))
    const target = loser.target
    target.putConnection(loser.conn, false)
    answered(loser)
    target.attemptEnded()
    target.abandon(loser.ticket)
    target.unansweredFor(this.#host.clock() - (loser.sentAt < 0 ? loser.startedAt : loser.sentAt))
  }

  /** A retry that could not happen: a kept answer goes to the caller as it came; otherwise the last failure does. */
  #giveUp (category: ErrorCategory, why: string): void {
    this.#host.retryGivenUp(this.#lastTried!, category, this.#record.attempts, why)
    const kept = this.#kept
    if (kept !== null) {
      this.#replay(kept)
      return
    }
    this.#fail(this.#last ?? (new NoTargetError(this.#host.name) as unknown as SssonectorError))
  }

  /** Passes a kept answer on, as it came from its target. */
  #replay (kept: KeptAnswer): void {
    this.#started = true
    this.#record.status = kept.status
    const inner = this.#inner
    if (this.#controller !== null) {
      inner.onResponseStart?.(this.#controller, kept.status, kept.headers, kept.statusText)
      for (const chunk of kept.chunks) inner.onResponseData?.(this.#controller, chunk)
    } else {
      inner.onHeaders?.(kept.status, kept.rawHeaders, () => {}, kept.statusText)
      for (const chunk of kept.chunks) inner.onData?.(chunk)
    }
    this.#complete(kept.rawTrailers, kept.trailers)
  }

  /** Waits before `then` (a backoff, or room in the budget); an abort ends the wait. */
  #sleep (ms: number, then: () => void): void {
    this.#wait = setTimeout(() => {
      this.#wait = null
      then()
    }, ms)
    this.#wait.unref()
  }

  /** Ends the exchange from outside: the caller's abort, the request timeout, the lease released under it. */
  abort (reason: Error): void {
    if (this.#done || this.#aborted !== null) return
    this.#aborted = reason
    if (this.#wait !== null) {
      clearTimeout(this.#wait)
      this.#wait = null
      this.#fail(toUpstreamError(reason))
      return
    }
    // (the first attempt's failure may hand its place to the hedge at once: both are ended)
    const hedge = this.#hedge
    this.#attempt?.controller?.abort(reason)
    hedge?.cancel(reason)
  }

  #complete (rawTrailers: Buffer[] | null, trailers: IncomingHttpHeaders): void {
    if (!this.#end()) return
    if (this.#controller !== null) this.#inner.onResponseEnd?.(this.#controller, trailers)
    // undici's own handlers parse what they are given: an empty list, never null.
    else this.#inner.onComplete?.((rawTrailers ?? []) as unknown as string[])
  }

  #fail (e: SssonectorError): void {
    if (!this.#end()) return
    if (this.#controller !== null) this.#inner.onResponseError?.(this.#controller, e)
    else this.#inner.onError?.(e)
  }

  #end (): boolean {
    if (this.#done) return false
    this.#done = true
    if (this.#wait !== null) clearTimeout(this.#wait)
    if (this.#deadline !== null) clearTimeout(this.#deadline)
    if (this.#hedgeTimer !== null) clearTimeout(this.#hedgeTimer)
    if (this.#inLine !== null) {
      this.#inLine.waiter = null
      this.#inLine = null
      this.#host.hedge!.denied++
    }
    this.#wait = null
    this.#deadline = null
    this.#hedgeTimer = null
    this.#record.ended()
    return true
  }
}

import { Dispatcher } from 'undici'
import type {
  ErrorCategory, TargetHealthCause, SssonectorUpstream, TargetInput, UpstreamRequestOptions, UpstreamResponse, UpstreamStats
} from '../types/index.js'
import type { ResolvedUpstream } from './options/index.js'
import { parseTarget } from './options/index.js'
import { Target } from './target.js'
import type { TargetOwner } from './target.js'
import { SharedLimits, undiciConnectionFactory } from './connection-pool.js'
import type { Connection, ConnectionFactory, ConnectionSettings } from './connection-pool.js'
import { makeBalancer } from './balancer.js'
import type { Balancer, Random } from './balancer.js'
import { WaitQueue } from './queue.js'
import type { Waiter } from './queue.js'
import {
  ClosedError, NoTargetError, OptionsError, PoolExhaustedError, RequestTimeoutError, UnknownTargetError, UpstreamStatusError, toUpstreamError
} from './errors.js'
import { fullJitter } from './backoff.js'
import { HealthChecker, httpProber } from './health-checker.js'
import type { Prober, ProbeResult } from './health-checker.js'
import { OutlierDetector } from './outlier-detector.js'
import type { Meter } from './metrics.js'
import type { SssonectorError } from './errors.js'

/** Reads a request body of known length in full, for replay. */
async function readAll (body: AsyncIterable<Buffer>, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length)
  let at = 0
  for await (const chunk of body) {
    if (at + chunk.length > length) throw Object.assign(new Error('request body longer than its Content-Length'), { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' })
    chunk.copy(out, at)
    at += chunk.length
  }
  if (at !== length) throw Object.assign(new Error('request body shorter than its Content-Length'), { code: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' })
  return out
}

/** The lease of a request travels to the dispatcher on its headers object, under this symbol (undici ignores symbol keys). */
export const kLease = Symbol('sssonector.lease')

type AnyHeaders = Record<string | symbol, unknown>
type Handler = Dispatcher.DispatchHandler

/** The part of Fastify's (pino's) logger an upstream uses. */
export interface UpstreamLogger {
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  debug (obj: object, msg: string): void
}

const silentLog: UpstreamLogger = { info () {}, warn () {}, debug () {} }

export interface UpstreamDeps {
  /** Where state changes are logged (Fastify's logger). */
  log?: UpstreamLogger
  /** Makes each connection's client (undici Client by default). */
  factory?: ConnectionFactory
  /** The clock (ms). */
  now?: () => number
  /** Uniform numbers in [0, 1) for the balancer's draws (seeded in tests). */
  random?: Random
  /** Runs one active health probe (an HTTP request on a connection of its own by default). */
  prober?: Prober
  /** Metrics of the attempts, retries and connections. */
  meter?: Meter
}

/**
 * One request's hold on its upstream: the admission slot, the chosen target,
 * and the connection taken for it until its attempt starts. Released exactly
 * once: by the proxy when the response closes, or by the dispatcher when a
 * request it admitted itself ends.
 */
export class Lease {
  readonly upstream: Upstream
  target: Target
  /** The connection taken at admission, until the attempt uses it. */
  conn: Connection | null
  released = false
  /** Status or failure and latency (ms) of the last attempt, for metrics and logs. */
  status = 0
  category: ErrorCategory | null = null
  latency = 0
  /** Attempts made. */
  attempts = 0
  /** Every attempt's outcome, kept once a request takes more than one. */
  history: AttemptOutcome[] | null = null
  /** The request in flight, to abort it. */
  exchange: Exchange | null = null
  timer: NodeJS.Timeout | null = null
  /**
   * The X-Forwarded-* values of a proxied request, added by the dispatcher
   * (null: the request's headers carry their own). Adding properties to the
   * headers object instead turns reply-from's copy of it into a slow object,
   * at several microseconds a request.
   */
  forwardedFor: string | null = null
  forwardedProto: string | null = null
  forwardedHost: string | null = null

  constructor (upstream: Upstream, target: Target, conn: Connection) {
    this.upstream = upstream
    this.target = target
    this.conn = conn
  }

  release (): void {
    if (this.released) return
    this.released = true
    if (this.timer !== null) clearTimeout(this.timer)
    const dispatcher = this.upstream.dispatcher
    if (dispatcher.handoff === this) dispatcher.handoff = null
    const conn = this.conn
    if (conn !== null) {
      // Admitted but never sent (the client left, or an error came first).
      this.conn = null
      conn.pool.put(conn, true)
    }
    this.upstream.active--
    this.target.leased--
    this.target.settle()
  }
}

const CONNECT_FAILURES: ReadonlySet<ErrorCategory> = new Set<ErrorCategory>(['connect_refused', 'connect_timeout', 'dns', 'tls'])
/** A retriable answer's body up to this size is read and dropped, keeping its connection; a larger one is cut. */
const DISCARD_LIMIT = 64 * 1024

type Body = Dispatcher.DispatchOptions['body']

/** Whether a request body can be sent again: none, a buffer, or a stream nothing has read yet. */
function replayable (body: Body): boolean {
  if (body == null || typeof body === 'string' || body instanceof Uint8Array) return true
  const r = body as { readableDidRead?: boolean, destroyed?: boolean }
  return r.readableDidRead === false && r.destroyed !== true
}

/**
 * A proxied request's headers as undici's flat list, Host first (each attempt
 * sets its target's), then the request's own, then the X-Forwarded-* ones.
 */
function headerList (headers: AnyHeaders | null | undefined, lease: Lease): unknown[] {
  const list: unknown[] = ['host', lease.target.host]
  if (headers !== null && headers !== undefined) {
    const names = Object.keys(headers)
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!
      const value = headers[name]
      if (value !== undefined && name !== 'host') list.push(name, value)
    }
  }
  if (lease.forwardedFor !== null) list.push('x-forwarded-for', lease.forwardedFor)
  list.push('x-forwarded-proto', lease.forwardedProto)
  if (lease.forwardedHost !== null) list.push('x-forwarded-host', lease.forwardedHost)
  return list
}

/** A request's Content-Length, from its headers as an object or a flat list; -1 when it has none. */
function requestLength (headers: AnyHeaders | unknown[] | null | undefined): number {
  if (headers === null || headers === undefined) return -1
  if (!Array.isArray(headers)) return Number(headers['content-length'] ?? -1)
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i] === 'content-length') return Number(headers[i + 1])
  }
  return -1
}

/** Content-Length from undici's raw headers, or -1. */
function contentLength (raw: Buffer[]): number {
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]
    if (name.length === 14 && name.toString('latin1').toLowerCase() === 'content-length') return Number(raw[i + 1].toString('latin1'))
  }
  return -1
}

/** What one attempt came to, kept on the lease when a request took more than one. */
export interface AttemptOutcome {
  target: string
  /** The status of the answer, 0 when there was none. */
  status: number
  category: ErrorCategory | null
  /** Milliseconds. */
  latency: number
  retried: boolean
}

/**
 * One request through the upstream, over one or more attempts: it wraps the
 * caller's handler, runs each attempt on a connection of its target, counts it,
 * and, while nothing of the answer has gone to the caller, moves a failed
 * attempt to another target (failover) within the retry policy and budget.
 */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #up: Upstream
  readonly #inner: Handler
  readonly #lease: Lease
  readonly #opts: Dispatcher.DispatchOptions & { origin: string, headers?: AnyHeaders }
  readonly #own: boolean
  #conn: Connection | null = null
  #target: Target | null = null
  #attemptAbort: ((err?: Error) => void) | null = null
  #attemptStart = 0
  /** This attempt is one of its target's trials after a skip. */
  #trial = false
  /** The status of this attempt's answer, 0 before one. */
  #status = 0
  /** The answer's headers went to the caller: no retry from here on. */
  #started = false
  /** A retriable answer is being read and dropped. */
  #discarding = false
  /** This attempt is a retry, counted in the upstream's budget. */
  #isRetry = false
  /** This request already waited once for room in the retry budget. */
  #budgetWaited = false
  #aborted: Error | null = null
  #timer: NodeJS.Timeout | null = null
  #tried: Target[] | null = null
  #last: SssonectorError | null = null
  #done = false

  constructor (up: Upstream, inner: Handler, lease: Lease, opts: Dispatcher.DispatchOptions, own: boolean) {
    this.#up = up
    this.#inner = inner
    this.#lease = lease
    this.#opts = opts as Dispatcher.DispatchOptions & { origin: string, headers?: AnyHeaders }
    this.#own = own
    lease.exchange = this
  }

  /** Runs an attempt on this connection of this target. */
  start (conn: Connection, target: Target): void {
    const up = this.#up
    const o = this.#opts
    // The target decides the origin, the Host and the timeouts, whatever the caller said.
    o.origin = target.origin
    const headers = o.headers
    // A flat list (the proxy's, see headerList) has Host first.
    if (Array.isArray(headers)) {
      if (headers[0] === 'host') headers[1] = target.host
    } else if (headers !== undefined && headers !== null) {
      headers.host = target.host
    }
    o.headersTimeout = up.config.timeouts.headers
    o.bodyTimeout = up.config.timeouts.body
    this.#conn = conn
    this.#target = target
    this.#attemptStart = up.now()
    target.active++
    target.requests++
    this.#trial = target.attemptStarted()
    this.#status = 0
    this.#lease.attempts++
    conn.client.dispatch(o, this)
  }

  onConnect (abort: (err?: Error) => void, context?: unknown): void {
    this.#attemptAbort = abort
    if (this.#aborted !== null) {
      abort(this.#aborted)
      return
    }
    // Each attempt's abort goes to the caller, as undici's own retry handler does:
    // the caller's hang-up always reaches the attempt in flight.
    ;(this.#inner.onConnect as ((abort: (err?: Error) => void, context?: unknown) => void) | undefined)?.(abort, context)
  }

  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    this.#status = statusCode
    if (this.#retriesStatus(statusCode)) {
      this.#last = new UpstreamStatusError(statusCode) as unknown as SssonectorError
      this.#discarding = true
      const length = contentLength(headers)
      // Too large (or of unknown length) to read and drop: cut it.
      if (length < 0 || length > DISCARD_LIMIT) this.#attemptAbort?.(this.#last)
      return true
    }
    this.#started = true
    this.#lease.status = statusCode
    return this.#inner.onHeaders?.(statusCode, headers, resume, statusText) ?? true
  }

  onData (chunk: Buffer): boolean {
    if (this.#discarding) return true
    return this.#inner.onData?.(chunk) ?? true
  }

  onComplete (trailers: string[] | null): void {
    if (this.#discarding) {
      this.#discarding = false
      this.#target!.outcome('http_5xx', this.#status, this.#trial)
      this.#endAttempt(true, 'http_5xx', true)
      this.#retry()
      return
    }
    this.#target!.outcome(null, this.#status, this.#trial)
    this.#endAttempt(true, null, false)
    this.#end()
    this.#inner.onComplete?.(trailers)
  }

  onError (err: Error): void {
    const e = toUpstreamError(this.#aborted ?? err)
    const discarded = this.#discarding
    this.#discarding = false
    const category = discarded && e === this.#last ? 'http_5xx' : e.category
    const target = this.#target!
    // The target hears first, so a retry does not pick it if this made it down.
    target.outcome(category, this.#status, this.#trial)
    if (category !== 'client_abort' && category !== 'http_5xx') target.countError(category)
    const retry = discarded || (this.#aborted === null && !this.#started && this.#retriable(e))
    this.#up.attemptFailed(target, category, this.#lease.attempts, retry)
    this.#endAttempt(false, category, retry)
    if (!discarded) this.#last = e
    if (retry) {
      this.#retry()
      return
    }
    this.#fail(e)
  }

  onResponseStarted (): void {
    this.#inner.onResponseStarted?.()
  }

  /** The request body failed before the first attempt (the client left, or it was too large). */
  onBodyError (err: Error): void {
    this.#fail(toUpstreamError(err))
  }

  /** Ends the exchange from outside (request timeout): the attempt in flight, or the wait before the next. */
  abort (err: Error): void {
    if (this.#done || this.#aborted !== null) return
    this.#aborted = err
    if (this.#timer !== null) {
      clearTimeout(this.#timer)
      this.#timer = null
      if (this.#isRetry) {
        this.#isRetry = false
        this.#up.retriesActive--
      }
      this.#fail(toUpstreamError(err))
      return
    }
    this.#attemptAbort?.(err)
  }

  /** Whether an error before the answer may be retried on another target. */
  #retriable (e: SssonectorError): boolean {
    const policy = this.#up.config.retry
    if (policy === null) return false
    const body = this.#opts.body
    // No byte reached the upstream: any method may go elsewhere, if its body is intact.
    if (CONNECT_FAILURES.has(e.category)) return replayable(body) && this.#lease.attempts <= this.#up.config.pool.maxRetries && this.#up.hasTargetFor(this.#tried, this.#target!)
    // The upstream may have acted on it: idempotent methods only, with a body that can be sent again.
    if (e.category === 'reset') return policy.methods.has(this.#opts.method) && replayable(body) && this.#mayRetry() && this.#up.hasTargetFor(this.#tried, this.#target!)
    return false
  }

  /** Whether an answer with this status is dropped and retried elsewhere. */
  #retriesStatus (status: number): boolean {
    const policy = this.#up.config.retry
    if (policy === null || status < 500 || !policy.statusCodes.has(status)) return false
    return policy.methods.has(this.#opts.method) && replayable(this.#opts.body) && this.#mayRetry() && this.#up.hasTargetFor(this.#tried, this.#target!)
  }

  /** Attempts left, and room in the retry budget, or one wait for room still to come. */
  #mayRetry (): boolean {
    return this.#lease.attempts <= this.#up.config.pool.maxRetries && (!this.#budgetWaited || this.#up.retryBudgetAllows())
  }

  #endAttempt (reusable: boolean, category: ErrorCategory | null, retried: boolean): void {
    const target = this.#target!
    const conn = this.#conn!
    const lease = this.#lease
    this.#conn = null
    this.#attemptAbort = null
    target.active--
    if (this.#isRetry) {
      this.#isRetry = false
      this.#up.retriesActive--
    }
    conn.pool.put(conn, reusable)
    const latency = this.#up.now() - this.#attemptStart
    if (category !== 'client_abort') {
      const failed = category !== null || this.#status >= 500
      this.#up.outliers?.record(target, failed, latency)
      target.observe(failed, latency)
      target.meter?.attempt(category === null || category === 'http_5xx' ? Math.min(4, Math.max(0, ((this.#status / 100) | 0) - 1)) : 5, latency / 1000)
    }
    lease.category = category
    lease.latency = latency
    if (retried || lease.history !== null) {
      lease.history ??= []
      lease.history.push({ target: target.url, status: lease.status, category, latency, retried })
    }
    target.settle()
  }

  /**
   * The next attempt: an untried target at once; when none is left, any after a
   * backoff. With the retry budget spent (a burst: a target died under many
   * requests at once), the retry waits one backoff for room, then goes or fails:
   * a burst is spread out, a storm is still refused.
   */
  #retry (): void {
    const up = this.#up
    const tried = this.#tried ?? (this.#tried = [])
    tried.push(this.#target!)
    // A failed connect put no load on any upstream: moving it elsewhere is not a
    // retry the budget limits (it bounds the extra load retries add).
    const free = this.#lease.category !== null && CONNECT_FAILURES.has(this.#lease.category)
    if (!free && !up.retryBudgetAllows()) {
      this.#budgetWaited = true
      this.#wait(true, () => {
        if (up.retryBudgetAllows()) this.#retryNow(tried, true)
        else this.#giveUp('retry budget spent')
      })
      return
    }
    this.#retryNow(tried, !free)
  }

  #retryNow (tried: Target[], counted: boolean): void {
    const up = this.#up
    up.meter?.retry(up.name, this.#lease.category ?? 'unknown')
    if (counted) {
      up.retriesActive++
      this.#isRetry = true
    }
    // After a reset or a dropped answer, not on a socket as old as the one that failed.
    const fresh = this.#lease.category !== null && !CONNECT_FAILURES.has(this.#lease.category)
    const next = up.takeForRetry(tried, fresh)
    if (next !== null) {
      this.start(next.conn, next.target)
      return
    }
    this.#wait(false, () => {
      const again = up.takeForRetry(null, fresh)
      if (again === null) {
        if (this.#isRetry) {
          this.#isRetry = false
          up.retriesActive--
        }
        this.#giveUp('no target can take the retry')
        return
      }
      this.start(again.conn, again.target)
    })
  }

  /** A retry that could not happen: the last failure is the answer. */
  #giveUp (why: string): void {
    const e = this.#last ?? (new NoTargetError(this.#up.name) as unknown as SssonectorError)
    this.#up.retryFailed(this.#target!, e.category, this.#lease.attempts, why)
    this.#fail(e)
  }

  /**
   * Backoff with full jitter before `then`, cancelled by an abort. Waiting for
   * room in the budget, from `baseDelay` to `baseDelay + maxDelay`: the retries
   * in flight need time to end, and a burst is spread over the whole span.
   */
  #wait (forBudget: boolean, then: () => void): void {
    const policy = this.#up.config.retry!
    const delay = forBudget
      ? policy.baseDelay + Math.floor(this.#up.random() * policy.maxDelay)
      : fullJitter((this.#tried?.length ?? 1) - 1, policy.baseDelay, policy.maxDelay, this.#up.random)
    this.#timer = setTimeout(() => {
      this.#timer = null
      then()
    }, delay)
    this.#timer.unref()
  }

  #fail (e: SssonectorError): void {
    this.#end()
    this.#inner.onError?.(e)
  }

  #end (): void {
    if (this.#done) return
    this.#done = true
    this.#lease.exchange = null
    if (this.#own) this.#lease.release()
  }
}

/** A request of plain undici use that waits for admission in the dispatcher. */
class DispatchWaiter implements Waiter<Lease> {
  deadline: number
  cancelled = false
  readonly #dispatcher: UpstreamDispatcher
  readonly #opts: Dispatcher.DispatchOptions
  readonly #handler: Handler

  constructor (dispatcher: UpstreamDispatcher, opts: Dispatcher.DispatchOptions, handler: Handler, deadline: number) {
    this.#dispatcher = dispatcher
    this.#opts = opts
    this.#handler = handler
    this.deadline = deadline
  }

  grant (lease: Lease): void {
    this.#dispatcher.run(this.#opts, this.#handler, lease, true)
  }

  fail (err: Error): void {
    this.#handler.onError?.(err)
  }
}

/** A waiter that settles a promise: `upstream.request()`. */
class PromiseWaiter implements Waiter<Lease> {
  deadline: number
  cancelled = false
  key: string | undefined = undefined
  resolve!: (lease: Lease) => void
  reject!: (err: Error) => void
  readonly promise: Promise<Lease>

  constructor (deadline: number) {
    this.deadline = deadline
    this.promise = new Promise<Lease>((resolve, reject) => {
      this.resolve = resolve
      this.reject = reject
    })
  }

  grant (lease: Lease): void {
    this.resolve(lease)
  }

  fail (err: Error): void {
    this.reject(err)
  }
}

/**
 * The upstream as an undici Dispatcher: reply-from (for proxy routes) and
 * `upstream.request()` both send every attempt through `dispatch()`, which runs it
 * on the connection taken for the request. A request that comes without a lease
 * (plain undici use) is admitted here, waiting in the queue if it must, and
 * released when it ends.
 */
export class UpstreamDispatcher extends Dispatcher {
  readonly #upstream: Upstream
  /**
   * The lease of the proxied request about to be dispatched: the proxy sets it
   * as it returns the request's headers to reply-from, which dispatches at
   * once, in the same tick. (A property on the headers object would cost more
   * than the rest of the plugin's work; see Lease.forwardedFor.)
   */
  handoff: Lease | null = null

  constructor (upstream: Upstream) {
    super()
    this.#upstream = upstream
  }

  override dispatch (opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    const handed = this.handoff
    if (handed !== null) {
      this.handoff = null
      if (!handed.released) {
        if (handed.forwardedProto !== null) opts.headers = headerList(opts.headers as AnyHeaders | null | undefined, handed) as string[]
        return this.run(opts, handler, handed, false)
      }
    }
    const headers = opts.headers as AnyHeaders | undefined
    const lease = headers?.[kLease] as Lease | undefined
    if (lease !== undefined) return this.run(opts, handler, lease, false)
    const up = this.#upstream
    let own: Lease | null
    try {
      own = up.tryAdmit()
    } catch (err) {
      handler.onError?.(err as Error)
      return false
    }
    if (own !== null) return this.run(opts, handler, own, true)
    const err = up.enqueue(new DispatchWaiter(this, opts, handler, up.queueDeadline()))
    if (err !== null) handler.onError?.(err)
    return true
  }

  /** Starts the request on its lease: on the connection taken at admission, after reading a small idempotent body in full so a retry can replay it. */
  run (opts: Dispatcher.DispatchOptions, handler: Handler, lease: Lease, own: boolean): boolean {
    const up = this.#upstream
    const conn = lease.conn
    if (conn === null) {
      // One dispatch per lease: a second one (a caller's own retry) gets a lease of its own.
      handler.onError?.(new PoolExhaustedError(up.name))
      return false
    }
    lease.conn = null
    const exchange = new Exchange(up, handler, lease, opts, own)
    const body = opts.body as { pipe?: unknown } | null | undefined
    const policy = up.config.retry
    if (policy !== null && body != null && typeof body.pipe === 'function' && policy.methods.has(opts.method)) {
      const length = requestLength(opts.headers as AnyHeaders | unknown[] | null | undefined)
      if (length > 0 && length <= policy.bufferBody) {
        readAll(opts.body as unknown as AsyncIterable<Buffer>, length).then((buf) => {
          opts.body = buf
          exchange.start(conn, lease.target)
        }, (err: Error) => {
          conn.pool.put(conn, true)
          exchange.onBodyError(err)
        })
        return true
      }
    }
    exchange.start(conn, lease.target)
    return true
  }

  override async close (): Promise<void> {
    await this.#upstream.close()
  }

  override async destroy (): Promise<void> {
    await this.#upstream.close()
  }
}

/** An upstream (Envoy's cluster): its targets, balancer, admission queue, connections and dispatcher. */
export class Upstream implements SssonectorUpstream, TargetOwner {
  readonly name: string
  readonly config: ResolvedUpstream
  readonly dispatcher: UpstreamDispatcher
  readonly targets: Target[] = []
  readonly limits: SharedLimits
  /** Requests admitted and not yet released. */
  active = 0
  admitted = 0
  readonly rejected: Partial<Record<ErrorCategory, number>> = {}
  closed = false
  /** Retries in flight, against the retry budget. */
  retriesActive = 0
  readonly random: Random
  readonly now: () => number
  /** Fewer targets healthy than `panicThreshold`: the judgement flags are ignored. */
  panic = false
  readonly retryInterval: number
  readonly maxRetryInterval: number
  readonly slowStart: number
  readonly #log: UpstreamLogger
  /** Outlier detection, when on. */
  readonly outliers: OutlierDetector | null
  #odTimer: NodeJS.Timeout | null = null
  #health: HealthChecker | null = null
  #prober: { probe: Prober, forget: (t: Target) => Promise<void>, close: () => Promise<void> } | null = null
  readonly #customProber: Prober | undefined
  readonly meter: Meter | null
  readonly #queue = new WaitQueue<Lease>()
  readonly #balancer: Balancer<Target>
  readonly #factory: ConnectionFactory
  readonly #now: () => number
  readonly #settings: ConnectionSettings
  readonly #retryAfter: number
  readonly #queueRetryAfter: number
  readonly #onFree: () => void
  #queueTimer: NodeJS.Timeout | null = null
  #sweepTimer: NodeJS.Timeout | null = null
  #draining = false
  #drainAgain = false

  constructor (config: ResolvedUpstream, deps: UpstreamDeps = {}) {
    this.name = config.name
    this.config = config
    this.#factory = deps.factory ?? undiciConnectionFactory
    this.#now = deps.now ?? Date.now
    this.now = this.#now
    this.random = deps.random ?? Math.random
    this.retryInterval = config.pool.retryInterval
    this.maxRetryInterval = config.pool.maxRetryInterval
    this.slowStart = config.slowStart
    this.#log = deps.log ?? silentLog
    this.outliers = config.outlierDetection === null ? null : new OutlierDetector(config.outlierDetection)
    this.#customProber = deps.prober
    this.meter = deps.meter ?? null
    this.#settings = { pool: config.pool, timeouts: config.timeouts, tls: config.tls }
    this.limits = new SharedLimits(config.pool.maxActive, config.pool.maxIdle)
    this.#balancer = makeBalancer<Target>(config.balance, this.random)
    this.#retryAfter = Math.max(1, Math.ceil(config.pool.retryInterval / 1000))
    this.#queueRetryAfter = Math.max(1, Math.ceil(config.pool.queueTimeout / 1000))
    this.#onFree = () => { this.#freed() }
    this.dispatcher = new UpstreamDispatcher(this)
    for (const t of config.targets) this.targets.push(this.#makeTarget(t))
    this.#balancer.update(this.targets)
  }

  #makeTarget (t: ResolvedUpstream['targets'][number]): Target {
    const target = new Target(t, this.#settings, this.limits, this.#factory, this, this.#onFree, this.config.circuitBreaker)
    const meter = this.meter?.target(this.name, target) ?? null
    target.meter = meter
    const log = this.#log
    const fields = { upstream: this.name, target: target.url }
    target.pool.observer = {
      opened () {
        meter?.connectionOpened()
        log.debug(fields, 'connection opened')
      },
      closed (age) {
        meter?.connectionClosed(age)
        log.debug({ ...fields, age }, 'connection closed')
      }
    }
    return target
  }

  /** A retry that could not happen, logged with why. */
  retryFailed (target: Target, category: ErrorCategory, attempt: number, why: string): void {
    this.#log.warn({ upstream: this.name, target: target.url, reason: category, attempt, why, retries: this.retriesActive, active: this.active }, 'retry given up')
  }

  /** A failed attempt, logged with its category: debug for a client that left, info when retried, warn when it was the last. */
  attemptFailed (target: Target, category: ErrorCategory, attempt: number, retried: boolean): void {
    const fields = { upstream: this.name, target: target.url, reason: category, attempt }
    if (category === 'client_abort') this.#log.debug(fields, 'client left during the attempt')
    else if (retried) this.#log.info(fields, 'attempt failed, retrying')
    else this.#log.warn(fields, 'attempt failed')
  }

  /** A target went out of rotation or came back, for one cause: logged once, and the panic state follows. */
  healthChanged (target: Target, cause: TargetHealthCause, down: boolean, reason: string): void {
    const fields = { upstream: this.name, target: target.url, cause, reason }
    if (down) this.#log.warn(fields, `target out of rotation: ${cause}`)
    else this.#log.info(fields, `target back in rotation: ${cause} cleared`)
    this.#updatePanic()
  }

  probationOver (target: Target, latency: number, failures: number, attempts: number): void {
    const detector = this.outliers
    if (detector === null) return
    const reason = detector.judgeProbation(target, latency, failures, attempts, this.targets)
    const fields = { upstream: this.name, target: target.url }
    if (reason === null) {
      this.#log.info(fields, 'target passed its probation after an ejection')
      return
    }
    target.eject(detector.ejectionEnd(target, this.#now(), this.random), `still an outlier on probation: ${reason}`)
  }

  /**
   * Starts the active health checks and outlier detection. Resolves once every
   * target had its first probe (each bounded by the probe timeout): a gateway
   * never starts by sending traffic to a dead target (Envoy's cluster warming).
   */
  async startHealth (): Promise<void> {
    const od = this.config.outlierDetection
    if (od !== null && this.#odTimer === null && !this.closed) {
      this.#odTimer = setTimeout(() => { this.#judgeOutliers() }, od.interval)
      this.#odTimer.unref()
    }
    const hc = this.config.healthCheck
    if (hc === null || this.#health !== null || this.closed) return
    if (this.#customProber === undefined) this.#prober = httpProber(hc, this.config.tls, this.config.timeouts.connect)
    const probe = this.#customProber ?? this.#prober!.probe
    this.#health = new HealthChecker(hc, probe, this.random, (target, result) => { this.#probed(target, result) })
    await this.#health.start(this.targets)
  }

  /** Stops the active checks and outlier detection (closing: they would only add noise). */
  stopHealth (): void {
    this.#health?.stop()
    if (this.#odTimer !== null) clearTimeout(this.#odTimer)
    this.#odTimer = null
  }

  #probed (target: Target, result: ProbeResult): void {
    if (result.ok) target.probeConnected()
    else {
      target.hcFailures++
      this.#log.debug({ upstream: this.name, target: target.url, reason: result.reason }, 'active check failed')
    }
  }

  #judgeOutliers (): void {
    const now = this.#now()
    for (const { target, until, reason } of this.outliers!.judge(this.targets, now, this.random)) target.eject(until, reason)
    this.#odTimer!.refresh()
  }

  #updatePanic (): void {
    const threshold = this.config.panicThreshold
    let panic = false
    if (threshold > 0) {
      let up = 0
      let healthy = 0
      for (const t of this.targets) {
        if (t.state !== 'up') continue
        up++
        if (t.healthy) healthy++
      }
      panic = up > 0 && healthy * 100 < threshold * up
    }
    if (panic !== this.panic) {
      this.panic = panic
      if (panic) this.#log.warn({ upstream: this.name, threshold }, 'panic: too few healthy targets, sending to all of them')
      else this.#log.info({ upstream: this.name }, 'panic over')
    }
  }

  /** Requests waiting in the queue. */
  get pending (): number {
    return this.#queue.size
  }

  /**
   * Admission: a target and a connection for the request now, or null when it
   * must wait (every target in rotation is at its caps). Throws a 503 error when
   * no target is in rotation at all.
   */
  tryAdmit (key?: string): Lease | null {
    if (this.closed) throw this.#reject(new ClosedError(this.name) as SssonectorError, 'no_target', this.#retryAfter)
    // Waiting requests go first (FIFO).
    if (this.#queue.size > 0) {
      if (!this.#anyAvailable()) throw this.#reject(new NoTargetError(this.name) as unknown as SssonectorError, 'no_target', this.#noTargetRetryAfter())
      return null
    }
    return this.#admitNow(key)
  }

  #admitNow (key: string | undefined): Lease | null {
    const target = this.#balancer.pick(key)
    if (target === undefined) {
      if (this.#anyAvailable()) return null
      throw this.#reject(new NoTargetError(this.name) as unknown as SssonectorError, 'no_target', this.#noTargetRetryAfter())
    }
    let conn = target.pool.take()
    if (conn === undefined) {
      // At maxActive with idle connections elsewhere: close the least recently used to make room.
      this.#evictIdle(target)
      conn = target.pool.take()
      if (conn === undefined) return null
    }
    this.active++
    this.admitted++
    target.leased++
    return new Lease(this, target, conn)
  }

  /** Envoy's retry budget: retries in flight at most `percent` of the requests active, `minConcurrent` always. */
  retryBudgetAllows (): boolean {
    const budget = this.config.retry?.budget
    if (budget === undefined) return false
    return this.retriesActive < Math.max(budget.minConcurrent, Math.floor(this.active * budget.percent / 100))
  }

  /** Whether a retry would find a target: an untried one, or the current one again (it is the last). */
  hasTargetFor (tried: readonly Target[] | null, current: Target): boolean {
    for (const t of this.targets) {
      if (t !== current && (tried === null || !tried.includes(t)) && t.available) return true
    }
    return current.available
  }

  /**
   * A target and connection for a retry: among those not tried yet when `tried`
   * is given (null when none of those can take it now), else among all.
   */
  takeForRetry (tried: readonly Target[] | null, fresh: boolean): { target: Target, conn: Connection } | null {
    if (tried !== null) for (const t of tried) t.excluded = true
    let target: Target | undefined
    try {
      target = this.#balancer.pick()
    } finally {
      if (tried !== null) for (const t of tried) t.excluded = false
    }
    if (target === undefined) return null
    let conn = target.pool.take(fresh)
    if (conn === undefined) {
      this.#evictIdle(target)
      conn = target.pool.take(fresh)
      if (conn === undefined) return null
    }
    return { target, conn }
  }

  #anyAvailable (): boolean {
    for (const t of this.targets) if (t.available) return true
    return false
  }

  /** Seconds until the first skipped target may be tried again (at least 1); retryInterval when none is skipped. */
  #noTargetRetryAfter (): number {
    let soonest = Infinity
    for (const t of this.targets) {
      if (t.state === 'up' && t.downUntil !== 0) soonest = Math.min(soonest, t.retryIn())
    }
    return soonest === Infinity ? this.#retryAfter : Math.max(1, Math.ceil(soonest / 1000))
  }

  #evictIdle (except: Target): void {
    let oldest: Target | undefined
    let at = Infinity
    for (const t of this.targets) {
      if (t === except) continue
      const since = t.pool.oldestIdle()
      if (since < at) {
        at = since
        oldest = t
      }
    }
    if (oldest !== undefined) oldest.pool.evictIdle()
    else except.pool.evictIdle()
  }

  #reject (err: SssonectorError, category: ErrorCategory, retryAfter: number): SssonectorError {
    err.retryAfter = retryAfter
    this.rejected[category] = (this.rejected[category] ?? 0) + 1
    return err
  }

  /** When a request queued now gives up. */
  queueDeadline (): number {
    return this.#now() + this.config.pool.queueTimeout
  }

  /** Queues a waiter; returns the 503 error instead when the queue is full. */
  enqueue (w: Waiter<Lease>): SssonectorError | null {
    if (this.#queue.size >= this.config.pool.maxQueue) {
      return this.#reject(new PoolExhaustedError(this.name) as unknown as SssonectorError, 'pool_exhausted', this.#queueRetryAfter)
    }
    this.#queue.push(w)
    if (this.#queueTimer === null) this.#armQueueTimer(w.deadline)
    return null
  }

  /** A waiter whose client left: out of the queue at once. */
  cancel (w: Waiter<Lease>): void {
    this.#queue.cancel(w)
  }

  /** A lease now, or after waiting in the queue. */
  async acquire (signal?: AbortSignal, key?: string): Promise<Lease> {
    const lease = this.tryAdmit(key)
    if (lease !== null) return lease
    const w = new PromiseWaiter(this.queueDeadline())
    w.key = key
    const err = this.enqueue(w)
    if (err !== null) throw err
    if (signal !== undefined) {
      const onAbort = (): void => {
        this.cancel(w)
        w.reject(signal.reason as Error)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      w.promise.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => {})
    }
    return await w.promise
  }

  #armQueueTimer (deadline: number): void {
    this.#queueTimer = setTimeout(() => { this.#expireQueue() }, Math.max(0, deadline - this.#now()))
    this.#queueTimer.unref()
  }

  #expireQueue (): void {
    this.#queueTimer = null
    const now = this.#now()
    let w = this.#queue.peek()
    while (w !== undefined && w.deadline <= now) {
      this.#queue.shift()
      w.fail(this.#reject(new PoolExhaustedError(this.name) as unknown as SssonectorError, 'pool_exhausted', this.#queueRetryAfter))
      w = this.#queue.peek()
    }
    if (w !== undefined) this.#armQueueTimer(w.deadline)
  }

  /** Capacity came free (a connection went idle or closed): serve the queue, keep the idle sweep armed. */
  #freed (): void {
    if (this.limits.idle > 0 && this.#sweepTimer === null) this.#armSweep()
    if (this.#queue.size === 0) return
    if (this.#draining) {
      this.#drainAgain = true
      return
    }
    this.#draining = true
    try {
      do {
        this.#drainAgain = false
        for (let w = this.#queue.peek(); w !== undefined; w = this.#queue.peek()) {
          let lease: Lease | null
          try {
            lease = this.#admitNow(w.key)
          } catch (err) {
            // No target in rotation any more: nobody in the queue can be served.
            for (let x = this.#queue.shift(); x !== undefined; x = this.#queue.shift()) x.fail(err as Error)
            break
          }
          if (lease === null) break
          this.#queue.shift()
          w.grant(lease)
        }
      } while (this.#drainAgain)
    } finally {
      this.#draining = false
    }
  }

  #armSweep (): void {
    let due = Infinity
    for (const t of this.targets) due = Math.min(due, t.pool.oldestIdle())
    if (due === Infinity) return
    due += this.config.pool.idleTimeout
    this.#sweepTimer = setTimeout(() => { this.sweep() }, Math.max(0, due - this.#now()))
    this.#sweepTimer.unref()
  }

  /** Closes idle connections past the idle timeout, and arms the next sweep. */
  sweep (): void {
    this.#sweepTimer = null
    const now = this.#now()
    for (const t of this.targets) t.pool.sweep(now)
    if (this.limits.idle > 0 && this.#sweepTimer === null) this.#armSweep()
  }

  /** Arms the whole-exchange timeout (`timeouts.request`) of a lease, if one is set. */
  armRequestTimeout (lease: Lease, onTimeout: (err: SssonectorError) => void): void {
    const ms = this.config.timeouts.request
    if (ms === 0) return
    lease.timer = setTimeout(() => {
      const err = new RequestTimeoutError(`${ms} ms`) as unknown as SssonectorError
      lease.category = 'request_timeout'
      lease.exchange?.abort(err)
      onTimeout(err)
    }, ms)
    lease.timer.unref()
  }

  async request (options: UpstreamRequestOptions): Promise<UpstreamResponse> {
    if (options === null || typeof options !== 'object') throw new OptionsError(`request: ${String(options)} is not an object { method, path }`)
    if (typeof options.path !== 'string' || !options.path.startsWith('/')) throw new OptionsError(`request.path: ${JSON.stringify(options.path)} is not a path starting with "/"`)
    if (typeof options.method !== 'string' || options.method === '') throw new OptionsError(`request.method: ${JSON.stringify(options.method)} is not an HTTP method`)
    if (options.hashKey !== undefined && typeof options.hashKey !== 'string') throw new OptionsError(`request.hashKey: ${JSON.stringify(options.hashKey)} is not a string`)
    const lease = await this.acquire(options.signal, options.hashKey)
    const headers: AnyHeaders = { ...options.headers }
    headers.host = lease.target.host
    headers[kLease] = lease
    let timedOut: SssonectorError | null = null
    this.armRequestTimeout(lease, (err) => { timedOut = err })
    try {
      const res = await this.dispatcher.request({
        origin: lease.target.origin,
        path: options.path,
        method: options.method as Dispatcher.HttpMethod,
        headers: headers as Record<string, string>,
        body: options.body ?? null,
        signal: options.signal
      })
      // The lease of a client request lasts until its body is read or destroyed.
      res.body.once('close', () => lease.release())
      return { statusCode: res.statusCode, headers: res.headers, body: res.body }
    } catch (err) {
      lease.release()
      throw timedOut ?? err
    }
  }

  addTarget (input: TargetInput): void {
    const resolved = parseTarget(input, `upstream(${this.name}).addTarget`)
    if (this.targets.some((t) => t.origin === resolved.origin)) {
      throw new OptionsError(`upstream(${this.name}).addTarget: ${JSON.stringify(resolved.url)} is a target already`)
    }
    const target = this.#makeTarget(resolved)
    this.#watch(target)
    this.targets.push(target)
    this.#balancer.update(this.targets)
    this.#freed()
  }

  /** A target added at run time: with active checks on, kept out until its first probe passes. */
  #watch (target: Target): void {
    if (this.#health === null) return
    target.setActiveHealth(true, 'added: waiting for its first active check')
    this.#health.add(target).catch(() => {})
  }

  /** A target gone: its checks stop, its probe connection closes. */
  async #unwatch (target: Target): Promise<void> {
    this.meter?.forget(this.name, target)
    this.#health?.remove(target)
    this.outliers?.forget(target)
    await this.#prober?.forget(target)
  }

  async removeTarget (url: string): Promise<void> {
    let origin: string
    try {
      origin = new URL(url).origin
    } catch {
      throw new UnknownTargetError(this.name, JSON.stringify(url))
    }
    const i = this.targets.findIndex((t) => t.origin === origin)
    if (i === -1) throw new UnknownTargetError(this.name, JSON.stringify(url))
    const target = this.targets[i]
    this.targets.splice(i, 1)
    this.#balancer.update(this.targets)
    await this.#unwatch(target)
    await target.drain()
    // Its connections are gone: room for the queue elsewhere.
    this.#freed()
  }

  async setTargets (list: TargetInput[]): Promise<void> {
    if (!Array.isArray(list)) throw new OptionsError(`upstream(${this.name}).setTargets: ${JSON.stringify(list)} is not an array`)
    const wanted = list.map((t, i) => parseTarget(t, `upstream(${this.name}).setTargets[${i}]`))
    const seen = new Set<string>()
    for (const [i, t] of wanted.entries()) {
      if (seen.has(t.origin)) throw new OptionsError(`upstream(${this.name}).setTargets[${i}]: ${JSON.stringify(t.url)} is listed twice`)
      seen.add(t.origin)
    }
    // One step: the new list is in force before anything drains.
    const byOrigin = new Map(this.targets.map((t) => [t.origin, t]))
    const next: Target[] = []
    for (const w of wanted) {
      const existing = byOrigin.get(w.origin)
      if (existing !== undefined) {
        existing.weight = w.weight
        byOrigin.delete(w.origin)
        next.push(existing)
      } else {
        const target = this.#makeTarget(w)
        this.#watch(target)
        next.push(target)
      }
    }
    this.targets.length = 0
    this.targets.push(...next)
    this.#balancer.update(this.targets)
    this.#freed()
    await Promise.all([...byOrigin.values()].map(async (t) => {
      await this.#unwatch(t)
      await t.drain()
    }))
    this.#freed()
  }

  stats (): UpstreamStats {
    const now = this.#now()
    return {
      name: this.name,
      balance: this.config.balance,
      active: this.active,
      pending: this.#queue.size,
      panic: this.panic,
      connections: this.limits.open,
      idle: this.limits.idle,
      admitted: this.admitted,
      rejected: { ...this.rejected },
      targets: this.targets.map((t) => t.stats(now))
    }
  }

  /** Stops admitting, fails the queue, lets what is in flight finish, closes every connection, stops its timers. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (let w = this.#queue.shift(); w !== undefined; w = this.#queue.shift()) {
      w.fail(this.#reject(new ClosedError(this.name) as SssonectorError, 'no_target', this.#retryAfter))
    }
    if (this.#queueTimer !== null) clearTimeout(this.#queueTimer)
    this.#queueTimer = null
    this.stopHealth()
    await this.#prober?.close()
    await Promise.all(this.targets.map((t) => t.drain()))
    if (this.#sweepTimer !== null) clearTimeout(this.#sweepTimer)
    this.#sweepTimer = null
  }
}

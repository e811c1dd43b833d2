import { Dispatcher } from 'undici'
import type {
  BalancePolicy, ErrorCategory, SssonectorUpstream, TargetInput, UpstreamRequestOptions, UpstreamResponse, UpstreamStats
} from '../types/index.js'
import type { ResolvedUpstream } from './options.js'
import { parseTarget } from './options.js'
import { Target, defaultPoolFactory } from './target.js'
import type { PoolFactory, TargetSettings } from './target.js'
import { RoundRobin } from './balancer.js'
import type { Balancer } from './balancer.js'
import {
  ClosedError, NoTargetError, OptionsError, RequestTimeoutError, UnknownTargetError, toUpstreamError
} from './errors.js'
import type { SssonectorError } from './errors.js'

/** The lease of a request travels to the dispatcher on its headers object, under this symbol (undici ignores symbol keys). */
export const kLease = Symbol('sssonector.lease')

type AnyHeaders = Record<string | symbol, unknown>
type Handler = Dispatcher.DispatchHandler

export interface UpstreamDeps {
  factory?: PoolFactory
  now?: () => number
}

/**
 * One request's hold on its upstream: the admission slot and the chosen target.
 * Released exactly once: by the proxy when the response closes, or by the
 * dispatcher when a client request it admitted itself ends.
 */
export class Lease {
  readonly upstream: Upstream
  target: Target
  released = false
  /** Status or failure of the last attempt, for metrics and logs. */
  status = 0
  category: ErrorCategory | null = null
  /** Attempts made. */
  attempts = 0
  /** Aborts the attempt in flight. */
  abort: ((err: Error) => void) | null = null
  timer: NodeJS.Timeout | null = null

  constructor (upstream: Upstream, target: Target) {
    this.upstream = upstream
    this.target = target
  }

  release (): void {
    if (this.released) return
    this.released = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.upstream.active--
    this.target.leased--
    this.target.settle()
  }
}

/** Wraps the caller's handler for one attempt on one target: counts it, categorizes its failure. */
class AttemptHandler implements Dispatcher.DispatchHandler {
  readonly #inner: Handler
  readonly #lease: Lease
  readonly #target: Target
  readonly #own: boolean
  #done = false

  constructor (inner: Handler, lease: Lease, target: Target, own: boolean) {
    this.#inner = inner
    this.#lease = lease
    this.#target = target
    this.#own = own
  }

  onConnect (abort: (err?: Error) => void, context?: unknown): void {
    this.#lease.abort = abort
    // undici passes a context as second argument; its types do not say so.
    ;(this.#inner.onConnect as ((abort: (err?: Error) => void, context?: unknown) => void) | undefined)?.(abort, context)
  }

  onHeaders (statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    this.#lease.status = statusCode
    return this.#inner.onHeaders?.(statusCode, headers, resume, statusText) ?? true
  }

  onData (chunk: Buffer): boolean {
    return this.#inner.onData?.(chunk) ?? true
  }

  onComplete (trailers: string[] | null): void {
    this.#finish()
    this.#inner.onComplete?.(trailers)
  }

  onError (err: Error): void {
    const e = toUpstreamError(err)
    this.#lease.category = e.category
    if (e.category !== 'client_abort') this.#target.countError(e.category)
    this.#finish()
    this.#inner.onError?.(e)
  }

  onResponseStarted (): void {
    this.#inner.onResponseStarted?.()
  }

  #finish (): void {
    if (this.#done) return
    this.#done = true
    const lease = this.#lease
    lease.abort = null
    this.#target.active--
    if (this.#own) lease.release()
    this.#target.settle()
  }
}

/**
 * The upstream as an undici Dispatcher: reply-from (for proxy routes) and
 * `upstream.request()` both send every attempt through `dispatch()`, which runs it
 * on the chosen target's connections. A request that comes without a lease
 * (plain undici use) is admitted here and released when it ends.
 */
export class UpstreamDispatcher extends Dispatcher {
  readonly #upstream: Upstream

  constructor (upstream: Upstream) {
    super()
    this.#upstream = upstream
  }

  override dispatch (opts: Dispatcher.DispatchOptions, handler: Handler): boolean {
    const up = this.#upstream
    const headers = opts.headers as AnyHeaders | undefined
    let lease = headers?.[kLease] as Lease | undefined
    const own = lease === undefined
    if (lease === undefined) {
      try {
        lease = up.admit()
      } catch (err) {
        handler.onError?.(err as Error)
        return false
      }
    }
    const target = lease.target
    // The target decides the origin and timeouts, whatever the caller said.
    const o = opts as Dispatcher.DispatchOptions & { origin: string }
    o.origin = target.origin
    o.headersTimeout = up.config.timeouts.headers
    o.bodyTimeout = up.config.timeouts.body
    target.active++
    target.requests++
    lease.attempts++
    return target.pool.dispatch(o, new AttemptHandler(handler, lease, target, own))
  }

  override async close (): Promise<void> {
    await this.#upstream.close()
  }

  override async destroy (): Promise<void> {
    await this.#upstream.close()
  }
}

/** An upstream (Envoy's cluster): its targets, balancer, admission and dispatcher. */
export class Upstream implements SssonectorUpstream {
  readonly name: string
  readonly config: ResolvedUpstream
  readonly dispatcher: UpstreamDispatcher
  readonly targets: Target[] = []
  /** Requests admitted and not yet released. */
  active = 0
  admitted = 0
  readonly rejected: Partial<Record<ErrorCategory, number>> = {}
  closed = false
  readonly #balancer: Balancer
  readonly #factory: PoolFactory
  readonly #now: () => number
  readonly #settings: TargetSettings
  readonly #retryAfter: number

  constructor (config: ResolvedUpstream, deps: UpstreamDeps = {}) {
    this.name = config.name
    this.config = config
    this.#factory = deps.factory ?? defaultPoolFactory
    this.#now = deps.now ?? Date.now
    this.#settings = { pool: config.pool, timeouts: config.timeouts, tls: config.tls }
    this.#balancer = new RoundRobin()
    this.#retryAfter = Math.max(1, Math.ceil(config.pool.retryInterval / 1000))
    this.dispatcher = new UpstreamDispatcher(this)
    for (const t of config.targets) this.targets.push(new Target(t, this.#settings, this.#factory, this.#now()))
  }

  get balance (): BalancePolicy {
    return this.config.balance
  }

  /** Takes an admission slot and picks a target; throws a 503 error when nothing can serve. */
  admit (): Lease {
    if (this.closed) throw this.#reject(new ClosedError(this.name) as SssonectorError, 'no_target')
    const target = this.#balancer.pick(this.targets)
    if (target === undefined) {
      throw this.#reject(new NoTargetError(this.name) as unknown as SssonectorError, 'no_target')
    }
    this.active++
    this.admitted++
    target.leased++
    return new Lease(this, target)
  }

  #reject (err: SssonectorError, category: ErrorCategory): SssonectorError {
    err.retryAfter = this.#retryAfter
    this.rejected[category] = (this.rejected[category] ?? 0) + 1
    return err
  }

  /** Arms the whole-exchange timeout (`timeouts.request`) of a lease, if one is set. */
  armRequestTimeout (lease: Lease, onTimeout: (err: SssonectorError) => void): void {
    const ms = this.config.timeouts.request
    if (ms === 0) return
    lease.timer = setTimeout(() => {
      const err = new RequestTimeoutError(`${ms} ms`) as unknown as SssonectorError
      lease.category = 'request_timeout'
      if (lease.abort !== null) lease.abort(err)
      onTimeout(err)
    }, ms)
    lease.timer.unref()
  }

  async request (options: UpstreamRequestOptions): Promise<UpstreamResponse> {
    if (options === null || typeof options !== 'object') throw new OptionsError(`request: ${String(options)} is not an object { method, path }`)
    if (typeof options.path !== 'string' || !options.path.startsWith('/')) throw new OptionsError(`request.path: ${JSON.stringify(options.path)} is not a path starting with "/"`)
    if (typeof options.method !== 'string' || options.method === '') throw new OptionsError(`request.method: ${JSON.stringify(options.method)} is not an HTTP method`)
    const lease = this.admit()
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
    this.targets.push(new Target(resolved, this.#settings, this.#factory, this.#now()))
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
    await target.drain()
  }

  stats (): UpstreamStats {
    const now = this.#now()
    let pending = 0
    const targets = this.targets.map((t) => {
      const s = t.stats(now)
      pending += s.pending
      return s
    })
    return {
      name: this.name,
      balance: this.config.balance,
      active: this.active,
      pending,
      admitted: this.admitted,
      rejected: { ...this.rejected },
      targets
    }
  }

  /** Stops admitting, lets what is in flight finish, closes every connection. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all(this.targets.map((t) => t.drain()))
  }
}

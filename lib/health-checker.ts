import { Client } from 'undici'
import type { Dispatcher } from 'undici'
import type { ResolvedHealthCheck, ResolvedHttp2, ResolvedPool } from './options/index.js'
import { H2Client } from './h2-client.js'
import { healthCheckRequest, healthCheckStatus } from './grpc.js'
import { DEFAULTS } from './options/defaults.js'
import type { TlsOptions } from '../types/index.js'
import type { Target } from './target.js'
import { CONNECT_FAILURES, categorize } from './errors.js'

/** What one probe found. */
export interface ProbeResult {
  ok: boolean
  /** It connected (an answer came, good or bad): a skip for failed connects is over. */
  connected: boolean
  /** The status, or the failure's category. */
  reason: string
}

/** Runs one probe of a target; the seam tests use. */
export type Prober = (target: Target) => Promise<ProbeResult>

/**
 * The thresholds of one target's active checks: down after exactly
 * `unhealthyThreshold` failed probes in a row, up after exactly
 * `healthyThreshold` good ones. The first result decides at once: a target is
 * not sent traffic on trust, nor kept out on one failure later on.
 */
export class ProbeCounter {
  #first = true
  #good = 0
  #bad = 0
  readonly #healthy: number
  readonly #unhealthy: number

  constructor (healthyThreshold: number, unhealthyThreshold: number) {
    this.#healthy = healthyThreshold
    this.#unhealthy = unhealthyThreshold
  }

  /** Records a probe; returns 'down' or 'up' when the target should move, else null. */
  record (ok: boolean, down: boolean): 'down' | 'up' | null {
    if (this.#first) {
      this.#first = false
      if (ok !== !down) return ok ? 'up' : 'down'
      return null
    }
    if (ok) {
      this.#bad = 0
      if (down && ++this.#good >= this.#healthy) {
        this.#good = 0
        return 'up'
      }
    } else {
      this.#good = 0
      if (!down && ++this.#bad >= this.#unhealthy) {
        this.#bad = 0
        return 'down'
      }
    }
    return null
  }
}

/** What the probes of an HTTP/2 upstream are sent with: its protocol and connection settings. */
export interface ProbeTransport {
  protocol: 'http1' | 'http2' | 'auto'
  http2: ResolvedHttp2
  pool: ResolvedPool
}

interface ProbeAnswer { status: number, body: Buffer, trailers: Record<string, unknown>, headers: Record<string, unknown> }

/** A prober's `forget` (a target's client closed) and `close` (all of them), over its clients by target. */
function forgetting (clients: Map<Target, { destroy: () => Promise<void> }>): { forget: (t: Target) => Promise<void>, close: () => Promise<void> } {
  return {
    forget: async (t) => {
      const c = clients.get(t)
      clients.delete(t)
      await c?.destroy()
    },
    close: async () => {
      const all = [...clients.values()]
      clients.clear()
      await Promise.all(all.map(async (c) => { await c.destroy() }))
    }
  }
}

/** One request on a connection of the probe's own, through undici's handler API; rejects past `timeout`. */
async function exchangeOn (client: H2Client, opts: Dispatcher.DispatchOptions, timeout: number): Promise<ProbeAnswer> {
  return await new Promise<ProbeAnswer>((resolve, reject) => {
    let status = 0
    let headers: Record<string, unknown> = {}
    const chunks: Buffer[] = []
    let controller: Dispatcher.DispatchController | null = null
    const timer = setTimeout(() => {
      const err = Object.assign(new Error(`probe timed out after ${timeout} ms`), { code: 'UND_ERR_HEADERS_TIMEOUT' })
      if (controller !== null) controller.abort(err)
      else reject(err)
    }, timeout)
    client.dispatch(opts, {
      onRequestStart (c) { controller = c },
      onResponseStart (_c, s, h) { status = s; headers = h as Record<string, unknown> },
      onResponseData (_c, chunk) { if (chunks.length < 64) chunks.push(chunk) },
      onResponseEnd (_c, trailers) {
        clearTimeout(timer)
        resolve({ status, body: Buffer.concat(chunks), trailers: trailers as Record<string, unknown>, headers })
      },
      onResponseError (_c, err) {
        clearTimeout(timer)
        reject(err)
      }
    })
  })
}

/**
 * Probes over HTTP/2 (`protocol` 'http2' or 'auto'): one connection of the
 * probes' own per target, never a pooled one. With `grpc`, the gRPC health
 * protocol: healthy when the answer's status is OK and its message says SERVING.
 */
function h2Prober (opts: ResolvedHealthCheck, tls: TlsOptions, connectTimeout: number, transport: ProbeTransport): { probe: Prober, forget: (t: Target) => Promise<void>, close: () => Promise<void> } {
  const clients = new Map<Target, H2Client>()
  const settings = {
    pool: transport.pool,
    timeouts: { ...DEFAULTS.timeouts, connect: Math.min(opts.timeout, connectTimeout), headers: opts.timeout, body: opts.timeout },
    tls,
    protocol: transport.protocol,
    http2: { ...transport.http2, maxStreams: 1 }
  }
  const probe: Prober = async (target) => {
    let client = clients.get(target)
    if (client === undefined || client.draining) {
      if (client !== undefined) client.destroy().catch(() => {})
      const own = target.servername === undefined ? settings : { ...settings, tls: { ...tls, servername: target.servername } }
      client = new H2Client(target.origin, own, own.http2, transport.protocol === 'auto')
      clients.set(target, client)
    }
    const grpc = opts.grpc
    try {
      const answer = await exchangeOn(client, grpc === null
        ? { method: opts.method as 'GET', path: opts.path, headers: { ...opts.headers, host: target.host, 'user-agent': 'fastify-sssonector-health-check' }, body: null }
        : { method: 'POST', path: opts.path, headers: { ...opts.headers, host: target.host, 'content-type': 'application/grpc', te: 'trailers', 'user-agent': 'fastify-sssonector-health-check' }, body: healthCheckRequest(grpc) },
      opts.timeout)
      if (grpc === null) {
        const [from, to] = opts.expectedStatus
        return { ok: answer.status >= from && answer.status <= to, connected: true, reason: `status ${answer.status}` }
      }
      const code = String(answer.trailers['grpc-status'] ?? answer.headers['grpc-status'] ?? '')
      if (code !== '0') return { ok: false, connected: true, reason: `grpc-status ${code === '' ? 'missing' : code}` }
      const serving = healthCheckStatus(answer.body)
      return { ok: serving === 1, connected: true, reason: serving === 1 ? 'SERVING' : `health status ${serving}` }
    } catch (err) {
      const reason = categorize(err)
      return { ok: false, connected: !CONNECT_FAILURES.has(reason) && reason !== 'refused', reason }
    }
  }
  return { probe, ...forgetting(clients) }
}

/** A probe of its own: one undici Client per target, never a pooled socket (an HTTP/2 connection of its own for HTTP/2 upstreams). */
export function httpProber (opts: ResolvedHealthCheck, tls: TlsOptions, connectTimeout: number, transport?: ProbeTransport): { probe: Prober, forget: (t: Target) => Promise<void>, close: () => Promise<void> } {
  if (transport !== undefined && transport.protocol !== 'http1') return h2Prober(opts, tls, connectTimeout, transport)
  const clients = new Map<Target, Client>()
  const probe: Prober = async (target) => {
    let client = clients.get(target)
    if (client === undefined) {
      client = new Client(target.origin, {
        pipelining: 1,
        headersTimeout: opts.timeout,
        bodyTimeout: opts.timeout,
        connect: {
          timeout: Math.min(opts.timeout, connectTimeout),
          rejectUnauthorized: tls.rejectUnauthorized ?? true,
          ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
          ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
          ...(tls.key !== undefined ? { key: tls.key } : {}),
          ...(target.servername !== undefined ? { servername: target.servername } : {})
        }
      })
      clients.set(target, client)
    }
    try {
      const res = await client.request({
        method: opts.method as 'GET',
        path: opts.path,
        headers: { ...opts.headers, host: target.host, 'user-agent': 'fastify-sssonector-health-check' }
      })
      await res.body.dump()
      const [from, to] = opts.expectedStatus
      return { ok: res.statusCode >= from && res.statusCode <= to, connected: true, reason: `status ${res.statusCode}` }
    } catch (err) {
      const reason = categorize(err)
      return { ok: false, connected: !CONNECT_FAILURES.has(reason), reason }
    }
  }
  return { probe, ...forgetting(clients) }
}

interface Watch {
  target: Target
  counter: ProbeCounter
  timer: NodeJS.Timeout | null
  running: boolean
}

/**
 * Active health checks of an upstream's targets: each on its own timer
 * (setTimeout re-armed after each probe, unref'ed, so probes never pile up),
 * at `interval` (or `unhealthyInterval` while down) plus up to 10% of jitter,
 * so many targets' probes do not fire together.
 */
export class HealthChecker {
  readonly #opts: ResolvedHealthCheck
  readonly #probe: Prober
  readonly #random: () => number
  readonly #onResult: (target: Target, result: ProbeResult, epoch: number) => void
  readonly #watches = new Map<Target, Watch>()
  #stopped = false

  constructor (opts: ResolvedHealthCheck, probe: Prober, random: () => number, onResult: (target: Target, result: ProbeResult, epoch: number) => void) {
    this.#opts = opts
    this.#probe = probe
    this.#random = random
    this.#onResult = onResult
  }

  /** Starts watching these targets; resolves when each has had its first probe (each bounded by the probe timeout). */
  async start (targets: readonly Target[]): Promise<void> {
    await Promise.all(targets.map(async (t) => await this.add(t)))
  }

  /** Watches a target: probes it now, then on its timer. Resolves after the first probe. */
  async add (target: Target): Promise<void> {
    if (this.#stopped || this.#watches.has(target)) return
    const w: Watch = { target, counter: new ProbeCounter(this.#opts.healthyThreshold, this.#opts.unhealthyThreshold), timer: null, running: false }
    this.#watches.set(target, w)
    await this.#run(w)
  }

  remove (target: Target): void {
    const w = this.#watches.get(target)
    if (w === undefined) return
    this.#watches.delete(target)
    if (w.timer !== null) clearTimeout(w.timer)
  }

  async #run (w: Watch): Promise<void> {
    w.timer = null
    w.running = true
    // The probe's result speaks of the state it started in (a probe begun before an outage says nothing of it).
    const epoch = w.target.probeStarted()
    const result = await this.#probe(w.target)
    w.running = false
    if (this.#stopped || this.#watches.get(w.target) !== w) return
    const move = w.counter.record(result.ok, w.target.hcDown)
    if (move !== null) w.target.setActiveHealth(move === 'down', `${move === 'down' ? 'failed' : 'passed'} active check: ${result.reason}`)
    this.#onResult(w.target, result, epoch)
    const base = w.target.hcDown ? this.#opts.unhealthyInterval : this.#opts.interval
    w.timer = setTimeout(() => { this.#run(w).catch(() => {}) }, base + Math.floor(this.#random() * base * 0.1))
    w.timer.unref()
  }

  stop (): void {
    this.#stopped = true
    for (const w of this.#watches.values()) if (w.timer !== null) clearTimeout(w.timer)
    this.#watches.clear()
  }
}

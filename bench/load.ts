// The load generator: autocannon's programmatic API, with latencies kept in
// full precision (autocannon's own histogram rounds them to whole ms, too
// coarse for a sub-millisecond loopback hop).
import { createRequire } from 'node:module'
import type { EventEmitter } from 'node:events'
import type { RequestSpec } from './scenarios.js'

interface AutocannonOptions {
  url: string | string[]
  connections: number
  pipelining: number
  duration: number
  timeout: number
  method: string
  path?: string
  headers?: Record<string, string>
  body?: string
}

interface AutocannonResult {
  duration: number
  errors: number
  timeouts: number
  non2xx: number
  statusCodeStats: Record<string, { count: number }>
  requests: { sent: number }
}

interface AutocannonInstance extends EventEmitter {
  stop: () => void
}

type Autocannon = (opts: AutocannonOptions, cb: (err: Error | null, result: AutocannonResult) => void) => AutocannonInstance

const require = createRequire(import.meta.url)
const autocannon = require('autocannon') as Autocannon

export interface LoadOptions {
  urls: string[]
  request: RequestSpec
  connections: number
  pipelining: number
  /** seconds */
  duration: number
  /** also the latency of the responses that came `splitAt` ms or more after the start (LoadResult#latencyAfter) */
  splitAt?: number
}

export interface LoadResult {
  /** completed responses (any status) per second */
  rps: number
  responses: number
  /** 2xx responses */
  ok: number
  /** latency of every response (any status), ms */
  latency: { mean: number, p50: number, p90: number, p99: number, p999: number, max: number }
  /** connection errors, timeouts included */
  errors: number
  timeouts: number
  non2xx: number
  /** requests written */
  sent: number
  /**
   * requests lost without an answer or an error: the server closed the
   * connection under them (autocannon reconnects silently). Sent, less
   * answered, less errors, less the one request per connection (and per
   * pipelined slot) still out when the run stopped.
   */
  dropped: number
  /** 2xx / (responses + errors + dropped) */
  success: number
  statusCodes: Record<string, number>
  seconds: number
  /** with LoadOptions#splitAt: the latency of the responses from then on, ms */
  latencyAfter?: LoadResult['latency']
}

const running = new Set<AutocannonInstance>()

/** Stops every load run in progress (they still resolve, with what they got). */
export function stopAllLoad (): void {
  for (const instance of running) instance.stop()
}

export async function runLoad (opts: LoadOptions): Promise<LoadResult> {
  let latencies = new Float64Array(1 << 16)
  let count = 0
  const splitAt = opts.splitAt
  let later = new Float64Array(splitAt === undefined ? 0 : 1 << 16)
  let laterCount = 0
  const startedAt = performance.now()
  return await new Promise<LoadResult>((resolve, reject) => {
    const instance = autocannon({
      url: opts.urls.map((u) => new URL(opts.request.path, u).href),
      connections: opts.connections,
      pipelining: opts.pipelining,
      duration: opts.duration,
      timeout: 10,
      method: opts.request.method,
      ...(opts.request.headers !== undefined ? { headers: opts.request.headers } : {}),
      ...(opts.request.body !== undefined ? { body: opts.request.body } : {})
    }, (err, result) => {
      running.delete(instance)
      if (err !== null) {
        reject(err)
        return
      }
      const sorted = latencies.subarray(0, count).sort()
      const statusCodes: Record<string, number> = {}
      let ok = 0
      for (const [code, stat] of Object.entries(result.statusCodeStats ?? {})) {
        statusCodes[code] = Number(stat.count)
        if (code.startsWith('2')) ok += Number(stat.count)
      }
      const sent = Number(result.requests?.sent ?? 0)
      const dropped = Math.max(0, sent - count - result.errors - opts.connections * opts.pipelining)
      const attempts = count + result.errors + dropped
      resolve({
        rps: result.duration > 0 ? count / result.duration : 0,
        responses: count,
        ok,
        latency: latencyOf(sorted),
        errors: result.errors,
        timeouts: result.timeouts,
        non2xx: result.non2xx,
        sent,
        dropped,
        success: attempts > 0 ? ok / attempts : 0,
        statusCodes,
        seconds: result.duration,
        ...(splitAt !== undefined ? { latencyAfter: latencyOf(later.subarray(0, laterCount).sort()) } : {})
      })
    })
    running.add(instance)
    instance.on('response', (_client: unknown, _status: number, _bytes: number, ms: number) => {
      if (count === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2)
        bigger.set(latencies)
        latencies = bigger
      }
      latencies[count++] = ms
      if (splitAt !== undefined && performance.now() - startedAt >= splitAt) {
        if (laterCount === later.length) {
          const bigger = new Float64Array(later.length * 2)
          bigger.set(later)
          later = bigger
        }
        later[laterCount++] = ms
      }
    })
  })
}

/** The latency figures of sorted latencies (ms). */
export function latencyOf (sorted: Float64Array): LoadResult['latency'] {
  const n = sorted.length
  return {
    mean: n > 0 ? sorted.reduce((a, b) => a + b, 0) / n : 0,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    p999: percentile(sorted, 99.9),
    max: n > 0 ? sorted[n - 1]! : 0
  }
}

/** Nearest-rank percentile of sorted values. */
export function percentile (sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0
  // the epsilon keeps 99.9% of 1000 at rank 999 despite binary fractions
  const rank = Math.ceil((p / 100) * sorted.length - 1e-9)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!
}

// The fixed-rate load generator: requests sent on a schedule (open loop, as
// wrk2 and Nighthawk do), whatever the answers, over a pool of keep-alive
// connections. A request's latency runs from the moment the schedule meant to
// send it, so a slow answer that holds a connection up counts for every
// request that waited behind it (no coordinated omission). The tails measured
// this way are the tails a client sees at that load, not those of a server
// driven past its capacity.
import { Pool } from 'undici'
import type { Dispatcher } from 'undici'
import { latencyOf, percentile } from './load.js'
import type { LoadResult } from './load.js'
import type { RequestSpec } from './scenarios.js'

export interface RateOptions {
  urls: string[]
  request: RequestSpec
  /** requests per second, spread evenly */
  rate: number
  /** seconds measured */
  duration: number
  /**
   * seconds at the same rate before the measure starts, on the same
   * connections: the client opens what the rate needs (a cold start opens
   * them all at once, a storm no steady client makes)
   */
  leadIn: number
  /** the most connections per URL (requests beyond them wait in the pool, and that wait counts) */
  connections: number
}

export interface RateResult extends LoadResult {
  /** the schedule's own lag: how late the generator sent, p99.9 and max, ms */
  lag: { p999: number, max: number }
  /** the latency of the 2xx answers alone (the requests a gateway admitted and the upstream served), ms */
  okLatency: LoadResult['latency']
  /** requests sent in the lead-in, before the measure (their upstream requests are not the measure's) */
  leadInSent: number
}

const TIMEOUT = 10_000
const running = new Set<() => void>()

/** Stops every fixed-rate run in progress (they still resolve, with what they got). */
export function stopAllRate (): void {
  for (const stop of running) stop()
}

export async function runAtRate (opts: RateOptions): Promise<RateResult> {
  const pools = opts.urls.map((u) => new Pool(new URL(u).origin, {
    connections: opts.connections,
    pipelining: 1,
    headersTimeout: TIMEOUT,
    bodyTimeout: TIMEOUT
  }))
  const skip = Math.round(opts.rate * opts.leadIn)
  const measured = Math.max(1, Math.round(opts.rate * opts.duration))
  const total = skip + measured
  const interval = 1000 / opts.rate
  const latencies = new Float64Array(measured)
  const okLatencies = new Float64Array(measured)
  const lags = new Float64Array(measured)
  const statusCodes: Record<string, number> = {}
  const path = opts.request.path
  const method = opts.request.method as Dispatcher.HttpMethod
  const headers = opts.request.headers
  const body = opts.request.body
  let count = 0
  let ok = 0
  let errors = 0
  let timeouts = 0
  let sent = 0
  let lagged = 0
  let settled = 0
  let stopped = false

  const startedAt = performance.now()
  const measureFrom = startedAt + skip * interval
  const result = await new Promise<{ seconds: number }>((resolve) => {
    let timer: NodeJS.Timeout | null = null
    const finish = (): void => {
      if (settled === sent && (sent === total || stopped)) {
        running.delete(stop)
        resolve({ seconds: Math.max(0, performance.now() - measureFrom) / 1000 })
      }
    }
    const stop = (): void => {
      stopped = true
      if (timer !== null) clearTimeout(timer)
      finish()
    }
    running.add(stop)

    const send = (due: number): void => {
      const i = sent++
      const recorded = i >= skip
      if (recorded) lags[lagged++] = performance.now() - due
      const pool = pools[i % pools.length]!
      pool.request({ path, method, ...(headers !== undefined ? { headers } : {}), ...(body !== undefined ? { body } : {}) }).then(async (res) => {
        await res.body.dump({ limit: Infinity })
        if (!recorded) return
        const latency = latencies[count++] = performance.now() - due
        const code = String(res.statusCode)
        statusCodes[code] = (statusCodes[code] ?? 0) + 1
        if (res.statusCode >= 200 && res.statusCode < 300) okLatencies[ok++] = latency
      }).catch((err: unknown) => {
        if (!recorded) return
        errors++
        const code = (err as { code?: unknown }).code
        if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') timeouts++
      }).finally(() => {
        settled++
        finish()
      })
    }

    const tick = (): void => {
      timer = null
      if (stopped) return
      const now = performance.now()
      const due = Math.min(total, Math.floor((now - startedAt) / interval) + 1)
      for (let i = sent; i < due; i++) send(startedAt + i * interval)
      if (sent < total) {
        const next = startedAt + sent * interval
        timer = setTimeout(tick, Math.max(0, next - performance.now()))
      } else {
        finish()
      }
    }
    tick()
  })
  await Promise.all(pools.map(async (p) => { await p.destroy() }))

  const sorted = latencies.subarray(0, count).sort()
  const lagSorted = lags.subarray(0, lagged).sort()
  const attempts = count + errors
  return {
    rps: result.seconds > 0 ? count / result.seconds : 0,
    responses: count,
    ok,
    latency: latencyOf(sorted),
    errors,
    timeouts,
    non2xx: count - ok,
    sent: lagged,
    dropped: 0,
    success: attempts > 0 ? ok / attempts : 0,
    statusCodes,
    seconds: result.seconds,
    lag: { p999: percentile(lagSorted, 99.9), max: lagged > 0 ? lagSorted[lagged - 1]! : 0 },
    okLatency: latencyOf(okLatencies.subarray(0, ok).sort()),
    leadInSent: Math.min(sent, skip)
  }
}

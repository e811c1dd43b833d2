import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { ErrorCategory, SharedStats, UpstreamStats } from '../types/index.js'

// Categories counted as connection errors (the seed's connection_errors).
const CONNECTION_CATEGORIES: readonly ErrorCategory[] = ['connect_refused', 'connect_timeout', 'dns', 'tls', 'reset', 'refused', 'headers_timeout', 'body_timeout', 'request_timeout', 'protocol', 'unknown']
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'error'] as const
const REJECT_CATEGORIES: readonly ErrorCategory[] = ['no_target', 'pool_exhausted']
const CLIENT_CATEGORIES: readonly ErrorCategory[] = ['client_abort', 'client_body', 'client_timeout', 'body_too_large', 'bad_request']
// The categories a retry can follow: a failed connect, a reset, a malformed answer, a retriable status.
const RETRY_CATEGORIES: readonly ErrorCategory[] = ['connect_refused', 'connect_timeout', 'dns', 'tls', 'reset', 'refused', 'protocol', 'http_5xx']
const UPGRADE_RESULTS: ReadonlyArray<keyof UpstreamStats['upgrades']> = ['ok', 'refused', 'failed', 'no_target', 'rejected']
const BREAKER_STATES = { closed: 0, open: 1, 'half-open': 2 } as const
const HEDGE_EVENTS = ['sent', 'won', 'cancelled', 'denied'] as const
const DISCOVERY_RESULTS = ['ok', 'empty', 'failed'] as const
const SHARED_EVENTS = ['sent', 'received', 'applied', 'ignored', 'dropped'] as const

/** Orders the series of a SeriesHistogram by their first observation, as prom-client lists its own. */
let observed = 0

/** One series of a SeriesHistogram: counts per bucket (not cumulative), sum and count. */
class Series {
  readonly labels: Readonly<Record<string, string>>
  readonly #bounds: readonly number[]
  readonly counts: Float64Array
  sum = 0
  count = 0
  /** When it had its first observation (since made, or reset). */
  first = 0

  constructor (labels: Record<string, string>, bounds: readonly number[]) {
    this.labels = labels
    this.#bounds = bounds
    this.counts = new Float64Array(bounds.length)
  }

  observe (value: number): void {
    if (!Number.isFinite(value)) return
    const bounds = this.#bounds
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]) {
        this.counts[i]++
        break
      }
    }
    this.sum += value
    if (this.count++ === 0) this.first = ++observed
  }

  clear (): void {
    this.counts.fill(0)
    this.sum = 0
    this.count = 0
  }
}

/**
 * A histogram for the request path: the caller keeps its series, so an
 * observation is a bucket search and three additions (prom-client's hashes
 * the label set on every call, about 6,000 instructions an attempt). Exported
 * through the registry as prom-client's own histograms are (text, JSON, and
 * the cluster aggregator's 'sum'); a series shows once it has an observation.
 */
class SeriesHistogram {
  readonly name: string
  readonly help: string
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  readonly bounds: readonly number[]
  readonly #series = new Map<string, Series>()

  constructor (name: string, help: string, bounds: readonly number[], registry: Registry) {
    this.name = name
    this.help = help
    this.bounds = bounds
    registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0])
  }

  static #key (labels: Record<string, string>): string {
    return JSON.stringify(labels)
  }

  /** The series of a label set (the same one for the same set). */
  series (labels: Record<string, string>): Series {
    const key = SeriesHistogram.#key(labels)
    let s = this.#series.get(key)
    if (s === undefined) this.#series.set(key, s = new Series(labels, this.bounds))
    return s
  }

  remove (labels: Record<string, string>): void {
    this.#series.delete(SeriesHistogram.#key(labels))
  }

  /** (the registry's resetMetrics()) */
  reset (): void {
    for (const s of this.#series.values()) s.clear()
  }

  async get (): Promise<{ name: string, help: string, type: 'histogram', aggregator: 'sum', values: Array<{ labels: Record<string, string | number>, value: number, metricName: string, exemplar?: null }> }> {
    const values: Array<{ labels: Record<string, string | number>, value: number, metricName: string, exemplar?: null }> = []
    const bucket = `${this.name}_bucket`
    const shown = [...this.#series.values()].filter((s) => s.count !== 0).sort((a, b) => a.first - b.first)
    for (const s of shown) {
      let acc = 0
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.counts[i]
        values.push({ labels: { le: this.bounds[i], ...s.labels }, value: acc, metricName: bucket, exemplar: null })
      }
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: bucket, exemplar: null })
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` })
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }
}

/** What the metrics read: an upstream's stats, nothing else. */
export interface StatsSource {
  readonly name: string
  stats (): UpstreamStats
}

/** One target's series, with label sets built once: the request path only observes and increments. */
export interface TargetMeter {
  /** An attempt ended: status class index (status / 100 - 1, or 5 for a failure) and seconds. */
  attempt (statusClass: number, seconds: number): void
  connectionOpened (): void
  /** `age`: ms the connection was open. */
  connectionClosed (age: number): void
}

/** Where upstreams get their targets' meters, and count their retries. */
export interface Meter {
  /** The meter of one target, by its URL. */
  target (upstream: string, target: string): TargetMeter
  retry (upstream: string, reason: ErrorCategory): void
  /** A target is gone: its series go too. */
  forget (upstream: string, target: string): void
  /** A tunnel closed after `seconds` open. */
  tunnelClosed (upstream: string, seconds: number): void
}

export interface MetricsOptions {
  prefix: string
  registry: Registry | undefined
  defaultMetrics: boolean
}

/**
 * prom-client metrics on an injected Registry (or one of the plugin's own,
 * never the global one). Point-in-time values (connections, queue, health,
 * breaker, counts kept by the pools) are read from the upstreams' `stats()`
 * in collect(), once per scrape; the request path only observes histograms
 * and increments counters through label sets made once per target.
 */
export class Metrics implements Meter {
  readonly registry: Registry
  readonly #prefix: string
  #sources: readonly StatsSource[] = []
  #snapshot: UpstreamStats[] | null = null
  readonly #duration: SeriesHistogram
  readonly #age: Histogram<'upstream' | 'target'>
  readonly #opened: Counter<'upstream' | 'target'>
  readonly #retries: Counter<'upstream' | 'reason'>
  readonly #tunnelDuration: Histogram<'upstream'>

  /** Shared target state, when on: its two series are made on the first call. */
  watchShared (shared: { stats: () => SharedStats }): void {
    const registers = [this.registry]
    const prefix = this.#prefix
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}shared_state_connected`,
      help: '1 while shared target state is connected (Redis: both connections; cluster: the IPC channel to the primary); 0 while this replica runs on its own state',
      aggregator: 'min',
      registers,
      collect () { this.set(shared.stats().connected ? 1 : 0) }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}shared_reports_total`,
      help: 'Target reports of shared state, by event: sent, received (from peers), applied (to a target here), ignored (another version, an unknown target, a clock off by more than 5 s), dropped (not sent: disconnected, or too many in flight)',
      labelNames: ['event'],
      registers,
      collect () {
        this.reset()
        const s = shared.stats()
        for (const event of SHARED_EVENTS) this.inc({ event }, s[event])
      }
    })
  }

  constructor (opts: MetricsOptions) {
    const registry = this.registry = opts.registry ?? new Registry()
    const registers = [registry]
    const prefix = this.#prefix = opts.prefix
    const ups = (): UpstreamStats[] => this.#stats()
    if (opts.defaultMetrics) collectDefaultMetrics({ register: registry, prefix })
    // In node:cluster, prom-client's AggregatorRegistry merges the workers'
    // series by each metric's `aggregator`: counters, histograms and counts of
    // connections and requests add up ('sum', the default); a state says what
    // the worst worker sees ('max': panic in any worker, a cause flagged in
    // any, a breaker not closed in any; 'min': healthy only where every worker
    // has it healthy), so it stays 0 or 1, never 2.

    // The seed's four, by their exact names (its two counters have no `_total`;
    // every other counter here follows the convention). Counters with a known
    // label set start at 0, so a rate() sees their first increment.
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}pool_active_connections`,
      help: 'Connections to each target in use now',
      labelNames: ['upstream', 'target'],
      aggregator: 'sum',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.busy)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}pool_idle_connections`,
      help: 'Idle keep-alive connections to each target',
      labelNames: ['upstream', 'target'],
      aggregator: 'sum',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.idle)
      }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}pool_connection_errors`,
      help: 'Failed attempts on each target, by reason (the error category)',
      labelNames: ['upstream', 'target', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) {
          for (const t of u.targets) {
            for (const reason of CONNECTION_CATEGORIES) this.inc({ upstream: u.name, target: t.url, reason }, t.errors[reason] ?? 0)
          }
        }
      }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}pool_health_check_failures`,
      help: 'Failed active health checks of each target',
      labelNames: ['upstream', 'target'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.inc({ upstream: u.name, target: t.url }, t.healthCheckFailures)
      }
    })

    // Beside them.
    this.#opened = new Counter({
      name: `${prefix}pool_connections_opened_total`,
      help: 'Connections opened to each target',
      labelNames: ['upstream', 'target'],
      registers
    })
    this.#age = new Histogram({
      name: `${prefix}pool_connection_age_seconds`,
      help: 'How long connections were open, observed when they close',
      labelNames: ['upstream', 'target'],
      buckets: [0.1, 1, 5, 15, 60, 300, 900, 3600],
      registers
    })
    this.#duration = new SeriesHistogram(
      `${prefix}request_duration_seconds`,
      'Duration of each attempt to a target, to its answer\'s end, by status class (error: no answer), on a monotonic sub-millisecond clock',
      // From a quarter of a millisecond: an attempt on loopback or in one rack takes less than 1 ms.
      [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registry
    )
    this.#retries = new Counter({
      name: `${prefix}request_retries_total`,
      help: 'Retries, by the reason of the attempt retried',
      labelNames: ['upstream', 'reason'],
      registers
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}requests_rejected_total`,
      help: 'Requests refused at admission, by reason',
      labelNames: ['upstream', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const reason of REJECT_CATEGORIES) this.inc({ upstream: u.name, reason }, u.rejected[reason] ?? 0)
      }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}client_errors_total`,
      help: 'Requests that failed by the client\'s own fault (a bad, abandoned or slow body, a hang-up), by reason: never counted against a target',
      labelNames: ['upstream', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const reason of CLIENT_CATEGORIES) this.inc({ upstream: u.name, reason }, u.clientErrors[reason] ?? 0)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}tunnels_active`,
      help: 'Tunnels (proxied WebSockets) open to each target now, their upgrade under way or done',
      labelNames: ['upstream', 'target'],
      aggregator: 'sum',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.tunnels)
      }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}upgrades_total`,
      help: 'WebSocket (HTTP Upgrade) requests on the proxy routes, by result: ok (101, tunnel opened), refused (the target answered another status, passed on), failed (every attempt failed), no_target, rejected (maxTunnels reached, or closing)',
      labelNames: ['upstream', 'result'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const result of UPGRADE_RESULTS) this.inc({ upstream: u.name, result }, u.upgrades[result])
      }
    })
    this.#tunnelDuration = new Histogram({
      name: `${prefix}tunnel_duration_seconds`,
      help: 'How long each tunnel (proxied WebSocket) stayed open, from its 101 to its close',
      labelNames: ['upstream'],
      buckets: [0.1, 1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400],
      registers
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}hedges_total`,
      help: 'Hedged requests, of upstreams with hedge on, by event (each a count of its own): sent, won (requests the hedge answered), cancelled (attempts that lost the race), denied (no room in the hedge budget before the request ended)',
      labelNames: ['upstream', 'event'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) {
          const h = u.hedges
          if (h !== null) for (const event of HEDGE_EVENTS) this.inc({ upstream: u.name, event }, h[event])
        }
      }
    })
    // Discovery: upstreams with `discovery` only.
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}discovery_refreshes_total`,
      help: 'Discovery lookups of each upstream with discovery, by result: ok (a list put in force), empty (no target in the answer: the last good list is kept up to maxStale), failed (an error or a timeout: the last good list is kept)',
      labelNames: ['upstream', 'result'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) {
          const d = u.discovery
          if (d !== null) for (const result of DISCOVERY_RESULTS) this.inc({ upstream: u.name, result }, d.refreshes[result])
        }
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}discovery_last_good_timestamp_seconds`,
      help: 'When each upstream\'s discovery last gave a list (seconds since the epoch; 0 before the first)',
      labelNames: ['upstream'],
      aggregator: 'min',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) if (u.discovery !== null) this.set({ upstream: u.name }, (u.discovery.lastGood ?? 0) / 1000)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}target_info`,
      help: 'Always 1: each target with the Host it is sent (host: the name it serves, where its target label is the address it is reached at)',
      labelNames: ['upstream', 'target', 'host'],
      aggregator: 'max',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url, host: t.host }, 1)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}pool_pending_requests`,
      help: 'Requests waiting in each upstream\'s queue for a connection',
      labelNames: ['upstream'],
      aggregator: 'sum',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) this.set({ upstream: u.name }, u.pending)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}upstream_active_requests`,
      help: 'Requests admitted to each upstream and not yet finished',
      labelNames: ['upstream'],
      aggregator: 'sum',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) this.set({ upstream: u.name }, u.active)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}upstream_panic`,
      help: '1 while the upstream is in panic (too few healthy targets)',
      labelNames: ['upstream'],
      aggregator: 'max',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) this.set({ upstream: u.name }, u.panic ? 1 : 0)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}target_healthy`,
      help: '1 while no cause keeps the target out (see target_health_cause); 0 from a failure until it is back: a target whose connects failed stays 0 while its trial is due, until a trial succeeds',
      labelNames: ['upstream', 'target'],
      aggregator: 'min',
      registers,
      collect () {
        this.reset()
        // Not `available` (may the balancer pick it now): that turns true as soon
        // as a down target's trial is due, and under light traffic a dead target
        // would read 1 most of the time. Healthy is what the panic threshold
        // counts: not down (skipped or trying), not failing its active checks,
        // not ejected, not draining.
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.health.length === 0 ? 1 : 0)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}target_health_cause`,
      help: '1 for each cause flagged on the target: connect_failed, circuit_open (until a trial succeeds), active_health, ejected, draining, peer (another replica\'s report, shared state)',
      labelNames: ['upstream', 'target', 'cause'],
      aggregator: 'max',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) for (const h of t.health) this.set({ upstream: u.name, target: t.url, cause: h.cause }, 1)
      }
    })
    // The peak-EWMA balancer's score of each target (see peak-ewma.ts).
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}target_latency_estimate_seconds`,
      help: 'Peak-EWMA latency estimate of each target: its slowest recent answer, decaying over 10 s',
      labelNames: ['upstream', 'target'],
      aggregator: 'average',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.score.estimate / 1000)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}target_failure_penalty_seconds`,
      help: 'Penalty the peak-EWMA balancer adds to each target\'s latency estimate for its recent failures (5xx and 429 answers, connection errors): (estimate x 100 + 5 s x f) x f, f the share of its last ~10 attempts that failed, held at 1 until a Retry-After',
      labelNames: ['upstream', 'target'],
      aggregator: 'average',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.score.penalty / 1000)
      }
    })
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}circuit_breaker_state`,
      help: 'Breaker of each target: 0 closed, 1 open, 2 half-open',
      labelNames: ['upstream', 'target'],
      aggregator: 'max',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) {
          for (const t of u.targets) {
            if (t.breaker !== null) this.set({ upstream: u.name, target: t.url }, BREAKER_STATES[t.breaker.state])
          }
        }
      }
    })

    // Adaptive concurrency (Envoy's gradient controller stats), for the upstreams that have it.
    const adaptive: Array<[string, string, 'sum' | 'average' | 'max', (a: NonNullable<UpstreamStats['adaptiveConcurrency']>) => number | null]> = [
      ['adaptive_concurrency_limit', 'Requests the upstream lets in flight now, by its adaptive concurrency limit', 'sum', (a) => a.limit],
      ['adaptive_concurrency_min_rtt_seconds', 'The minimum round-trip time the adaptive limit last measured', 'average', (a) => a.minRtt === null ? null : a.minRtt / 1000],
      ['adaptive_concurrency_sample_rtt_seconds', 'The last sample window\'s latency (its percentile) that the adaptive limit compared with the minimum', 'average', (a) => a.sampleRtt === null ? null : a.sampleRtt / 1000],
      ['adaptive_concurrency_gradient', 'The adaptive limit\'s last gradient: buffered minimum RTT over sample RTT, 0.5 to 2', 'average', (a) => a.gradient],
      ['adaptive_concurrency_measuring_min_rtt', '1 while the minimum RTT is measured (the limit at its minimum)', 'max', (a) => a.measuringMinRtt ? 1 : 0]
    ]
    for (const [name, help, aggregator, read] of adaptive) {
      new Gauge({ // eslint-disable-line no-new
        name: `${prefix}${name}`,
        help,
        labelNames: ['upstream'],
        aggregator,
        registers,
        collect () {
          this.reset()
          for (const u of ups()) {
            const v = u.adaptiveConcurrency === null ? null : read(u.adaptiveConcurrency)
            if (v !== null) this.set({ upstream: u.name }, v)
          }
        }
      })
    }
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}adaptive_concurrency_limited_total`,
      help: 'Requests that found the adaptive concurrency limit reached at admission (they queued, or got 503 POOL_EXHAUSTED)',
      labelNames: ['upstream'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) if (u.adaptiveConcurrency !== null) this.inc({ upstream: u.name }, u.adaptiveConcurrency.limited)
      }
    })
    // Keep-alive learned from each target: its own idle timeout, from the idle connections it closed.
    new Gauge({ // eslint-disable-line no-new
      name: `${prefix}pool_learned_idle_timeout_seconds`,
      help: 'The idle timeout each target was seen to keep (it closed idle connections at this idle age, with no Keep-Alive hint); the pool retires idle connections a margin before it. No series while nothing is learned',
      labelNames: ['upstream', 'target'],
      aggregator: 'min',
      registers,
      collect () {
        this.reset()
        for (const u of ups()) {
          for (const t of u.targets) {
            if (t.keepAlive.learned !== null) this.set({ upstream: u.name, target: t.url }, t.keepAlive.learned / 1000)
          }
        }
      }
    })
    new Counter({ // eslint-disable-line no-new
      name: `${prefix}pool_idle_closes_by_target_total`,
      help: 'Idle keep-alive connections each target closed while they sat in the pool',
      labelNames: ['upstream', 'target'],
      registers,
      collect () {
        this.reset()
        for (const u of ups()) for (const t of u.targets) this.inc({ upstream: u.name, target: t.url }, t.keepAlive.idleCloses)
      }
    })
  }

  /** The upstreams whose stats collect() reads. */
  watch (sources: readonly StatsSource[]): void {
    this.#sources = sources
    for (const s of sources) for (const reason of RETRY_CATEGORIES) this.#retries.inc({ upstream: s.name, reason }, 0)
  }

  /** Every upstream's stats, read once per scrape (the gauges of one scrape share them). */
  #stats (): UpstreamStats[] {
    if (this.#snapshot === null) {
      this.#snapshot = this.#sources.map((s) => s.stats())
      // prom-client runs every collect() at once, synchronously, when a scrape starts.
      queueMicrotask(() => { this.#snapshot = null })
    }
    return this.#snapshot
  }

  target (upstream: string, target: string): TargetMeter {
    const labels = { upstream, target }
    const classes = STATUS_CLASSES.map((c) => this.#duration.series({ ...labels, status_class: c }))
    const age = this.#age.labels(labels)
    const opened = this.#opened.labels(labels)
    this.#opened.inc(labels, 0)
    return {
      attempt (statusClass, seconds) { classes[statusClass].observe(seconds) },
      connectionOpened () { opened.inc() },
      connectionClosed (ms) { age.observe(ms / 1000) }
    }
  }

  retry (upstream: string, reason: ErrorCategory): void {
    this.#retries.inc({ upstream, reason })
  }

  tunnelClosed (upstream: string, seconds: number): void {
    this.#tunnelDuration.observe({ upstream }, seconds)
  }

  forget (upstream: string, target: string): void {
    const labels = { upstream, target }
    for (const c of STATUS_CLASSES) this.#duration.remove({ ...labels, status_class: c })
    this.#age.remove(labels)
    this.#opened.remove(labels)
  }
}

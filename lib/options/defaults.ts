import type { BalancePolicy, TlsOptions } from '../../types/index.js'
import type { FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'

// Defaults: the seed's values where it has them (pool), Envoy's elsewhere.
export const DEFAULTS = {
  pool: {
    maxActive: 1000,
    maxActivePerTarget: undefined as number | undefined, // = maxActive
    maxIdle: 100,
    idleTimeout: 5 * 60 * 1000, // 5m
    retryInterval: 5 * 1000, // 5s
    maxRetryInterval: 60 * 1000, // 1m
    maxRetries: 3,
    maxQueue: 1000,
    queueTimeout: 2 * 1000, // 2s
    maxRequestsPerConnection: 0, // no limit
    maxConnectionAge: 0, // off
    maxTunnels: 10_000
  },
  healthCheck: {
    path: undefined as string | undefined,
    method: 'GET',
    headers: {} as Record<string, string>,
    interval: 5 * 1000, // 5s
    unhealthyInterval: undefined as number | undefined, // = interval
    timeout: 2 * 1000, // 2s
    healthyThreshold: 2,
    unhealthyThreshold: 3,
    expectedStatus: [200, 399] as [number, number]
  },
  circuitBreaker: {
    consecutiveFailures: 5,
    failureRate: 0.5,
    window: 10 * 1000, // 10s
    minimumRequests: 20,
    halfOpenRequests: 1
  },
  outlierDetection: {
    interval: 10 * 1000, // 10s
    baseEjectionTime: 30 * 1000, // 30s
    maxEjectionTime: 5 * 60 * 1000, // 5m
    maxEjectionPercent: 50,
    minimumRequests: 20,
    failureRateFactor: 3,
    latencyFactor: 3
  },
  protocol: 'http1' as 'http1' | 'http2' | 'auto',
  http2: {
    maxStreams: 100,
    pingInterval: 10 * 1000, // 10s
    pingTimeout: 5 * 1000 // 5s
  },
  panicThreshold: 50, // percent, Envoy's default
  slowStart: 0, // off
  retry: {
    methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'],
    statusCodes: [502, 503, 504],
    baseDelay: 25, // 25ms
    maxDelay: 250, // 250ms
    budget: { percent: 20, minConcurrent: 3 },
    bufferBody: 64 * 1024, // 64 KiB
    // The draft's header: a client that sends it asks for retries to be safe (Stripe and others dedupe on it).
    idempotencyKey: 'Idempotency-Key' as string | false
  },
  // "The Tail at Scale": a backup request after the 95th percentile adds about 5% load.
  hedge: { delay: 'p95', budget: 5 },
  timeouts: {
    connect: 5 * 1000, // 5s
    headers: 30 * 1000, // 30s
    body: 30 * 1000, // 30s
    request: 0, // off
    clientBody: 60 * 1000, // 60s (NGINX's client_body_timeout)
    tunnelIdle: 60 * 60 * 1000, // 1h (HAProxy's timeout tunnel, as commonly set)
    tunnelDrain: 10 * 1000 // 10s
  },
  // Envoy's gradient controller defaults; the two intervals (required there) as its docs' example.
  adaptiveConcurrency: {
    sampleWindow: 100, // 100ms
    percentile: 50,
    minRttInterval: 60 * 1000, // 60s
    minRttRequests: 50,
    jitter: 15, // percent
    // percent: Envoy's default is 25, which with the √limit headroom let an
    // upstream of capacity 4 or 16 queue enough to take the admitted p99 to
    // 2.2-2.8 times the unloaded one (bench:concurrency); with 0 the headroom
    // alone probes upwards: 1.7-1.8 times, at the same throughput
    minRttBuffer: 0,
    minLimit: 3
    // maxLimit: pool.maxActive
  },
  metrics: { path: '/metrics', prefix: 'sssonector_' },
  // 30s between lookups (sooner when a DNS answer's TTL says so); 5s per lookup; an empty answer applied after 60s.
  discovery: { refresh: 30 * 1000, timeout: 5 * 1000, maxStale: 60 * 1000 },
  gracefulClose: { delay: 10 * 1000, preStop: 0 } // 10s, none
} as const

export interface ResolvedPool {
  maxActive: number
  maxActivePerTarget: number
  maxIdle: number
  idleTimeout: number
  retryInterval: number
  maxRetryInterval: number
  maxRetries: number
  maxQueue: number
  queueTimeout: number
  /** 0: no limit */
  maxRequestsPerConnection: number
  /** ms; 0: off */
  maxConnectionAge: number
  /** Tunnels open at once per upstream. */
  maxTunnels: number
}

export interface ResolvedHealthCheck {
  path: string
  /** The gRPC health protocol's service name; null: an HTTP probe of `path`. */
  grpc: string | null
  method: string
  headers: Record<string, string>
  interval: number
  unhealthyInterval: number
  timeout: number
  healthyThreshold: number
  unhealthyThreshold: number
  expectedStatus: [number, number]
}

export interface ResolvedCircuitBreaker {
  consecutiveFailures: number
  failureRate: number
  window: number
  minimumRequests: number
  halfOpenRequests: number
}

export interface ResolvedOutlierDetection {
  interval: number
  baseEjectionTime: number
  maxEjectionTime: number
  maxEjectionPercent: number
  minimumRequests: number
  failureRateFactor: number
  latencyFactor: number
}

export interface ResolvedRetry {
  methods: Set<string>
  statusCodes: Set<number>
  baseDelay: number
  maxDelay: number
  budget: { percent: number, minConcurrent: number }
  bufferBody: number
  /** The Idempotency-Key header's name, lower case; null: off. */
  idempotencyKey: string | null
}

export interface ResolvedHedge {
  /** ms, when `quantile` is null */
  delay: number
  /** 0 to 1: the delay is this quantile of the target's recent latency; null: `delay` */
  quantile: number | null
  /** percent of the requests that may be hedged */
  budget: number
  /** the methods that may be hedged (the retry policy's, or RFC 9110's idempotent ones when retry is off) */
  methods: Set<string>
}

export interface ResolvedTimeouts {
  connect: number
  headers: number
  body: number
  /** 0: off */
  request: number
  /** The longest gap between two chunks of the client's request body; 0: off */
  clientBody: number
  /** A tunnel with no byte either way for this long is closed; 0: off */
  tunnelIdle: number
  /** The tunnels of a target removed may go on this long. */
  tunnelDrain: number
}

export interface ResolvedAdaptiveConcurrency {
  /** How often the limit moves: the samples of one window make one step. */
  sampleWindow: number
  /** The percentile of a window's samples that stands for its latency. */
  percentile: number
  /** How often the minimum RTT is measured again (before jitter). */
  minRttInterval: number
  /** Samples a minimum RTT measurement takes. */
  minRttRequests: number
  /** Up to this percent of `minRttInterval` is added at random to each interval. */
  jitter: number
  /** Latency up to this percent over the minimum RTT still counts as unloaded. */
  minRttBuffer: number
  minLimit: number
  maxLimit: number
}

export interface ResolvedTarget {
  url: string
  origin: string
  weight: number
  /** The Host header it is sent: the `host` given, or the host of its URL. */
  host: string
  /** The TLS server name (SNI, certificate check): the name of a `host` given, null for the URL's own host or an address. */
  servername: string | null
}

/** When a discovery source is read (ms). */
interface ResolvedDiscoveryTimes {
  refresh: number
  timeout: number
  maxStale: number
}

/** What a DNS source (A/AAAA or SRV) is asked with. */
interface ResolvedDnsSource extends ResolvedDiscoveryTimes {
  name: string
  protocol: 'http' | 'https'
  family: 0 | 4 | 6
  servers: string[] | null
}

/** Where an upstream's targets come from (null: a static list). */
export type ResolvedDiscovery =
  | (ResolvedDnsSource & { kind: 'dns', port: number })
  | (ResolvedDnsSource & { kind: 'srv' })
  | (ResolvedDiscoveryTimes & { kind: 'discover', name: 'discover', discover: (signal: AbortSignal) => Promise<unknown> })

export interface ResolvedUpstream {
  name: string
  targets: ResolvedTarget[]
  discovery: ResolvedDiscovery | null
  balance: BalancePolicy
  hashKey: ((request: FastifyRequest) => string) | undefined
  pool: ResolvedPool
  /** null: no active checks */
  healthCheck: ResolvedHealthCheck | null
  /** null: disabled */
  circuitBreaker: ResolvedCircuitBreaker | null
  /** null: disabled */
  outlierDetection: ResolvedOutlierDetection | null
  /** percent; 0: never */
  panicThreshold: number
  /** ms; 0: off */
  slowStart: number
  /** null: disabled */
  retry: ResolvedRetry | null
  /** null: off */
  hedge: ResolvedHedge | null
  timeouts: ResolvedTimeouts
  tls: TlsOptions
  /** null: off */
  adaptiveConcurrency: ResolvedAdaptiveConcurrency | null
  protocol: 'http1' | 'http2' | 'auto'
  http2: ResolvedHttp2
}

export interface ResolvedHttp2 {
  maxStreams: number
  /** ms; 0: none */
  pingInterval: number
  pingTimeout: number
}

export interface ResolvedRoute {
  /** undefined: none given (the root, as @fastify/http-proxy) */
  prefix: string | undefined
  /** A name, a function of the request returning one, or a weighted split. */
  upstream: string | ((request: FastifyRequest) => string) | Array<{ name: string, weight: number }>
  sticky: ((request: FastifyRequest) => string | undefined) | undefined
  bodyLimit: number | undefined
  /** WebSocket upgrades are proxied on it. */
  websocket: boolean
  /** The remaining @fastify/http-proxy options, passed through. */
  proxy: Record<string, unknown>
}

export interface ResolvedOptions {
  upstreams: ResolvedUpstream[]
  routes: ResolvedRoute[]
  metrics: {
    path: string | false
    prefix: string
    registry: Registry | undefined
    defaultMetrics: boolean
    /** A guard run before the scrape route (auth). */
    onRequest: ((request: FastifyRequest, reply: unknown) => unknown) | undefined
    /** Served on a port of its own (on 127.0.0.1 unless `host`), apart from the app's. */
    port: number | undefined
    host: string
  }
  status: { path: string | false, onRequest: ((request: FastifyRequest, reply: unknown) => unknown) | undefined }
  gracefulClose: { delay: number, preStop: number } | false
  /** null: off */
  shared: { mode: 'redis' | 'cluster', url: string | null, key: string } | null
}

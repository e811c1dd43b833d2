/**
 * The public contract of fastify-sssonector: option and decorator types.
 * lib/ imports its public types from here, so contract and code cannot drift.
 */
import type { FastifyPluginAsync, FastifyRequest, LogLevel, onRequestHookHandler } from 'fastify'
import type { FastifyHttpProxyOptions } from '@fastify/http-proxy'
import type { Dispatcher } from 'undici'
import type { Readable } from 'node:stream'
import type { Registry } from 'prom-client'

/** A duration: a number is milliseconds; a string carries its unit: `'250ms'`, `'5s'`, `'5m'`, `'1h'`. */
export type Duration = number | `${number}${'ms' | 's' | 'm' | 'h'}`

/** Load-balancing policy of an upstream. */
export type BalancePolicy = 'round-robin' | 'least-request' | 'random' | 'consistent-hash' | 'peak-ewma'

/** A target: an `http(s)://host:port` origin, alone or with a weight and the name it serves. */
export type TargetInput = string | {
  url: string
  /** Relative share of traffic, an integer from 1 to 1000. @default 1 */
  weight?: number
  /**
   * The name the target serves, `name[:port]`, when `url` holds its address:
   * sent as the Host header and, over https, as the TLS server name (SNI) the
   * certificate is checked against, while connections go to the address.
   * @default the host of `url`
   */
  host?: string
}

/**
 * Where an upstream's targets come from instead of a static `targets` list:
 * A/AAAA records, SRV records, or a function of your own, refreshed while the
 * app runs and applied like `setTargets`.
 */
export type DiscoveryOptions = DnsDiscoveryOptions | SrvDiscoveryOptions | HookDiscoveryOptions

interface DiscoveryCommon {
  /** How often the source is read again; DNS answers are read again sooner when their TTL says so (never sooner than 1 s, or `refresh` if shorter). @default '30s' */
  refresh?: Duration
  /** Each lookup's bound; `ready()` waits this long for the first good answer, then fails. @default '5s' */
  timeout?: Duration
  /** How long the last good list is kept when the source answers with no target at all (after that, the empty answer is applied). @default '60s' */
  maxStale?: Duration
}

interface DnsCommon extends DiscoveryCommon {
  /** @default 'http' */
  protocol?: 'http' | 'https'
  /** DNS servers as `'address'` or `'address:port'`; the system's by default. */
  servers?: string[]
}

/** One target per A/AAAA address of `dns`, on `port`. */
export interface DnsDiscoveryOptions extends DnsCommon {
  dns: string
  /** @default 80 for http, 443 for https */
  port?: number
  /** 4: A records, 6: AAAA records, 0: both. @default 4 */
  family?: 4 | 6 | 0
}

/** One target per SRV record of `srv` (its port, its weight), those of the lowest priority that resolve. */
export interface SrvDiscoveryOptions extends DnsCommon {
  srv: string
  /** Which addresses of each record's name: 4: A, 6: AAAA, 0: both. @default 4 */
  family?: 4 | 6 | 0
}

/** Any source, polled: Consul, the Kubernetes API, a file. */
export interface HookDiscoveryOptions extends DiscoveryCommon {
  /** The targets now; `signal` aborts when the lookup times out or the app closes. */
  discover: (signal: AbortSignal) => Promise<TargetInput[]>
}

export interface PoolOptions {
  /** Connections open at once to one upstream, across its targets, busy or idle; over HTTP/2 (`protocol`), streams in flight. @default 1000 */
  maxActive?: number
  /** Connections open at once to one target (HAProxy `maxconn`); over HTTP/2, streams in flight on it. @default maxActive */
  maxActivePerTarget?: number
  /** Idle keep-alive connections kept per upstream. @default 100 */
  maxIdle?: number
  /** An idle connection is closed after this. @default '5m' */
  idleTimeout?: Duration
  /** A failed target is skipped this long, then given one trial; doubles while it keeps failing. @default '5s' */
  retryInterval?: Duration
  /** Cap of the doubling `retryInterval`. @default '1m' */
  maxRetryInterval?: Duration
  /** Retries after the first attempt, so at most `maxRetries + 1` attempts. @default 3 */
  maxRetries?: number
  /** Requests that may wait for a connection. @default 1000 */
  maxQueue?: number
  /** How long a request may wait for a connection before a 503. @default '2s' */
  queueTimeout?: Duration
  /**
   * A connection that served this many requests is closed rather than reused
   * (Envoy's `max_requests_per_connection`); an integer >= 1. @default off (no limit)
   */
  maxRequestsPerConnection?: number
  /**
   * A connection older than this is closed when it next goes idle (Envoy's
   * `max_connection_duration`), so connections move to new targets and addresses. @default off
   */
  maxConnectionAge?: Duration
  /**
   * WebSocket (and other HTTP Upgrade) tunnels open at once to one upstream,
   * counted apart from requests and their connections (each tunnel holds a
   * connection of its own to its target, outside the pool). An upgrade beyond
   * it gets 503 `POOL_EXHAUSTED` with `Retry-After`; upgrades never queue. @default 10000
   */
  maxTunnels?: number
}

export interface HealthCheckOptions {
  /** Probe path; active checks run only where it is given. */
  path?: string
  /** Probe method. @default 'GET' */
  method?: 'GET' | 'HEAD' | 'OPTIONS'
  /** Extra probe request headers. */
  headers?: Record<string, string>
  /** Time between probes of one target. @default '5s' */
  interval?: Duration
  /** Time between probes while the target is unhealthy. @default interval */
  unhealthyInterval?: Duration
  /** Probe timeout. @default '2s' */
  timeout?: Duration
  /** Good probes in a row that mark a target up. @default 2 */
  healthyThreshold?: number
  /** Failed probes in a row that mark a target down. @default 3 */
  unhealthyThreshold?: number
  /** Statuses counted as healthy, inclusive range. @default [200, 399] */
  expectedStatus?: [number, number]
  /**
   * Probe with the gRPC health protocol (`grpc.health.v1.Health/Check`) in place of `path`: the service
   * name to ask of (`''`: the server as a whole). Healthy when it answers SERVING. Needs `protocol` `'http2'` (or `'auto'` over TLS).
   */
  grpc?: string
}

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the breaker. @default 5 */
  consecutiveFailures?: number
  /** Failure ratio over `window` that opens the breaker (0 to 1). @default 0.5 */
  failureRate?: number
  /** Sliding window of the failure rate. @default '10s' */
  window?: Duration
  /** Requests in the window before the rate counts. @default 20 */
  minimumRequests?: number
  /** Trial requests let through while half-open. @default 1 */
  halfOpenRequests?: number
}

export interface OutlierDetectionOptions {
  /** How often targets are compared with their peers. @default '10s' */
  interval?: Duration
  /** Ejection time of a first ejection; it grows with each ejection (base x count, jittered). @default '30s' */
  baseEjectionTime?: Duration
  /** Cap of the ejection time. @default '5m' */
  maxEjectionTime?: Duration
  /** Never more than this percent of the targets ejected at once. @default 50 */
  maxEjectionPercent?: number
  /** Requests a target needs in an interval to be judged. @default 20 */
  minimumRequests?: number
  /** Ejected when its failure rate is this many times its peers' (and at least 10 points above). @default 3 */
  failureRateFactor?: number
  /** Ejected when its mean latency is this many times its peers' median (and at least 10 ms more). @default 3 */
  latencyFactor?: number
}

export interface RetryBudget {
  /** Retries in flight, as a percent of active requests. @default 20 */
  percent?: number
  /** Retries always allowed in flight. @default 3 */
  minConcurrent?: number
}

export interface RetryOptions {
  /** Methods that may be retried after a byte reached the upstream. @default ['GET','HEAD','OPTIONS','PUT','DELETE','TRACE'] */
  methods?: string[]
  /** Statuses retried on another target for the methods above. @default [502, 503, 504] */
  statusCodes?: number[]
  /** Base of the exponential backoff with full jitter. @default '25ms' */
  baseDelay?: Duration
  /** Cap of the backoff. @default '250ms' */
  maxDelay?: Duration
  /** Envoy's retry budget. @default { percent: 20, minConcurrent: 3 } */
  budget?: RetryBudget
  /** Request bodies up to this many bytes are kept for replay. @default 65536 */
  bufferBody?: number
  /**
   * A POST or PATCH carrying this header (draft-ietf-httpapi-idempotency-key-header)
   * is retried like the methods above when its body can be sent again; `false`: never.
   * @default 'Idempotency-Key'
   */
  idempotencyKey?: string | false
}

export interface TimeoutOptions {
  /** TCP (and TLS) connect. @default '5s' */
  connect?: Duration
  /** From the request sent to the response headers. @default '30s' */
  headers?: Duration
  /** Longest gap between response body chunks. @default '30s' */
  body?: Duration
  /** The whole exchange; `false` for none. @default false */
  request?: Duration | false
  /**
   * Longest gap between two chunks of a request body from the client (NGINX's
   * `client_body_timeout`); `false` for none. @default '60s'
   */
  clientBody?: Duration | false
  /**
   * A tunnel (a proxied WebSocket) with no byte either way for this long is
   * closed (HAProxy's `timeout tunnel`); `false` for none. @default '1h'
   */
  tunnelIdle?: Duration | false
  /**
   * How long the tunnels of a target being removed (`removeTarget`,
   * `setTargets`) may go on before they are closed; new ones go to other
   * targets at once. @default '10s'
   */
  tunnelDrain?: Duration
}

/** TLS settings for https targets. Certificates are always verified unless `rejectUnauthorized: false`. */
export interface TlsOptions {
  /** Trusted CA certificates (PEM), replacing Node's default set. */
  ca?: string | Buffer | Array<string | Buffer>
  /** Client certificate (PEM) for mutual TLS. */
  cert?: string | Buffer
  /** Client key (PEM) for mutual TLS. */
  key?: string | Buffer
  /** TLS server name (SNI and the name verified). @default the target's host */
  servername?: string
  /** Verify the target's certificate. @default true */
  rejectUnauthorized?: boolean
}

/**
 * Adaptive concurrency (Envoy's adaptive concurrency filter, gradient
 * controller): the requests an upstream lets in flight follow its measured
 * minimum RTT. Requests over the limit wait in the queue (`pool.maxQueue`,
 * `pool.queueTimeout`) or get 503 `POOL_EXHAUSTED`; `pool.maxActive` stays a
 * hard cap.
 */
export interface AdaptiveConcurrencyOptions {
  /** How often the limit moves, on the latencies of the requests completed in that window. @default '100ms' */
  sampleWindow?: Duration
  /** The percentile of a window's latencies compared with the minimum RTT (1 to 100). @default 50 */
  percentile?: number
  /** How often the minimum RTT is measured again (the limit drops to `minLimit` meanwhile). @default '60s' */
  minRttInterval?: Duration
  /** Requests a minimum RTT measurement takes. @default 50 */
  minRttRequests?: number
  /** Up to this percent of `minRttInterval` is added at random to each interval (0 to 100). @default 15 */
  jitter?: number
  /** Latency up to this percent over the minimum RTT counts as unloaded (0 to 1000; Envoy's default is 25). @default 0 */
  minRttBuffer?: number
  /** The limit never goes below this (nor the measurement's). @default 3 */
  minLimit?: number
  /** The limit never goes above this. @default pool.maxActive */
  maxLimit?: number
}

/** Settings that the top level gives as defaults and an upstream block may override key by key. */
export interface UpstreamDefaults {
  pool?: PoolOptions
  healthCheck?: HealthCheckOptions | false
  circuitBreaker?: CircuitBreakerOptions | false
  /** Ejection of targets that fail or lag far more than their peers (with 3 targets or more); `false` disables. @default on */
  outlierDetection?: OutlierDetectionOptions | false
  /** When fewer than this percent of targets are healthy, the judgement flags (active health, breaker, ejection) are ignored: traffic goes to all (Envoy's panic threshold). 0 disables. @default 50 */
  panicThreshold?: number
  /** A target that comes back or is added ramps its share up over this long. @default 0 (off) */
  slowStart?: Duration
  retry?: RetryOptions | false
  timeouts?: TimeoutOptions
  tls?: TlsOptions
  /** The limit of requests in flight follows the upstream's latency; `false` (or absent) for none. @default off */
  adaptiveConcurrency?: AdaptiveConcurrencyOptions | false
  /**
   * How targets are spoken to: `'http1'` (one request per connection at a time),
   * `'http2'` (multiplexed; over `http://`, h2c with prior knowledge; over `https://`, ALPN h2),
   * or `'auto'` (over `https://` ALPN offers h2 and http/1.1 and the target chooses; HTTP/1.1 over `http://`).
   * @default 'http1'
   */
  protocol?: UpstreamProtocol
  /** HTTP/2 connections (with `protocol` `'http2'` or `'auto'`). */
  http2?: Http2Options
}

export type UpstreamProtocol = 'http1' | 'http2' | 'auto'

export interface Http2Options {
  /** Streams at most on one connection; the target's SETTINGS_MAX_CONCURRENT_STREAMS may lower it. A new connection opens when every one is full. @default 100 */
  maxStreams?: number
  /** A PING goes out on each connection this often; `0` for none. @default '10s' */
  pingInterval?: Duration
  /** A PING unanswered this long closes its connection (its streams fail as resets and are retried as such). @default '5s' */
  pingTimeout?: Duration
}

/** An upstream: its targets, as a list (`targets`) or from `discovery`, one of the two. */
export type UpstreamOptions = UpstreamBase & ({
  /** The targets; may be empty when they come later from `addTarget` or `setTargets`. */
  targets: TargetInput[]
  discovery?: undefined
} | {
  targets?: undefined
  /** Targets from DNS (A/AAAA or SRV records) or a function of your own, refreshed and applied like `setTargets`. */
  discovery: DiscoveryOptions
})

export interface UpstreamBase extends UpstreamDefaults {
  /** @default 'peak-ewma' (see README, Balancing) */
  balance?: BalancePolicy
  /** The key for `consistent-hash`. */
  hashKey?: (request: FastifyRequest) => string
  /** Hedged requests (Envoy's hedge policy); `false` or absent: off. @default off */
  hedge?: HedgeOptions | false
}

/**
 * Hedged requests: an idempotent request (`retry.methods`) with no body or a
 * buffered one that has no response headers after `delay` gets a second
 * attempt on another target; the first answer wins, the other attempt is
 * cancelled (its connection closed) and not counted against its target.
 */
export interface HedgeOptions {
  /**
   * How long the first attempt may wait for its response headers: a duration,
   * or a percentile of its target's latency over the last minute (`'p95'`,
   * `'p99'`, `'p99.9'`; no hedge while that target has fewer than 20 attempts
   * in its window). @default 'p95'
   */
  delay?: Duration | `p${number}`
  /**
   * Hedges sent at most this percent of the requests that may be hedged (a
   * token bucket: each such request adds budget/100 of a hedge, 10 kept in
   * reserve at most, one at start). @default 5
   */
  budget?: number
}

/**
 * The @fastify/http-proxy options the pool owns; giving them fails registration
 * (`upstream` is taken over: a route's `upstream` is the name of one of the plugin's upstreams).
 */
export type PoolOwnedProxyOption =
  | 'upstream' | 'undici' | 'http' | 'http2' | 'base' | 'globalAgent' | 'destroyAgent' | 'balancedPoolOptions'
  | 'retryMethods' | 'maxRetriesOn503'
  | 'websocket' | 'wsUpstream' | 'wsHooks' | 'wsReconnect' | 'wsClientOptions' | 'wsServerOptions'

/** The @fastify/reply-from `replyOptions` the pool owns; giving them fails registration. */
export type PoolOwnedReplyOption = 'getUpstream' | 'retryDelay' | 'retriesCount' | 'maxRetriesOn503' | 'onError'

/** One upstream of a weighted split (Envoy's weighted clusters): its name and its share. */
export interface WeightedUpstream {
  name: string
  /** Its share of the route's requests, relative to the others' (an integer 0–1000; 0 takes none). */
  weight: number
}

/**
 * Which upstream serves a route: a name; a function of the request returning
 * a name (called once per request, after the app's `onRequest` hooks); or a
 * weighted split between upstreams, for canaries.
 */
export type RouteUpstream = string | ((request: FastifyRequest) => string) | WeightedUpstream[]

/** A proxy route: `prefix`, `upstream` (a name, a choice or a split), `rewritePrefix`, and the other @fastify/http-proxy options. */
export interface RouteOptions extends Omit<FastifyHttpProxyOptions, PoolOwnedProxyOption | 'replyOptions' | 'prefix'> {
  /** The path prefix the route serves. @default '' (the root, as @fastify/http-proxy) */
  prefix?: string
  /** The upstream that serves it: its name, a function of the request returning a name, or a weighted split. */
  upstream: RouteUpstream
  /**
   * With a weighted split: the request's key (a user id, a session cookie).
   * Requests with the same key go to the same upstream of the split (while
   * the weights stay); without a key (undefined) a request is split at random.
   */
  sticky?: (request: FastifyRequest) => string | undefined
  /** Largest request body in bytes; beyond it 413. @default the Fastify instance's bodyLimit */
  bodyLimit?: number
  /**
   * Proxies WebSocket (any HTTP Upgrade) requests on the route too, through the
   * upstream's pool: a tunnel slot (`pool.maxTunnels`), the balancer, failover
   * before the `101`, then a byte tunnel. @default false
   */
  websocket?: boolean
  /** Log level of the route's requests (Fastify's register option). @default the instance's */
  logLevel?: LogLevel
  /** @fastify/reply-from hooks, except those the pool owns (`PoolOwnedReplyOption`). */
  replyOptions?: Omit<NonNullable<FastifyHttpProxyOptions['replyOptions']>, PoolOwnedReplyOption>
}

export interface MetricsOptions {
  /** Path of the scrape route; `false` for no route (metrics still kept). @default '/metrics' */
  path?: string | false
  /** Prefix of every metric name. @default 'sssonector_' */
  prefix?: string
  /** A prom-client Registry to share; else the plugin makes its own. */
  registry?: Registry
  /** Also collect prom-client's default process metrics (with the same prefix). @default false */
  defaultMetrics?: boolean
  /** A guard run before the scrape (an onRequest hook: check a token, reply 401). */
  onRequest?: onRequestHookHandler
  /** Serve the metrics on a port of their own instead of the app's (0: any free port). */
  port?: number
  /** The address of that port. @default '127.0.0.1' */
  host?: string
}

export interface StatusOptions {
  /** Path of the status page: JSON for `Accept: application/json`, else an HTML page that refreshes itself. */
  path: string
  /** A guard run before it (an onRequest hook). */
  onRequest?: onRequestHookHandler
}

export interface GracefulCloseOptions {
  /** How long, from the signal, everything may take before the process exits 1. @default '10s' */
  delay?: Duration
  /**
   * After the signal, keep serving this long before closing, with
   * `app.sssonector.closing` true so a readiness route can fail and the load
   * balancer take the instance out first. @default 0
   */
  preStop?: Duration
}

export interface SssonectorOptions extends UpstreamDefaults {
  /** Upstreams by name. */
  upstreams: Record<string, UpstreamOptions>
  /** Proxy routes. @default [] */
  routes?: RouteOptions[]
  /** @default { path: '/metrics', prefix: 'sssonector_' } */
  metrics?: MetricsOptions | false
  /** A status page of every upstream and target, like HAProxy's. @default off */
  status?: StatusOptions | false
  /** @default { delay: '10s' } */
  gracefulClose?: GracefulCloseOptions | false
  /** Target state shared between replicas of one configuration: through Redis, or between node:cluster workers through the primary. @default off */
  shared?: SharedOptions | false
}

/**
 * Shared target state (see README, Scaling): when a target leaves rotation in
 * one replica (failed connects, breaker open, ejection, active health), the
 * others take it out too (cause `peer`) until that replica's deadline, and
 * back when it is back. Never on the request path.
 */
export type SharedOptions = {
  /** A Redis URL (`redis://` or `rediss://`): replicas meet on its pub/sub channel `<key>:targets`. */
  redis: string
  /** The namespace of the channel: replicas of one configuration share it, others must not. @default 'sssonector' */
  key?: string
  cluster?: undefined
} | {
  /** Between node:cluster workers, through the primary over IPC (the primary runs `relayClusterState()`). */
  cluster: true
  key?: string
  redis?: undefined
}

export interface SharedStats {
  /** Through what: `redis` or `cluster`. */
  mode: 'redis' | 'cluster'
  /** This replica's id, as its messages carry it. */
  replica: string
  /** Connected to Redis (both connections: publish and subscribe), or the IPC channel to the primary open. */
  connected: boolean
  /** Since when connected or not (ms since the epoch). */
  since: number
  /** Reports sent; received from peers (own echoes aside); applied to a target; ignored (another version, an unknown upstream or target, a clock off by more than 5 s); dropped (not sent: disconnected, or too many in flight). */
  sent: number
  received: number
  applied: number
  ignored: number
  dropped: number
}

/** What can fail an attempt or a request, as logged and counted. */
export type ErrorCategory =
  | 'connect_refused'
  | 'connect_timeout'
  | 'dns'
  | 'tls'
  | 'reset'
  /** HTTP/2: the target refused the stream, or its GOAWAY left it out: never processed, retried elsewhere whatever the method, not the target's failure. */
  | 'refused'
  | 'headers_timeout'
  | 'body_timeout'
  | 'request_timeout'
  | 'protocol'
  | 'http_5xx'
  | 'pool_exhausted'
  | 'circuit_open'
  | 'no_target'
  | 'body_too_large'
  | 'client_abort'
  | 'client_body'
  | 'client_timeout'
  | 'bad_request'
  | 'unknown'

/** Why a target is out of rotation: each cause is flagged apart. */
export type TargetHealthCause = 'connect_failed' | 'circuit_open' | 'active_health' | 'ejected' | 'draining' | 'peer'

export interface TargetStats {
  url: string
  origin: string
  /** The Host header it is sent (the name it serves; the host of `url` unless given or discovered). */
  host: string
  weight: number
  /** `up`, or `draining` while it is being removed. */
  state: 'up' | 'draining'
  /** Whether the balancer may pick it now. */
  available: boolean
  /**
   * Every cause keeping it out of rotation, with since and until when (ms
   * since the epoch, null when open-ended) and why (`connect_refused`,
   * `failures: status 503`, `status 500`, `removed`...).
   */
  health: Array<{ cause: TargetHealthCause, since: number | null, until: number | null, reason: string }>
  /** Its circuit breaker, with the successes and failures over its window; null when disabled. */
  breaker: { state: 'closed' | 'open' | 'half-open', ok: number, failed: number } | null
  /** Times it was ejected as an outlier. */
  ejections: number
  /** Ramping its share up after a return. */
  slowStart: boolean
  /** Recent mean latency of its attempts (ms) and their failure ratio (0 to 1), moving averages over about the last 20. */
  latency: number
  failureRatio: number
  /**
   * What the peak-EWMA balancer scores it at (kept whatever the policy): its
   * latency estimate (ms; the slowest recent answer, decaying over 10 s), its
   * penalty for recent failures (ms; (the estimate × 100 + 5 s × f) × f, f
   * the share of about its last 10 attempts that failed: 5xx and 429 answers,
   * failed connects, resets, timeouts), and until when a `Retry-After` holds that
   * share at 1 (ms since the epoch), or null. Its cost per pick is
   * (estimate + penalty) × (outstanding + 1) / weight.
   */
  score: { estimate: number, penalty: number, heldUntil: number | null }
  /**
   * Set while the target is skipped (after failed connects, or its breaker
   * opened): since and until when (ms since the epoch), the failures in a row,
   * whether a trial is in flight, and when the next trial may begin (ms since
   * the epoch; earlier than `until` for a quick trial while no target is in
   * rotation; in the past when one is due: the next request takes it).
   */
  down: { since: number, until: number, failures: number, trial: boolean, nextTrial: number } | null
  /** Requests on this target now (sent, response not finished). */
  active: number
  /** Tunnels (proxied WebSockets) open to this target now. */
  tunnels: number
  /** Connections in use now (handed to a request, busy or about to be); over HTTP/2, those carrying a stream. */
  busy: number
  /** Idle keep-alive connections. */
  idle: number
  /** Connections open (connecting, busy or idle). */
  connections: number
  /** Connections opened since start. */
  opened: number
  /** Connections closed since start. */
  closed: number
  /** Age (ms) of each connection open now. */
  connectionAges: number[]
  /**
   * The target's own idle timeout, learned from the idle connections it
   * closed with no `Keep-Alive` hint: `learned` (ms, null until one is seen,
   * or once a watched connection outlived `pool.idleTimeout`), `retireAt` (ms
   * of idle from which the pool closes a connection itself, before the
   * target can), `idleCloses` (idle connections it closed), `retired`
   * (connections the pool retired early).
   */
  keepAlive: { learned: number | null, retireAt: number | null, idleCloses: number, retired: number }
  /** Attempts sent to this target since start. */
  requests: number
  /** Its own failed attempts, by category (a client's faults and 5xx answers aside). */
  errors: Partial<Record<ErrorCategory, number>>
  /** Active probes that failed since start. */
  healthCheckFailures: number
  /** Milliseconds since the target was added. */
  age: number
  /** What its attempts came to over the last minute (they decay out of it). */
  window: TargetWindowStats
}

/**
 * A target's attempts over the last minute, from a rolling window of
 * one-second buckets. Attempts that a client's fault ended are not in it.
 */
export interface TargetWindowStats {
  /** Seconds the window covers (60). */
  seconds: number
  /** Attempts that ended in the window. */
  attempts: number
  /** Attempts per second, the mean over the last 10 seconds. */
  rate: number
  /** Answers by status class. */
  answers: { '1xx': number, '2xx': number, '3xx': number, '4xx': number, '5xx': number }
  /** Attempts that failed with no answer: connect refused or timed out, DNS, TLS, reset, timeouts, a malformed answer. */
  connectionErrors: number
  /** Its attempts that failed (an error, or a retriable 5xx answer) and were retried on another target. */
  retries: number
  /** Latency (ms) under which half, and 99%, of the attempts ended (an upper bound within 26%); null with no attempt. */
  p50: number | null
  p99: number | null
  /** Per second, oldest first (the current second last): attempts, and those that failed (5xx answers and connection errors). */
  series: { requests: number[], failures: number[] }
}

/** What an upgrade came to (see UpstreamStats#upgrades). */
export type UpgradeResult = 'ok' | 'refused' | 'failed' | 'no_target' | 'rejected'

export interface UpstreamStats {
  name: string
  balance: BalancePolicy
  /** How its targets are spoken to (the `protocol` option). */
  protocol: UpstreamProtocol
  /** Requests admitted and not yet released. */
  active: number
  /** Requests waiting for a connection (the queue; a request gets its target when it leaves it). */
  pending: number
  /** Fewer targets healthy than `panicThreshold`: traffic goes to all of them. */
  panic: boolean
  /** Connections open across the targets, and idle among them. */
  connections: number
  idle: number
  /** Requests admitted since start. */
  admitted: number
  /** Requests refused at admission, by category. */
  rejected: Partial<Record<ErrorCategory, number>>
  /** Requests that failed by the client's own fault (a bad, abandoned or slow body, a hang-up), by category: never counted against a target. */
  clientErrors: Partial<Record<ErrorCategory, number>>
  /** Counted retries in flight, against the retry budget. */
  retriesActive: number
  /** Tunnels (proxied WebSockets) open now, across the targets. */
  tunnels: number
  /**
   * Upgrades since start, by result: `ok` (101, tunnel open), `refused` (the
   * target answered something else, passed to the client), `failed` (every
   * attempt failed: 502/504), `no_target` (no target in rotation: 503),
   * `rejected` (`pool.maxTunnels` reached, or closing: 503).
   */
  upgrades: Record<UpgradeResult, number>
  /**
   * Hedged requests since start (null when `hedge` is off): hedges `sent`;
   * `won`, requests the hedge answered; `cancelled`, attempts that lost the
   * race (the first attempt or the hedge) and were cancelled; `denied`, hedges
   * the budget had no room for before their request ended (a hedge waits in
   * line for room while its first attempt runs).
   */
  hedges: { sent: number, won: number, cancelled: number, denied: number } | null
  /** The adaptive concurrency limit; null when `adaptiveConcurrency` is off. */
  adaptiveConcurrency: AdaptiveConcurrencyStats | null
  /** Where the targets come from; null for a static list. */
  discovery: DiscoveryStats | null
  targets: TargetStats[]
}

export interface DiscoveryStats {
  /** `dns`, `srv` or `discover`, and what is looked up (the name; `discover` for a function). */
  kind: 'dns' | 'srv' | 'discover'
  name: string
  /** Lookups since start, by result: `ok`, `empty` (no target in the answer), `failed` (an error or a timeout). */
  refreshes: { ok: number, empty: number, failed: number }
  /** When the last lookup ended and the last good one (ms since the epoch; null before any). */
  lastRefresh: number | null
  lastGood: number | null
  /** The last lookup's error, null after a good one. */
  lastError: string | null
  /** When the next lookup is due (ms since the epoch). */
  nextRefresh: number | null
  /** The last good list is kept although the source answered with no target, until then (ms since the epoch); null when not. */
  staleUntil: number | null
  /** Targets the last good lookup gave. */
  targets: number
}

export interface AdaptiveConcurrencyStats {
  /** Requests allowed in flight now (`minLimit` while the minimum RTT is measured). */
  limit: number
  /** The minimum RTT last measured (ms); null before the first measurement ends. */
  minRtt: number | null
  /** The last sample window's latency (its percentile, ms); null before the first. */
  sampleRtt: number | null
  /** The last window's gradient: buffered minimum RTT over sample RTT, 0.5 to 2. */
  gradient: number
  /** A minimum RTT measurement is under way. */
  measuringMinRtt: boolean
  /** Minimum RTT measurements completed since start. */
  measurements: number
  /** Requests that found the limit reached at admission (they waited in the queue, or got 503 `POOL_EXHAUSTED`), since start. */
  limited: number
}

export interface UpstreamRequestOptions {
  method: string
  /** Path and query, e.g. `/v1/users/1?x=1`. */
  path: string
  headers?: Record<string, string | string[] | undefined>
  body?: string | Buffer | Uint8Array | Readable | null
  signal?: AbortSignal
  /** The key for `consistent-hash` balancing (proxy routes take it from `hashKey(request)`). */
  hashKey?: string
}

export interface UpstreamResponse {
  statusCode: number
  headers: Record<string, string | string[] | undefined>
  /** The body; read it or destroy it to release the connection. */
  body: Dispatcher.ResponseData['body']
}

/** An upstream: its targets, balancer, admission and connections. */
export interface SssonectorUpstream {
  readonly name: string
  /** Plain JSON of its state. */
  stats(): UpstreamStats
  /** A request through the pool, for client use. Does not throw on a 5xx; throws `FST_SSSONECTOR_*` when nothing can serve. */
  request(options: UpstreamRequestOptions): Promise<UpstreamResponse>
  /**
   * The upstream as an undici Dispatcher: `undici.request(anyUrl, { dispatcher })`
   * goes through the pool; the target decides the origin and the Host. A
   * request's own `headersTimeout`/`bodyTimeout` win over the upstream's.
   */
  readonly dispatcher: Dispatcher
  /** Adds a target (not on an upstream with `discovery`: it owns the list). */
  addTarget(target: TargetInput): void
  /** Stops new requests to the target, waits for those in flight, then closes its connections. */
  removeTarget(url: string): Promise<void>
  /** Applies a new list in one step (service discovery): adds the new, re-weights the kept, drains the gone. */
  setTargets(targets: TargetInput[]): Promise<void>
}

export interface SssonectorDecorator {
  /** The upstream of that name; an unknown name throws `FST_SSSONECTOR_UNKNOWN_UPSTREAM`. */
  upstream(name: string): SssonectorUpstream
  /** The names of all upstreams. */
  readonly names: readonly string[]
  /** Shared target state, null when `shared` is off. */
  sharedStats(): SharedStats | null
  /** True from the close signal (or `app.close()`) on: answer readiness probes with 503. */
  readonly closing: boolean
}

export type SssonectorPlugin = FastifyPluginAsync<SssonectorOptions>

declare module 'fastify' {
  interface FastifyInstance {
    sssonector: SssonectorDecorator
    /** The metrics registry, and the address of the metrics port when `metrics.port` is set. */
    sssonectorMetrics: { readonly registry: Registry, readonly address: string | import('node:net').AddressInfo | null }
  }
}

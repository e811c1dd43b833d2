// The upstream schema: its targets, its blocks (pool, healthCheck, circuitBreaker,
// outlierDetection, retry, timeouts, tls), and the merge of the top level's blocks
// (defaults) under an upstream's own, key by key.
import type {
  AdaptiveConcurrencyOptions, BalancePolicy, CircuitBreakerOptions, DnsDiscoveryOptions, HealthCheckOptions, HookDiscoveryOptions, SrvDiscoveryOptions, HedgeOptions, OutlierDetectionOptions, PoolOptions, RetryBudget, RetryOptions,
  TargetInput, TimeoutOptions, TlsOptions, UpstreamDefaults, UpstreamOptions, Http2Options
} from '../../types/index.js'
import { DEFAULTS } from './defaults.js'
import type {
  ResolvedAdaptiveConcurrency, ResolvedCircuitBreaker, ResolvedDiscovery, ResolvedHealthCheck, ResolvedHedge, ResolvedOutlierDetection, ResolvedPool, ResolvedRetry,
  ResolvedTarget, ResolvedTimeouts, ResolvedUpstream, ResolvedHttp2
} from './defaults.js'
import { isIP } from 'node:net'
import { arrayAt, boolAt, fail, isPlainObject, intAt, keysOf, numberAt, objectAt, parseDuration, pathAt, positiveDuration, stringAt } from './check.js'

// ---------------------------------------------------------------- targets

const TARGET_KEYS = keysOf<Exclude<TargetInput, string>>()('url', 'weight', 'host')

/** `http(s)://host[:port]` only: a target is an origin, not a path. */
export function parseTargetUrl (value: unknown, path: string): { url: string, origin: string } {
  if (typeof value !== 'string') fail(path, value, 'is not an http(s) URL')
  let u: URL
  try {
    u = new URL(value)
  } catch {
    return fail(path, value, 'is not an http(s) URL')
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') fail(path, value, 'is not an http(s) URL')
  if (u.username !== '' || u.password !== '') fail(path, value, 'must not carry credentials')
  if ((u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') {
    fail(path, value, 'must be an origin (scheme, host and port), without path, query or fragment; use the route\'s rewritePrefix for paths')
  }
  return { url: u.origin, origin: u.origin }
}

/** One target, string or `{ url, weight, host }`, resolved. */
export function parseTarget (value: unknown, path: string): ResolvedTarget {
  if (typeof value === 'string') {
    const { url, origin } = parseTargetUrl(value, path)
    return { url, origin, weight: 1, host: new URL(origin).host, servername: null }
  }
  const o = objectAt(value, path, TARGET_KEYS)
  const { url, origin } = parseTargetUrl(o.url, `${path}.url`)
  const weight = o.weight === undefined ? 1 : intAt(o.weight, `${path}.weight`, 1, 1000)
  if (o.host === undefined) return { url, origin, weight, host: new URL(origin).host, servername: null }
  const { host, servername } = parseHost(o.host, `${path}.host`)
  return { url, origin, weight, host, servername }
}

/** `name[:port]`, as a Host header carries it; its name is the TLS server name unless it is an address. */
export function parseHost (value: unknown, path: string): { host: string, servername: string | null } {
  if (typeof value !== 'string' || value === '') fail(path, value, 'is not a host name[:port]')
  let u: URL
  try {
    u = new URL(`http://${value}`)
  } catch {
    return fail(path, value, 'is not a host name[:port]')
  }
  if (u.username !== '' || u.password !== '' || u.pathname !== '/' || u.search !== '' || u.hash !== '' || u.host !== value.toLowerCase()) {
    fail(path, value, 'is not a host name[:port]')
  }
  const name = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname
  return { host: value.toLowerCase(), servername: isIP(name) === 0 ? name : null }
}

// ---------------------------------------------------------------- discovery

const DISCOVERY_COMMON = ['refresh', 'timeout', 'maxStale'] as const
const DNS_KEYS = keysOf<DnsDiscoveryOptions>()('dns', 'port', 'protocol', 'family', 'servers', ...DISCOVERY_COMMON)
const SRV_KEYS = keysOf<SrvDiscoveryOptions>()('srv', 'protocol', 'family', 'servers', ...DISCOVERY_COMMON)
const HOOK_KEYS = keysOf<HookDiscoveryOptions>()('discover', ...DISCOVERY_COMMON)
/** A DNS name: labels of letters, digits, `-` and `_` (SRV's `_service._proto`), dot-separated. */
const DNS_NAME = /^(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/

function discoveryTimes (o: Record<string, unknown>, path: string): { refresh: number, timeout: number, maxStale: number } {
  const d = DEFAULTS.discovery
  const refresh = o.refresh === undefined ? d.refresh : positiveDuration(o.refresh, `${path}.refresh`)
  if (refresh < 100) fail(`${path}.refresh`, o.refresh, 'is less than 100 ms')
  const timeout = o.timeout === undefined ? d.timeout : positiveDuration(o.timeout, `${path}.timeout`)
  const maxStale = o.maxStale === undefined ? d.maxStale : parseDuration(o.maxStale, `${path}.maxStale`)
  return { refresh, timeout, maxStale }
}

function dnsCommon (o: Record<string, unknown>, path: string): { protocol: 'http' | 'https', family: 0 | 4 | 6, servers: string[] | null } {
  let protocol: 'http' | 'https' = 'http'
  if (o.protocol !== undefined) {
    if (o.protocol !== 'http' && o.protocol !== 'https') fail(`${path}.protocol`, o.protocol, 'is not one of "http", "https"')
    protocol = o.protocol
  }
  let family: 0 | 4 | 6 = 4
  if (o.family !== undefined) {
    if (o.family !== 0 && o.family !== 4 && o.family !== 6) fail(`${path}.family`, o.family, 'is not one of 4, 6, 0')
    family = o.family
  }
  let servers: string[] | null = null
  if (o.servers !== undefined) {
    const list = arrayAt(o.servers, `${path}.servers`)
    if (list.length === 0) fail(`${path}.servers`, o.servers, 'is empty (leave it out for the system\'s servers)')
    servers = list.map((s, i) => serverAt(s, `${path}.servers[${i}]`))
  }
  return { protocol, family, servers }
}

/** A DNS server: `address`, `address:port`, `[v6]:port`. */
function serverAt (value: unknown, path: string): string {
  if (typeof value !== 'string') fail(path, value, 'is not an address or address:port')
  if (isIP(value) !== 0) return value
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value)
  const address = m === null ? '' : (m[1] ?? m[2])
  const port = m === null ? 0 : Number(m[3])
  if (isIP(address) === 0 || port < 1 || port > 65535) fail(path, value, 'is not an address or address:port')
  return value
}

function nameAt (value: unknown, path: string): string {
  if (typeof value !== 'string' || !DNS_NAME.test(value) || isIP(value) !== 0) fail(path, value, 'is not a DNS name')
  return value.toLowerCase().replace(/\.$/, '')
}

export function checkDiscovery (value: unknown, path: string): ResolvedDiscovery {
  if (!isPlainObject(value)) fail(path, value, 'is not an object { dns } or { srv } or { discover }')
  const kinds = ['dns', 'srv', 'discover'].filter((k) => value[k] !== undefined)
  if (kinds.length !== 1) fail(path, value, kinds.length === 0 ? 'needs one of dns, srv, discover' : `gives ${kinds.join(' and ')}: give one`)
  if (value.dns !== undefined) {
    const o = objectAt(value, path, DNS_KEYS)
    const name = nameAt(o.dns, `${path}.dns`)
    const common = dnsCommon(o, path)
    const port = o.port === undefined ? (common.protocol === 'https' ? 443 : 80) : intAt(o.port, `${path}.port`, 1, 65535)
    return { kind: 'dns', name, port, ...common, ...discoveryTimes(o, path) }
  }
  if (value.srv !== undefined) {
    const o = objectAt(value, path, SRV_KEYS)
    return { kind: 'srv', name: nameAt(o.srv, `${path}.srv`), ...dnsCommon(o, path), ...discoveryTimes(o, path) }
  }
  const o = objectAt(value, path, HOOK_KEYS)
  if (typeof o.discover !== 'function') fail(`${path}.discover`, o.discover, 'is not a function (signal) => Promise<targets>')
  return { kind: 'discover', name: 'discover', discover: o.discover as (signal: AbortSignal) => Promise<unknown>, ...discoveryTimes(o, path) }
}

// ---------------------------------------------------------------- blocks

// Each list is checked against its type in types/ (see keysOf): a key added there must be handled here.
const POOL_KEYS = keysOf<PoolOptions>()('maxActive', 'maxActivePerTarget', 'maxIdle', 'idleTimeout', 'retryInterval', 'maxRetryInterval', 'maxRetries', 'maxQueue', 'queueTimeout', 'maxRequestsPerConnection', 'maxConnectionAge', 'maxTunnels')
const HC_KEYS = keysOf<HealthCheckOptions>()('path', 'method', 'headers', 'interval', 'unhealthyInterval', 'timeout', 'healthyThreshold', 'unhealthyThreshold', 'expectedStatus', 'grpc')
const CB_KEYS = keysOf<CircuitBreakerOptions>()('consecutiveFailures', 'failureRate', 'window', 'minimumRequests', 'halfOpenRequests')
const OD_KEYS = keysOf<OutlierDetectionOptions>()('interval', 'baseEjectionTime', 'maxEjectionTime', 'maxEjectionPercent', 'minimumRequests', 'failureRateFactor', 'latencyFactor')
const RETRY_KEYS = keysOf<RetryOptions>()('methods', 'statusCodes', 'baseDelay', 'maxDelay', 'budget', 'bufferBody', 'idempotencyKey')
const BUDGET_KEYS = keysOf<RetryBudget>()('percent', 'minConcurrent')
const TIMEOUT_KEYS = keysOf<TimeoutOptions>()('connect', 'headers', 'body', 'request', 'clientBody', 'tunnelIdle', 'tunnelDrain')
const TLS_KEYS = keysOf<TlsOptions>()('ca', 'cert', 'key', 'servername', 'rejectUnauthorized')
const AC_KEYS = keysOf<AdaptiveConcurrencyOptions>()('sampleWindow', 'percentile', 'minRttInterval', 'minRttRequests', 'jitter', 'minRttBuffer', 'minLimit', 'maxLimit')
/** The blocks the top level gives as defaults and an upstream may override. */
export const DEFAULT_KEYS = keysOf<UpstreamDefaults>()('pool', 'healthCheck', 'circuitBreaker', 'outlierDetection', 'panicThreshold', 'slowStart', 'retry', 'timeouts', 'tls', 'adaptiveConcurrency', 'protocol', 'http2')
const H2_KEYS = keysOf<Http2Options>()('maxStreams', 'pingInterval', 'pingTimeout')
const PROTOCOLS = ['http1', 'http2', 'auto'] as const

function checkHttp2 (value: unknown, path: string): Partial<ResolvedHttp2> {
  const o = objectAt(value, path, H2_KEYS)
  const out: Partial<ResolvedHttp2> = {}
  if (o.maxStreams !== undefined) out.maxStreams = intAt(o.maxStreams, `${path}.maxStreams`, 1, 2 ** 31 - 1)
  if (o.pingInterval !== undefined) out.pingInterval = parseDuration(o.pingInterval, `${path}.pingInterval`)
  if (o.pingTimeout !== undefined) out.pingTimeout = positiveDuration(o.pingTimeout, `${path}.pingTimeout`)
  return out
}
const UPSTREAM_KEYS = keysOf<UpstreamOptions>()('targets', 'discovery', 'balance', 'hashKey', 'hedge', ...DEFAULT_KEYS)
const BALANCE: readonly BalancePolicy[] = keysOf<Record<BalancePolicy, true>>()('round-robin', 'least-request', 'random', 'consistent-hash', 'peak-ewma')
const HTTP_METHOD = /^[A-Z]+$/
/** A header name: an RFC 9110 token. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** Checks a pool block (partial) and returns its values in milliseconds. */
function checkPool (value: unknown, path: string): Partial<ResolvedPool> {
  const o = objectAt(value, path, POOL_KEYS)
  const out: Partial<ResolvedPool> = {}
  if (o.maxActive !== undefined) out.maxActive = intAt(o.maxActive, `${path}.maxActive`, 1)
  if (o.maxActivePerTarget !== undefined) out.maxActivePerTarget = intAt(o.maxActivePerTarget, `${path}.maxActivePerTarget`, 1)
  if (o.maxIdle !== undefined) out.maxIdle = intAt(o.maxIdle, `${path}.maxIdle`, 0)
  if (o.idleTimeout !== undefined) out.idleTimeout = parseDuration(o.idleTimeout, `${path}.idleTimeout`)
  if (o.retryInterval !== undefined) out.retryInterval = parseDuration(o.retryInterval, `${path}.retryInterval`)
  if (o.maxRetryInterval !== undefined) out.maxRetryInterval = parseDuration(o.maxRetryInterval, `${path}.maxRetryInterval`)
  if (o.maxRetries !== undefined) out.maxRetries = intAt(o.maxRetries, `${path}.maxRetries`, 0, 100)
  if (o.maxQueue !== undefined) out.maxQueue = intAt(o.maxQueue, `${path}.maxQueue`, 0)
  if (o.queueTimeout !== undefined) out.queueTimeout = parseDuration(o.queueTimeout, `${path}.queueTimeout`)
  if (o.maxRequestsPerConnection !== undefined) out.maxRequestsPerConnection = intAt(o.maxRequestsPerConnection, `${path}.maxRequestsPerConnection`, 1)
  if (o.maxConnectionAge !== undefined) out.maxConnectionAge = positiveDuration(o.maxConnectionAge, `${path}.maxConnectionAge`)
  if (o.maxTunnels !== undefined) out.maxTunnels = intAt(o.maxTunnels, `${path}.maxTunnels`, 0)
  return out
}

function checkHealthCheck (value: unknown, path: string): Partial<ResolvedHealthCheck> | false {
  if (value === false) return false
  const o = objectAt(value, path, HC_KEYS)
  const out: Partial<ResolvedHealthCheck> = {}
  if (o.path !== undefined) out.path = pathAt(o.path, `${path}.path`)
  if (o.grpc !== undefined) {
    if (typeof o.grpc !== 'string') fail(`${path}.grpc`, o.grpc, 'is not a string (the service name; \'\' for the whole server)')
    out.grpc = o.grpc
  }
  if (o.method !== undefined) {
    if (o.method !== 'GET' && o.method !== 'HEAD' && o.method !== 'OPTIONS') fail(`${path}.method`, o.method, 'is not one of "GET", "HEAD", "OPTIONS"')
    out.method = o.method
  }
  if (o.headers !== undefined) {
    const h = objectAt(o.headers, `${path}.headers`, Object.keys(o.headers as object))
    for (const [k, v] of Object.entries(h)) if (typeof v !== 'string') fail(`${path}.headers.${k}`, v, 'is not a string')
    out.headers = { ...(h as Record<string, string>) }
  }
  if (o.interval !== undefined) out.interval = positiveDuration(o.interval, `${path}.interval`)
  if (o.unhealthyInterval !== undefined) out.unhealthyInterval = positiveDuration(o.unhealthyInterval, `${path}.unhealthyInterval`)
  if (o.timeout !== undefined) out.timeout = positiveDuration(o.timeout, `${path}.timeout`)
  if (o.healthyThreshold !== undefined) out.healthyThreshold = intAt(o.healthyThreshold, `${path}.healthyThreshold`, 1, 1000)
  if (o.unhealthyThreshold !== undefined) out.unhealthyThreshold = intAt(o.unhealthyThreshold, `${path}.unhealthyThreshold`, 1, 1000)
  if (o.expectedStatus !== undefined) {
    const a = arrayAt(o.expectedStatus, `${path}.expectedStatus`)
    if (a.length !== 2) fail(`${path}.expectedStatus`, o.expectedStatus, 'is not a range [from, to]')
    const from = intAt(a[0], `${path}.expectedStatus[0]`, 100, 599)
    const to = intAt(a[1], `${path}.expectedStatus[1]`, from, 599)
    out.expectedStatus = [from, to]
  }
  return out
}

function checkCircuitBreaker (value: unknown, path: string): Partial<ResolvedCircuitBreaker> | false {
  if (value === false) return false
  const o = objectAt(value, path, CB_KEYS)
  const out: Partial<ResolvedCircuitBreaker> = {}
  if (o.consecutiveFailures !== undefined) out.consecutiveFailures = intAt(o.consecutiveFailures, `${path}.consecutiveFailures`, 1)
  if (o.failureRate !== undefined) out.failureRate = numberAt(o.failureRate, `${path}.failureRate`, 0, 1)
  if (o.window !== undefined) out.window = positiveDuration(o.window, `${path}.window`)
  if (o.minimumRequests !== undefined) out.minimumRequests = intAt(o.minimumRequests, `${path}.minimumRequests`, 1)
  if (o.halfOpenRequests !== undefined) out.halfOpenRequests = intAt(o.halfOpenRequests, `${path}.halfOpenRequests`, 1)
  return out
}

function checkOutlierDetection (value: unknown, path: string): Partial<ResolvedOutlierDetection> | false {
  if (value === false) return false
  const o = objectAt(value, path, OD_KEYS)
  const out: Partial<ResolvedOutlierDetection> = {}
  if (o.interval !== undefined) out.interval = positiveDuration(o.interval, `${path}.interval`)
  if (o.baseEjectionTime !== undefined) out.baseEjectionTime = positiveDuration(o.baseEjectionTime, `${path}.baseEjectionTime`)
  if (o.maxEjectionTime !== undefined) out.maxEjectionTime = positiveDuration(o.maxEjectionTime, `${path}.maxEjectionTime`)
  if (o.maxEjectionPercent !== undefined) out.maxEjectionPercent = numberAt(o.maxEjectionPercent, `${path}.maxEjectionPercent`, 0, 100)
  if (o.minimumRequests !== undefined) out.minimumRequests = intAt(o.minimumRequests, `${path}.minimumRequests`, 1)
  if (o.failureRateFactor !== undefined) out.failureRateFactor = numberAt(o.failureRateFactor, `${path}.failureRateFactor`, 1, 1000)
  if (o.latencyFactor !== undefined) out.latencyFactor = numberAt(o.latencyFactor, `${path}.latencyFactor`, 1, 1000)
  return out
}

interface PartialRetry {
  methods?: string[]
  statusCodes?: number[]
  baseDelay?: number
  maxDelay?: number
  budget?: { percent?: number, minConcurrent?: number }
  bufferBody?: number
  idempotencyKey?: string | false
}

function idempotencyKeyOf (value: string | false): string | null {
  return value === false ? null : value.toLowerCase()
}

function checkRetry (value: unknown, path: string): PartialRetry | false {
  if (value === false) return false
  const o = objectAt(value, path, RETRY_KEYS)
  const out: PartialRetry = {}
  if (o.methods !== undefined) {
    out.methods = arrayAt(o.methods, `${path}.methods`).map((m, i) => {
      if (typeof m !== 'string' || !HTTP_METHOD.test(m)) fail(`${path}.methods[${i}]`, m, 'is not an upper-case HTTP method')
      return m
    })
  }
  if (o.statusCodes !== undefined) {
    out.statusCodes = arrayAt(o.statusCodes, `${path}.statusCodes`).map((s, i) => intAt(s, `${path}.statusCodes[${i}]`, 500, 599))
  }
  if (o.baseDelay !== undefined) out.baseDelay = parseDuration(o.baseDelay, `${path}.baseDelay`)
  if (o.maxDelay !== undefined) out.maxDelay = parseDuration(o.maxDelay, `${path}.maxDelay`)
  if (o.budget !== undefined) {
    const b = objectAt(o.budget, `${path}.budget`, BUDGET_KEYS)
    out.budget = {}
    if (b.percent !== undefined) out.budget.percent = numberAt(b.percent, `${path}.budget.percent`, 0, 100)
    if (b.minConcurrent !== undefined) out.budget.minConcurrent = intAt(b.minConcurrent, `${path}.budget.minConcurrent`, 0)
  }
  if (o.bufferBody !== undefined) out.bufferBody = intAt(o.bufferBody, `${path}.bufferBody`, 0, 64 * 1024 * 1024)
  if (o.idempotencyKey !== undefined) {
    if (o.idempotencyKey !== false && (typeof o.idempotencyKey !== 'string' || !HEADER_NAME.test(o.idempotencyKey))) {
      fail(`${path}.idempotencyKey`, o.idempotencyKey, 'is not a header name (a token such as "Idempotency-Key") or false')
    }
    out.idempotencyKey = o.idempotencyKey
  }
  return out
}

const HEDGE_KEYS = keysOf<HedgeOptions>()('delay', 'budget')
const PERCENTILE = /^p(\d+(?:\.\d+)?)$/

/** The hedge block: `false` or absent for none; its delay a duration or a percentile (`'p95'`). */
function checkHedge (value: unknown, path: string, retry: ResolvedRetry | null): ResolvedHedge | null {
  if (value === undefined || value === false) return null
  const o = objectAt(value, path, HEDGE_KEYS)
  const d = DEFAULTS.hedge
  const delayIn = o.delay ?? d.delay
  let delay = 0
  let quantile: number | null = null
  const p = typeof delayIn === 'string' ? PERCENTILE.exec(delayIn.trim()) : null
  if (p !== null) {
    const n = Number(p[1])
    if (!(n > 0 && n < 100)) fail(`${path}.delay`, delayIn, 'is not a percentile between p0 and p100 (such as "p95", "p99.9")')
    quantile = Math.round(n * 1e6) / 1e8
  } else {
    delay = positiveDuration(delayIn, `${path}.delay`)
  }
  let budget: number = d.budget
  if (o.budget !== undefined) {
    budget = numberAt(o.budget, `${path}.budget`, 0, 100)
    if (budget === 0) fail(`${path}.budget`, o.budget, 'must be more than 0 (hedge: false turns hedging off)')
  }
  return { delay, quantile, budget, methods: retry?.methods ?? new Set(DEFAULTS.retry.methods) }
}

function checkTimeouts (value: unknown, path: string): Partial<ResolvedTimeouts> {
  const o = objectAt(value, path, TIMEOUT_KEYS)
  const out: Partial<ResolvedTimeouts> = {}
  if (o.connect !== undefined) out.connect = positiveDuration(o.connect, `${path}.connect`)
  if (o.headers !== undefined) out.headers = positiveDuration(o.headers, `${path}.headers`)
  if (o.body !== undefined) out.body = positiveDuration(o.body, `${path}.body`)
  if (o.request !== undefined) out.request = o.request === false ? 0 : positiveDuration(o.request, `${path}.request`)
  if (o.clientBody !== undefined) out.clientBody = o.clientBody === false ? 0 : positiveDuration(o.clientBody, `${path}.clientBody`)
  if (o.tunnelIdle !== undefined) out.tunnelIdle = o.tunnelIdle === false ? 0 : positiveDuration(o.tunnelIdle, `${path}.tunnelIdle`)
  if (o.tunnelDrain !== undefined) out.tunnelDrain = parseDuration(o.tunnelDrain, `${path}.tunnelDrain`)
  return out
}

function checkAdaptiveConcurrency (value: unknown, path: string): Partial<ResolvedAdaptiveConcurrency> | false {
  if (value === false) return false
  const o = objectAt(value, path, AC_KEYS)
  const out: Partial<ResolvedAdaptiveConcurrency> = {}
  if (o.sampleWindow !== undefined) out.sampleWindow = positiveDuration(o.sampleWindow, `${path}.sampleWindow`)
  if (o.percentile !== undefined) out.percentile = numberAt(o.percentile, `${path}.percentile`, 1, 100)
  if (o.minRttInterval !== undefined) out.minRttInterval = positiveDuration(o.minRttInterval, `${path}.minRttInterval`)
  if (o.minRttRequests !== undefined) out.minRttRequests = intAt(o.minRttRequests, `${path}.minRttRequests`, 1, 100_000)
  if (o.jitter !== undefined) out.jitter = numberAt(o.jitter, `${path}.jitter`, 0, 100)
  if (o.minRttBuffer !== undefined) out.minRttBuffer = numberAt(o.minRttBuffer, `${path}.minRttBuffer`, 0, 1000)
  if (o.minLimit !== undefined) out.minLimit = intAt(o.minLimit, `${path}.minLimit`, 1)
  if (o.maxLimit !== undefined) out.maxLimit = intAt(o.maxLimit, `${path}.maxLimit`, 1)
  return out
}

/** The adaptive concurrency block merged and resolved; null when off (absent or `false`). */
function resolveAdaptiveConcurrency (top: Layer['adaptiveConcurrency'], own: Layer['adaptiveConcurrency'], pool: ResolvedPool, path: string): ResolvedAdaptiveConcurrency | null {
  if (own === false || (own === undefined && (top === false || top === undefined))) return null
  const merged = mergeBlock(top, own) as Partial<ResolvedAdaptiveConcurrency>
  const ac: ResolvedAdaptiveConcurrency = { ...DEFAULTS.adaptiveConcurrency, maxLimit: pool.maxActive, ...merged }
  if (ac.maxLimit > pool.maxActive) fail(`${path}.adaptiveConcurrency.maxLimit`, ac.maxLimit, `is more than pool.maxActive (${pool.maxActive}), which stays a hard cap`)
  if (ac.minLimit > ac.maxLimit) fail(`${path}.adaptiveConcurrency.minLimit`, ac.minLimit, `is more than adaptiveConcurrency.maxLimit (${ac.maxLimit})`)
  return ac
}

function isPem (v: unknown): boolean {
  return typeof v === 'string' || Buffer.isBuffer(v)
}

function checkTls (value: unknown, path: string): TlsOptions {
  const o = objectAt(value, path, TLS_KEYS)
  const out: TlsOptions = {}
  if (o.ca !== undefined) {
    const list = Array.isArray(o.ca) ? o.ca : [o.ca]
    list.forEach((c, i) => { if (!isPem(c)) fail(Array.isArray(o.ca) ? `${path}.ca[${i}]` : `${path}.ca`, c, 'is not a PEM string or Buffer') })
    out.ca = o.ca as TlsOptions['ca']
  }
  if (o.cert !== undefined) { if (!isPem(o.cert)) fail(`${path}.cert`, o.cert, 'is not a PEM string or Buffer'); out.cert = o.cert as string }
  if (o.key !== undefined) { if (!isPem(o.key)) fail(`${path}.key`, '[redacted]', 'is not a PEM string or Buffer'); out.key = o.key as string }
  if (o.servername !== undefined) out.servername = stringAt(o.servername, `${path}.servername`)
  if (o.rejectUnauthorized !== undefined) out.rejectUnauthorized = boolAt(o.rejectUnauthorized, `${path}.rejectUnauthorized`)
  return out
}

export interface Layer {
  pool?: Partial<ResolvedPool>
  healthCheck?: Partial<ResolvedHealthCheck> | false
  circuitBreaker?: Partial<ResolvedCircuitBreaker> | false
  outlierDetection?: Partial<ResolvedOutlierDetection> | false
  panicThreshold?: number
  protocol?: 'http1' | 'http2' | 'auto'
  http2?: Partial<ResolvedHttp2>
  slowStart?: number
  retry?: PartialRetry | false
  timeouts?: Partial<ResolvedTimeouts>
  tls?: TlsOptions
  adaptiveConcurrency?: Partial<ResolvedAdaptiveConcurrency> | false
}

export function checkLayer (o: Record<string, unknown>, path: string): Layer {
  const at = (key: string): string => path === '' ? key : `${path}.${key}`
  const layer: Layer = {}
  if (o.pool !== undefined) layer.pool = checkPool(o.pool, at('pool'))
  if (o.healthCheck !== undefined) layer.healthCheck = checkHealthCheck(o.healthCheck, at('healthCheck'))
  if (o.circuitBreaker !== undefined) layer.circuitBreaker = checkCircuitBreaker(o.circuitBreaker, at('circuitBreaker'))
  if (o.outlierDetection !== undefined) layer.outlierDetection = checkOutlierDetection(o.outlierDetection, at('outlierDetection'))
  if (o.panicThreshold !== undefined) layer.panicThreshold = numberAt(o.panicThreshold, at('panicThreshold'), 0, 100)
  if (o.slowStart !== undefined) layer.slowStart = parseDuration(o.slowStart, at('slowStart'))
  if (o.retry !== undefined) layer.retry = checkRetry(o.retry, at('retry'))
  if (o.timeouts !== undefined) layer.timeouts = checkTimeouts(o.timeouts, at('timeouts'))
  if (o.tls !== undefined) layer.tls = checkTls(o.tls, at('tls'))
  if (o.adaptiveConcurrency !== undefined) layer.adaptiveConcurrency = checkAdaptiveConcurrency(o.adaptiveConcurrency, at('adaptiveConcurrency'))
  if (o.protocol !== undefined) {
    if (!PROTOCOLS.includes(o.protocol as typeof PROTOCOLS[number])) fail(at('protocol'), o.protocol, `is not one of ${PROTOCOLS.map((p) => `"${p}"`).join(', ')}`)
    layer.protocol = o.protocol as typeof PROTOCOLS[number]
  }
  if (o.http2 !== undefined) layer.http2 = checkHttp2(o.http2, at('http2'))
  return layer
}

/** `false` at either layer disables; else the upstream's keys over the top level's over the defaults. */
function mergeBlock<T extends object> (top: Partial<T> | false | undefined, own: Partial<T> | false | undefined): Partial<T> | false {
  if (own === false) return false
  if (own === undefined) return top ?? {}
  if (top === false || top === undefined) return own
  return { ...top, ...own }
}

export function resolveUpstream (name: string, value: unknown, top: Layer): ResolvedUpstream {
  const path = `upstreams.${name}`
  const o = objectAt(value, path, UPSTREAM_KEYS)
  if (o.targets === undefined && o.discovery === undefined) fail(`${path}.targets`, undefined, 'is required (an array of http(s) URLs, possibly empty), or discovery')
  if (o.targets !== undefined && o.discovery !== undefined) fail(`${path}.discovery`, '{...}', 'and targets are given: an upstream takes its targets from one of them')
  const discovery = o.discovery === undefined ? null : checkDiscovery(o.discovery, `${path}.discovery`)
  const targets = o.targets === undefined ? [] : arrayAt(o.targets, `${path}.targets`).map((t, i) => parseTarget(t, `${path}.targets[${i}]`))
  const seen = new Set<string>()
  targets.forEach((t, i) => {
    if (seen.has(t.origin)) fail(`${path}.targets[${i}]`, t.url, 'is listed twice')
    seen.add(t.origin)
  })
  let balance: BalancePolicy = 'peak-ewma'
  if (o.balance !== undefined) {
    if (!BALANCE.includes(o.balance as BalancePolicy)) fail(`${path}.balance`, o.balance, `is not one of ${BALANCE.map((b) => `"${b}"`).join(', ')}`)
    balance = o.balance as BalancePolicy
  }
  if (o.hashKey !== undefined && typeof o.hashKey !== 'function') fail(`${path}.hashKey`, o.hashKey, 'is not a function (request) => string')
  if (balance === 'consistent-hash' && o.hashKey === undefined) fail(`${path}.hashKey`, undefined, 'is required with balance "consistent-hash"')
  const own = checkLayer(o, path)

  const poolIn = { ...top.pool, ...own.pool }
  const maxActive = poolIn.maxActive ?? DEFAULTS.pool.maxActive
  const pool: ResolvedPool = {
    maxActive,
    maxActivePerTarget: poolIn.maxActivePerTarget ?? maxActive,
    maxIdle: poolIn.maxIdle ?? DEFAULTS.pool.maxIdle,
    idleTimeout: poolIn.idleTimeout ?? DEFAULTS.pool.idleTimeout,
    retryInterval: poolIn.retryInterval ?? DEFAULTS.pool.retryInterval,
    maxRetryInterval: poolIn.maxRetryInterval ?? DEFAULTS.pool.maxRetryInterval,
    maxRetries: poolIn.maxRetries ?? DEFAULTS.pool.maxRetries,
    maxQueue: poolIn.maxQueue ?? DEFAULTS.pool.maxQueue,
    queueTimeout: poolIn.queueTimeout ?? DEFAULTS.pool.queueTimeout,
    maxRequestsPerConnection: poolIn.maxRequestsPerConnection ?? DEFAULTS.pool.maxRequestsPerConnection,
    maxConnectionAge: poolIn.maxConnectionAge ?? DEFAULTS.pool.maxConnectionAge,
    maxTunnels: poolIn.maxTunnels ?? DEFAULTS.pool.maxTunnels
  }
  if (pool.maxActivePerTarget > pool.maxActive) {
    fail(`${path}.pool.maxActivePerTarget`, pool.maxActivePerTarget, `is more than pool.maxActive (${pool.maxActive})`)
  }
  if (pool.maxRetryInterval < pool.retryInterval) {
    fail(`${path}.pool.maxRetryInterval`, pool.maxRetryInterval, `is less than pool.retryInterval (${pool.retryInterval} ms)`)
  }

  const hcIn = mergeBlock(top.healthCheck, own.healthCheck)
  let healthCheck: ResolvedHealthCheck | null = null
  if (hcIn !== false && (hcIn.path !== undefined || (hcIn.grpc !== undefined && hcIn.grpc !== null))) {
    const d = DEFAULTS.healthCheck
    const interval = hcIn.interval ?? d.interval
    const grpc = hcIn.grpc ?? null
    if (grpc !== null && hcIn.path !== undefined) fail(`${path}.healthCheck.grpc`, grpc, 'and healthCheck.path are given: a probe is one or the other')
    healthCheck = {
      path: grpc !== null ? '/grpc.health.v1.Health/Check' : hcIn.path!,
      grpc,
      method: hcIn.method ?? d.method,
      headers: hcIn.headers ?? { ...d.headers },
      interval,
      unhealthyInterval: hcIn.unhealthyInterval ?? interval,
      timeout: hcIn.timeout ?? d.timeout,
      healthyThreshold: hcIn.healthyThreshold ?? d.healthyThreshold,
      unhealthyThreshold: hcIn.unhealthyThreshold ?? d.unhealthyThreshold,
      expectedStatus: hcIn.expectedStatus ?? [...d.expectedStatus]
    }
  }

  const cbIn = mergeBlock(top.circuitBreaker, own.circuitBreaker)
  const circuitBreaker: ResolvedCircuitBreaker | null = cbIn === false ? null : { ...DEFAULTS.circuitBreaker, ...cbIn }

  const odIn = mergeBlock(top.outlierDetection, own.outlierDetection)
  const outlierDetection: ResolvedOutlierDetection | null = odIn === false ? null : { ...DEFAULTS.outlierDetection, ...odIn }
  if (outlierDetection !== null && outlierDetection.maxEjectionTime < outlierDetection.baseEjectionTime) {
    fail(`${path}.outlierDetection.maxEjectionTime`, outlierDetection.maxEjectionTime, `is less than outlierDetection.baseEjectionTime (${outlierDetection.baseEjectionTime} ms)`)
  }
  const panicThreshold = own.panicThreshold ?? top.panicThreshold ?? DEFAULTS.panicThreshold
  const slowStart = own.slowStart ?? top.slowStart ?? DEFAULTS.slowStart

  const rIn = mergeBlock(top.retry, own.retry)
  let retry: ResolvedRetry | null = null
  if (rIn !== false) {
    const d = DEFAULTS.retry
    const topBudget = top.retry === false ? undefined : top.retry?.budget
    const ownBudget = own.retry === false ? undefined : own.retry?.budget
    retry = {
      methods: new Set(rIn.methods ?? d.methods),
      statusCodes: new Set(rIn.statusCodes ?? d.statusCodes),
      baseDelay: rIn.baseDelay ?? d.baseDelay,
      maxDelay: rIn.maxDelay ?? d.maxDelay,
      budget: {
        percent: ownBudget?.percent ?? topBudget?.percent ?? d.budget.percent,
        minConcurrent: ownBudget?.minConcurrent ?? topBudget?.minConcurrent ?? d.budget.minConcurrent
      },
      bufferBody: rIn.bufferBody ?? d.bufferBody,
      idempotencyKey: idempotencyKeyOf(rIn.idempotencyKey ?? d.idempotencyKey)
    }
    if (retry.maxDelay < retry.baseDelay) fail(`${path}.retry.maxDelay`, retry.maxDelay, `is less than retry.baseDelay (${retry.baseDelay} ms)`)
  }

  const protocol = own.protocol ?? top.protocol ?? DEFAULTS.protocol
  if (healthCheck?.grpc != null && protocol === 'http1') fail(`${path}.healthCheck.grpc`, healthCheck.grpc, 'needs protocol "http2" or "auto" (gRPC runs over HTTP/2)')
  const timeouts: ResolvedTimeouts = { ...DEFAULTS.timeouts, ...top.timeouts, ...own.timeouts }
  const tls: TlsOptions = { ...top.tls, ...own.tls }
  const hedge = checkHedge(o.hedge, `${path}.hedge`, retry)

  return {
    name,
    targets,
    discovery,
    balance,
    hashKey: o.hashKey as ResolvedUpstream['hashKey'],
    pool,
    healthCheck,
    circuitBreaker,
    outlierDetection,
    panicThreshold,
    slowStart,
    retry,
    hedge,
    timeouts,
    tls,
    adaptiveConcurrency: resolveAdaptiveConcurrency(top.adaptiveConcurrency, own.adaptiveConcurrency, pool, path),
    protocol,
    http2: { ...DEFAULTS.http2, ...top.http2, ...own.http2 }
  }
}

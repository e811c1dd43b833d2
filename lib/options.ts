import { inspect } from 'node:util'
import type { BalancePolicy, TlsOptions } from '../types/index.js'
import type { FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'
import { OptionsError } from './errors.js'

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
    queueTimeout: 2 * 1000 // 2s
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
  panicThreshold: 50, // percent, Envoy's default
  slowStart: 0, // off
  retry: {
    methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'],
    statusCodes: [502, 503, 504],
    baseDelay: 25, // 25ms
    maxDelay: 250, // 250ms
    budget: { percent: 20, minConcurrent: 3 },
    bufferBody: 64 * 1024 // 64 KiB
  },
  timeouts: {
    connect: 5 * 1000, // 5s
    headers: 30 * 1000, // 30s
    body: 30 * 1000, // 30s
    request: 0 // off
  },
  metrics: { path: '/metrics', prefix: 'sssonector_' },
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
}

export interface ResolvedHealthCheck {
  path: string
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
}

export interface ResolvedTimeouts {
  connect: number
  headers: number
  body: number
  /** 0: off */
  request: number
}

export interface ResolvedTarget {
  url: string
  origin: string
  weight: number
}

export interface ResolvedUpstream {
  name: string
  targets: ResolvedTarget[]
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
  timeouts: ResolvedTimeouts
  tls: TlsOptions
}

export interface ResolvedRoute {
  prefix: string
  upstream: string
  bodyLimit: number | undefined
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
}

// ---------------------------------------------------------------- durations

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60 * 1000, h: 60 * 60 * 1000 }
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/

/** Milliseconds of a duration: a number is milliseconds, a string carries its unit. */
/** Node's timers take at most 2^31 - 1 ms (about 24.8 days); a longer one fires at once, over and over. */
const MAX_DURATION = 2 ** 31 - 1

export function parseDuration (value: unknown, path: string): number {
  let ms: number | undefined
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) ms = value
  if (typeof value === 'string') {
    const m = DURATION.exec(value.trim())
    if (m !== null) ms = Math.round(Number(m[1]) * UNIT_MS[m[2]])
  }
  if (ms === undefined) fail(path, value, 'is not a duration (a number of milliseconds >= 0, or a string such as "250ms", "5s", "5m")')
  if (ms > MAX_DURATION) fail(path, value, 'is longer than Node\'s timers allow (2147483647 ms, about 24 days)')
  return ms
}

// ---------------------------------------------------------------- checks

function show (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return `[Function ${value.name || 'anonymous'}]`
  return inspect(value, { depth: 1, breakLength: Infinity })
}

function fail (path: string, value: unknown, what: string): never {
  throw new OptionsError(`${path}: ${show(value)} ${what}`)
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

function objectAt (value: unknown, path: string, allowed: readonly string[]): Record<string, unknown> {
  if (!isPlainObject(value)) fail(path, value, 'is not an object')
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw new OptionsError(`${path === '' ? key : `${path}.${key}`}: unknown option (allowed: ${allowed.join(', ')})`)
    }
  }
  return value
}

function intAt (value: unknown, path: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) fail(path, value, 'is not an integer')
  if (value < min || value > max) fail(path, value, max === Number.MAX_SAFE_INTEGER ? `is less than ${min}` : `is not between ${min} and ${max}`)
  return value
}

function numberAt (value: unknown, path: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, value, 'is not a number')
  if (value < min || value > max) fail(path, value, `is not between ${min} and ${max}`)
  return value
}

function stringAt (value: unknown, path: string): string {
  if (typeof value !== 'string' || value === '') fail(path, value, 'is not a non-empty string')
  return value
}

function boolAt (value: unknown, path: string): boolean {
  if (typeof value !== 'boolean') fail(path, value, 'is not a boolean')
  return value
}

function pathAt (value: unknown, path: string): string {
  const s = stringAt(value, path)
  if (!s.startsWith('/')) fail(path, value, 'is not a path starting with "/"')
  return s
}

function arrayAt (value: unknown, path: string): unknown[] {
  if (!Array.isArray(value)) fail(path, value, 'is not an array')
  return value
}

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

/** One target, string or `{ url, weight }`, resolved. */
export function parseTarget (value: unknown, path: string): ResolvedTarget {
  if (typeof value === 'string') return { ...parseTargetUrl(value, path), weight: 1 }
  const o = objectAt(value, path, ['url', 'weight'])
  const { url, origin } = parseTargetUrl(o.url, `${path}.url`)
  const weight = o.weight === undefined ? 1 : intAt(o.weight, `${path}.weight`, 1, 1000)
  return { url, origin, weight }
}

// ---------------------------------------------------------------- blocks

const POOL_KEYS = ['maxActive', 'maxActivePerTarget', 'maxIdle', 'idleTimeout', 'retryInterval', 'maxRetryInterval', 'maxRetries', 'maxQueue', 'queueTimeout'] as const
const HC_KEYS = ['path', 'method', 'headers', 'interval', 'unhealthyInterval', 'timeout', 'healthyThreshold', 'unhealthyThreshold', 'expectedStatus'] as const
const CB_KEYS = ['consecutiveFailures', 'failureRate', 'window', 'minimumRequests', 'halfOpenRequests'] as const
const OD_KEYS = ['interval', 'baseEjectionTime', 'maxEjectionTime', 'maxEjectionPercent', 'minimumRequests', 'failureRateFactor', 'latencyFactor'] as const
const RETRY_KEYS = ['methods', 'statusCodes', 'baseDelay', 'maxDelay', 'budget', 'bufferBody'] as const
const TIMEOUT_KEYS = ['connect', 'headers', 'body', 'request'] as const
const TLS_KEYS = ['ca', 'cert', 'key', 'servername', 'rejectUnauthorized'] as const
const DEFAULT_KEYS = ['pool', 'healthCheck', 'circuitBreaker', 'outlierDetection', 'panicThreshold', 'slowStart', 'retry', 'timeouts', 'tls'] as const
const UPSTREAM_KEYS = ['targets', 'balance', 'hashKey', ...DEFAULT_KEYS] as const
const TOP_KEYS = ['upstreams', 'routes', 'metrics', 'status', 'gracefulClose', ...DEFAULT_KEYS] as const
const BALANCE: readonly BalancePolicy[] = ['round-robin', 'least-request', 'random', 'consistent-hash']
const HTTP_METHOD = /^[A-Z]+$/

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
  return out
}

function checkHealthCheck (value: unknown, path: string): Partial<ResolvedHealthCheck> | false {
  if (value === false) return false
  const o = objectAt(value, path, HC_KEYS)
  const out: Partial<ResolvedHealthCheck> = {}
  if (o.path !== undefined) out.path = pathAt(o.path, `${path}.path`)
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

function positiveDuration (value: unknown, path: string): number {
  const ms = parseDuration(value, path)
  if (ms <= 0) fail(path, value, 'must be longer than 0')
  return ms
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
    const b = objectAt(o.budget, `${path}.budget`, ['percent', 'minConcurrent'])
    out.budget = {}
    if (b.percent !== undefined) out.budget.percent = numberAt(b.percent, `${path}.budget.percent`, 0, 100)
    if (b.minConcurrent !== undefined) out.budget.minConcurrent = intAt(b.minConcurrent, `${path}.budget.minConcurrent`, 0)
  }
  if (o.bufferBody !== undefined) out.bufferBody = intAt(o.bufferBody, `${path}.bufferBody`, 0, 64 * 1024 * 1024)
  return out
}

function checkTimeouts (value: unknown, path: string): Partial<ResolvedTimeouts> {
  const o = objectAt(value, path, TIMEOUT_KEYS)
  const out: Partial<ResolvedTimeouts> = {}
  if (o.connect !== undefined) out.connect = positiveDuration(o.connect, `${path}.connect`)
  if (o.headers !== undefined) out.headers = positiveDuration(o.headers, `${path}.headers`)
  if (o.body !== undefined) out.body = positiveDuration(o.body, `${path}.body`)
  if (o.request !== undefined) out.request = o.request === false ? 0 : positiveDuration(o.request, `${path}.request`)
  return out
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

interface Layer {
  pool?: Partial<ResolvedPool>
  healthCheck?: Partial<ResolvedHealthCheck> | false
  circuitBreaker?: Partial<ResolvedCircuitBreaker> | false
  outlierDetection?: Partial<ResolvedOutlierDetection> | false
  panicThreshold?: number
  slowStart?: number
  retry?: PartialRetry | false
  timeouts?: Partial<ResolvedTimeouts>
  tls?: TlsOptions
}

function checkLayer (o: Record<string, unknown>, path: string): Layer {
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
  return layer
}

/** `false` at either layer disables; else the upstream's keys over the top level's over the defaults. */
function mergeBlock<T extends object> (top: Partial<T> | false | undefined, own: Partial<T> | false | undefined): Partial<T> | false {
  if (own === false) return false
  if (own === undefined) return top ?? {}
  if (top === false || top === undefined) return own
  return { ...top, ...own }
}

function resolveUpstream (name: string, value: unknown, top: Layer): ResolvedUpstream {
  const path = `upstreams.${name}`
  const o = objectAt(value, path, UPSTREAM_KEYS)
  if (o.targets === undefined) fail(`${path}.targets`, undefined, 'is required (an array of http(s) URLs, possibly empty)')
  const targets = arrayAt(o.targets, `${path}.targets`).map((t, i) => parseTarget(t, `${path}.targets[${i}]`))
  const seen = new Set<string>()
  targets.forEach((t, i) => {
    if (seen.has(t.origin)) fail(`${path}.targets[${i}]`, t.url, 'is listed twice')
    seen.add(t.origin)
  })
  let balance: BalancePolicy = 'least-request'
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
    queueTimeout: poolIn.queueTimeout ?? DEFAULTS.pool.queueTimeout
  }
  if (pool.maxActivePerTarget > pool.maxActive) {
    fail(`${path}.pool.maxActivePerTarget`, pool.maxActivePerTarget, `is more than pool.maxActive (${pool.maxActive})`)
  }
  if (pool.maxRetryInterval < pool.retryInterval) {
    fail(`${path}.pool.maxRetryInterval`, pool.maxRetryInterval, `is less than pool.retryInterval (${pool.retryInterval} ms)`)
  }

  const hcIn = mergeBlock(top.healthCheck, own.healthCheck)
  let healthCheck: ResolvedHealthCheck | null = null
  if (hcIn !== false && hcIn.path !== undefined) {
    const d = DEFAULTS.healthCheck
    const interval = hcIn.interval ?? d.interval
    healthCheck = {
      path: hcIn.path,
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
      bufferBody: rIn.bufferBody ?? d.bufferBody
    }
    if (retry.maxDelay < retry.baseDelay) fail(`${path}.retry.maxDelay`, retry.maxDelay, `is less than retry.baseDelay (${retry.baseDelay} ms)`)
  }

  const timeouts: ResolvedTimeouts = { ...DEFAULTS.timeouts, ...top.timeouts, ...own.timeouts }
  const tls: TlsOptions = { ...top.tls, ...own.tls }

  return {
    name,
    targets,
    balance,
    hashKey: o.hashKey as ResolvedUpstream['hashKey'],
    pool,
    healthCheck,
    circuitBreaker,
    outlierDetection,
    panicThreshold,
    slowStart,
    retry,
    timeouts,
    tls
  }
}

// @fastify/http-proxy options a route may pass through.
const ROUTE_PASS = [
  'rewritePrefix', 'proxyPayloads', 'preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite',
  'config', 'replyOptions', 'routes', 'httpMethods', 'constraints', 'internalRewriteLocationHeader',
  'disableRequestLogging', 'disableCache', 'cacheURLs', 'contentTypesToEncode', 'logLevel'
] as const
// Options the pool owns, with what to use instead.
const ROUTE_OWNED: Record<string, string> = {
  undici: 'the pool owns the upstream connections; use the upstream\'s pool and timeouts options',
  http: 'the pool speaks HTTP/1.1 through undici; use the upstream\'s pool and timeouts options',
  http2: 'HTTP/2 to upstreams is not supported yet',
  base: 'the route\'s upstream (a name) chooses the targets',
  globalAgent: 'the pool owns the upstream connections',
  destroyAgent: 'the pool owns the upstream connections',
  retryMethods: 'use the upstream\'s retry.methods',
  websocket: 'WebSocket proxying does not go through the pool yet; register @fastify/http-proxy directly for WebSocket routes',
  wsUpstream: 'WebSocket proxying does not go through the pool yet',
  wsHooks: 'WebSocket proxying does not go through the pool yet',
  wsReconnect: 'WebSocket proxying does not go through the pool yet',
  wsClientOptions: 'WebSocket proxying does not go through the pool yet',
  wsServerOptions: 'WebSocket proxying does not go through the pool yet'
}
const REPLY_OWNED: Record<string, string> = {
  getUpstream: 'the pool picks the target of each request',
  retryDelay: 'the pool retries, on another target; use the upstream\'s retry options',
  retriesCount: 'the pool retries, on another target; use the upstream\'s retry options',
  maxRetriesOn503: 'the pool retries, on another target; use the upstream\'s retry options',
  onError: 'the pool maps upstream failures to 502/503/504 with FST_SSSONECTOR_* codes; use Fastify\'s setErrorHandler'
}
const FUNCTION_KEYS = new Set(['preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite'])

function resolveRoute (value: unknown, i: number, names: Set<string>): ResolvedRoute {
  const path = `routes[${i}]`
  if (!isPlainObject(value)) fail(path, value, 'is not an object')
  for (const key of Object.keys(value)) {
    if (key in ROUTE_OWNED) fail(`${path}.${key}`, value[key], `is not allowed here: ${ROUTE_OWNED[key]}`)
    if (key !== 'prefix' && key !== 'upstream' && key !== 'bodyLimit' && !(ROUTE_PASS as readonly string[]).includes(key)) {
      throw new OptionsError(`${path}.${key}: unknown option (allowed: prefix, upstream, bodyLimit, ${ROUTE_PASS.join(', ')})`)
    }
  }
  const prefix = pathAt(value.prefix, `${path}.prefix`)
  const upstream = stringAt(value.upstream, `${path}.upstream`)
  if (!names.has(upstream)) fail(`${path}.upstream`, upstream, `is not an upstream (the upstreams are: ${[...names].join(', ')})`)
  const bodyLimit = value.bodyLimit === undefined ? undefined : intAt(value.bodyLimit, `${path}.bodyLimit`, 0)
  if (value.rewritePrefix !== undefined && typeof value.rewritePrefix !== 'string') fail(`${path}.rewritePrefix`, value.rewritePrefix, 'is not a string')
  for (const key of FUNCTION_KEYS) {
    if (value[key] !== undefined && typeof value[key] !== 'function') fail(`${path}.${key}`, value[key], 'is not a function')
  }
  if (value.replyOptions !== undefined) {
    if (!isPlainObject(value.replyOptions)) fail(`${path}.replyOptions`, value.replyOptions, 'is not an object')
    for (const key of Object.keys(value.replyOptions)) {
      if (key in REPLY_OWNED) fail(`${path}.replyOptions.${key}`, value.replyOptions[key], `is not allowed here: ${REPLY_OWNED[key]}`)
    }
  }
  const proxy: Record<string, unknown> = {}
  for (const key of ROUTE_PASS) if (value[key] !== undefined) proxy[key] = value[key]
  return { prefix, upstream, bodyLimit, proxy }
}

/** Validates the plugin's options into a new object (the caller's is never touched), with every default filled in. */
export function resolveOptions (input: unknown): ResolvedOptions {
  if (input === undefined || input === null) fail('options', input, 'are required: { upstreams: { name: { targets: [...] } } }')
  const o = objectAt(input, '', TOP_KEYS)
  if (o.upstreams === undefined) fail('upstreams', undefined, 'is required: { name: { targets: [...] } }')
  const ups = objectAt(o.upstreams, 'upstreams', Object.keys(o.upstreams as object))
  const names = Object.keys(ups)
  if (names.length === 0) fail('upstreams', ups, 'has no upstream')
  const top = checkLayer(o, '')
  const upstreams = names.map((name) => resolveUpstream(name, ups[name], top))
  const nameSet = new Set(names)

  const routesIn = o.routes === undefined ? [] : arrayAt(o.routes, 'routes')
  const routes = routesIn.map((r, i) => resolveRoute(r, i, nameSet))

  let metrics: ResolvedOptions['metrics'] = {
    path: DEFAULTS.metrics.path,
    prefix: DEFAULTS.metrics.prefix,
    registry: undefined,
    defaultMetrics: false,
    onRequest: undefined,
    port: undefined,
    host: '127.0.0.1'
  }
  if (o.metrics === false) {
    metrics = { ...metrics, path: false }
  } else if (o.metrics !== undefined) {
    const m = objectAt(o.metrics, 'metrics', ['path', 'prefix', 'registry', 'defaultMetrics', 'onRequest', 'port', 'host'])
    if (m.path !== undefined) metrics.path = m.path === false ? false : pathAt(m.path, 'metrics.path')
    if (m.prefix !== undefined) {
      if (typeof m.prefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$|^$/.test(m.prefix)) fail('metrics.prefix', m.prefix, 'is not a valid Prometheus metric name prefix')
      metrics.prefix = m.prefix
    }
    if (m.registry !== undefined) {
      const r = m.registry as { metrics?: unknown, registerMetric?: unknown } | null
      if (r === null || typeof r !== 'object' || typeof r.metrics !== 'function' || typeof r.registerMetric !== 'function') {
        fail('metrics.registry', m.registry, 'is not a prom-client Registry')
      }
      metrics.registry = m.registry as Registry
    }
    if (m.defaultMetrics !== undefined) metrics.defaultMetrics = boolAt(m.defaultMetrics, 'metrics.defaultMetrics')
    if (m.onRequest !== undefined) {
      if (typeof m.onRequest !== 'function') fail('metrics.onRequest', m.onRequest, 'is not a function (request, reply) => ...')
      metrics.onRequest = m.onRequest as ResolvedOptions['metrics']['onRequest']
    }
    if (m.port !== undefined) metrics.port = intAt(m.port, 'metrics.port', 0, 65535)
    if (m.host !== undefined) metrics.host = stringAt(m.host, 'metrics.host')
  }

  let status: ResolvedOptions['status'] = { path: false, onRequest: undefined }
  if (o.status !== undefined && o.status !== false) {
    const st = objectAt(o.status, 'status', ['path', 'onRequest'])
    status = { path: pathAt(st.path, 'status.path'), onRequest: undefined }
    if (st.onRequest !== undefined) {
      if (typeof st.onRequest !== 'function') fail('status.onRequest', st.onRequest, 'is not a function (request, reply) => ...')
      status.onRequest = st.onRequest as ResolvedOptions['status']['onRequest']
    }
  }

  let gracefulClose: ResolvedOptions['gracefulClose'] = { ...DEFAULTS.gracefulClose }
  if (o.gracefulClose === false) {
    gracefulClose = false
  } else if (o.gracefulClose !== undefined) {
    const g = objectAt(o.gracefulClose, 'gracefulClose', ['delay', 'preStop'])
    if (g.delay !== undefined) gracefulClose.delay = positiveDuration(g.delay, 'gracefulClose.delay')
    if (g.preStop !== undefined) gracefulClose.preStop = parseDuration(g.preStop, 'gracefulClose.preStop')
    if (gracefulClose.preStop >= gracefulClose.delay) fail('gracefulClose.preStop', gracefulClose.preStop, `is not less than gracefulClose.delay (${gracefulClose.delay} ms)`)
  }

  return { upstreams, routes, metrics, status, gracefulClose }
}

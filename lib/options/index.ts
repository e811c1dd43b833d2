// Validates the plugin's options into a new object, with every default filled in.
// The schema lives in ./upstream.ts (upstreams and their blocks) and ./route.ts
// (routes); the top-level blocks of their own (metrics, status, gracefulClose) here.
import type { Registry } from 'prom-client'
import type { GracefulCloseOptions, MetricsOptions, SharedOptions, SssonectorOptions, StatusOptions } from '../../types/index.js'
import { DEFAULTS } from './defaults.js'
import type { ResolvedOptions } from './defaults.js'
import { arrayAt, boolAt, fail, intAt, keysOf, objectAt, parseDuration, pathAt, positiveDuration, stringAt } from './check.js'
import { DEFAULT_KEYS, checkLayer, resolveUpstream } from './upstream.js'
import { resolveRoute } from './route.js'

export { parseDuration } from './check.js'
export { parseTarget } from './upstream.js'
export type {
  ResolvedCircuitBreaker, ResolvedDiscovery, ResolvedHealthCheck, ResolvedHedge, ResolvedOptions, ResolvedOutlierDetection, ResolvedPool, ResolvedHttp2,
  ResolvedRetry, ResolvedRoute, ResolvedTarget, ResolvedTimeouts, ResolvedUpstream
} from './defaults.js'

// Each list is checked against its type in types/ (see keysOf).
const TOP_KEYS = keysOf<SssonectorOptions>()('upstreams', 'routes', 'metrics', 'status', 'gracefulClose', 'shared', ...DEFAULT_KEYS)
const SHARED_KEYS = keysOf<Exclude<SharedOptions, false>>()('redis', 'cluster', 'key')
const METRICS_KEYS = keysOf<MetricsOptions>()('path', 'prefix', 'registry', 'defaultMetrics', 'onRequest', 'port', 'host')
const STATUS_KEYS = keysOf<StatusOptions>()('path', 'onRequest')
const GRACEFUL_KEYS = keysOf<GracefulCloseOptions>()('delay', 'preStop')

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
    const m = objectAt(o.metrics, 'metrics', METRICS_KEYS)
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
    const st = objectAt(o.status, 'status', STATUS_KEYS)
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
    const g = objectAt(o.gracefulClose, 'gracefulClose', GRACEFUL_KEYS)
    if (g.delay !== undefined) gracefulClose.delay = positiveDuration(g.delay, 'gracefulClose.delay')
    if (g.preStop !== undefined) gracefulClose.preStop = parseDuration(g.preStop, 'gracefulClose.preStop')
    if (gracefulClose.preStop >= gracefulClose.delay) fail('gracefulClose.preStop', gracefulClose.preStop, `is not less than gracefulClose.delay (${gracefulClose.delay} ms)`)
  }

  return { upstreams, routes, metrics, status, gracefulClose, shared: checkShared(o.shared) }
}

/** `shared`: `{ redis, key }` or `{ cluster: true, key }`; off when absent or false. */
function checkShared (value: unknown): ResolvedOptions['shared'] {
  if (value === undefined || value === false) return null
  const o = objectAt(value, 'shared', SHARED_KEYS)
  const key = o.key === undefined ? 'sssonector' : stringAt(o.key, 'shared.key')
  if (key === '' || /[\s*?[\]]/.test(key)) fail('shared.key', o.key, 'is not a plain key (no spaces, no glob characters)')
  if (o.redis !== undefined && o.cluster !== undefined) fail('shared', '{...}', 'gives redis and cluster: give one')
  if (o.cluster !== undefined) {
    if (o.cluster !== true) fail('shared.cluster', o.cluster, 'is not true')
    return { mode: 'cluster', url: null, key }
  }
  if (o.redis === undefined) fail('shared', '{...}', 'needs redis (a redis:// URL) or cluster: true')
  let url: URL | null = null
  try {
    url = new URL(String(o.redis))
  } catch {}
  if (typeof o.redis !== 'string' || url === null || (url.protocol !== 'redis:' && url.protocol !== 'rediss:')) fail('shared.redis', o.redis, 'is not a redis:// or rediss:// URL')
  return { mode: 'redis', url: o.redis, key }
}

/* eslint-disable no-void -- registering without awaiting is what these lines check */
// Type tests, checked by `npm run typecheck`: the public contract as a user's code sees it.
import Fastify from 'fastify'
import type { FastifyRequest } from 'fastify'
import sssonectorPool from '../../lib/index.js'
import type {
  SssonectorOptions, SssonectorUpstream, UpstreamStats, UpstreamResponse, TargetStats, ErrorCategory, RouteOptions
} from '../../lib/index.js'

function expectType<T> (_value: T): void {}

const app = Fastify()

// Minimal options.
void app.register(sssonectorPool, { upstreams: { users: { targets: ['http://10.0.0.5:8080'] } } })

// Every option.
const full: SssonectorOptions = {
  upstreams: {
    users: {
      targets: ['http://10.0.0.5:8080', { url: 'http://10.0.0.6:8080', weight: 2 }],
      balance: 'consistent-hash',
      hashKey: (request: FastifyRequest) => String(request.headers['x-user'] ?? ''),
      pool: { maxActive: 10 },
      healthCheck: false,
      circuitBreaker: false,
      retry: false,
      timeouts: { request: '2s' },
      tls: { ca: 'PEM', rejectUnauthorized: true, servername: 'users.internal' }
    }
  },
  routes: [{
    prefix: '/users',
    upstream: 'users',
    rewritePrefix: '/v1/users',
    bodyLimit: 1024,
    httpMethods: ['GET', 'POST'],
    replyOptions: { rewriteHeaders: (headers) => headers }
  }],
  pool: {
    maxActive: 1000,
    maxActivePerTarget: 100,
    maxIdle: 100,
    idleTimeout: '5m',
    retryInterval: '5s',
    maxRetryInterval: '1m',
    maxRetries: 3,
    maxQueue: 1000,
    queueTimeout: 2000,
    maxRequestsPerConnection: 1000,
    maxConnectionAge: '10m'
  },
  healthCheck: {
    path: '/health',
    method: 'GET',
    headers: { 'x-probe': '1' },
    interval: '5s',
    unhealthyInterval: '1s',
    timeout: '2s',
    healthyThreshold: 2,
    unhealthyThreshold: 3,
    expectedStatus: [200, 399]
  },
  circuitBreaker: { consecutiveFailures: 5, failureRate: 0.5, window: '10s', minimumRequests: 20, halfOpenRequests: 1 },
  retry: {
    methods: ['GET'],
    statusCodes: [502, 503, 504],
    baseDelay: '25ms',
    maxDelay: '250ms',
    budget: { percent: 20, minConcurrent: 3 },
    bufferBody: 65536
  },
  timeouts: { connect: '5s', headers: '30s', body: '30s', request: false, clientBody: '60s' },
  metrics: { path: '/metrics', prefix: 'sssonector_' },
  gracefulClose: { delay: '10s' }
}
void app.register(sssonectorPool, full)
void app.register(sssonectorPool, { ...full, metrics: false, gracefulClose: false })
// Discovery in place of targets; shared state.
void app.register(sssonectorPool, {
  upstreams: {
    dns: { discovery: { dns: 'users.internal', port: 8080, protocol: 'https', family: 0, servers: ['127.0.0.1:53'], refresh: '30s', timeout: '5s', maxStale: '60s' } },
    srv: { discovery: { srv: '_http._tcp.users.internal' } },
    hook: { discovery: { discover: async (signal: AbortSignal) => signal.aborted ? [] : [{ url: 'http://10.0.0.1:80', host: 'users.internal', weight: 2 }] } }
  },
  shared: { redis: 'redis://127.0.0.1:6379', key: 'gw' }
})
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, shared: { cluster: true } })
// @ts-expect-error discovery and targets are one or the other
void app.register(sssonectorPool, { upstreams: { users: { targets: [], discovery: { dns: 'a.internal' } } } })
// @ts-expect-error shared takes redis or cluster, not both
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, shared: { redis: 'redis://x', cluster: true } })

// Wrong options.
// @ts-expect-error upstreams are required
void app.register(sssonectorPool, {})
// @ts-expect-error targets are required
void app.register(sssonectorPool, { upstreams: { users: {} } })
// @ts-expect-error unknown balance policy
void app.register(sssonectorPool, { upstreams: { users: { targets: [], balance: 'fastest' } } })
// @ts-expect-error a duration string carries a known unit
void app.register(sssonectorPool, { upstreams: { users: { targets: [] } }, pool: { idleTimeout: '5 minutes' } })
// @ts-expect-error the pool owns undici
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, routes: [{ prefix: '/', upstream: 'u', undici: {} }] })
// @ts-expect-error the pool owns getUpstream
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, routes: [{ prefix: '/', upstream: 'u', replyOptions: { getUpstream: () => '' } }] })
// websocket goes through the pool
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, routes: [{ prefix: '/', upstream: 'u', websocket: true }] })
// @ts-expect-error websocket is a boolean
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, routes: [{ prefix: '/', upstream: 'u', websocket: 'yes' }] })

// Every option the pool owns is absent from RouteOptions: each line must fail to
// compile. The value is `undefined`, which any optional key would take, so the
// only error left is the key itself.
function route (r: RouteOptions): RouteOptions { return r }
function reply (r: NonNullable<RouteOptions['replyOptions']>): RouteOptions { return { prefix: '/', upstream: 'u', replyOptions: r } }
route({ prefix: '/', upstream: 'u', rewritePrefix: '/v1', logLevel: 'warn', disableCache: true, cacheURLs: 10, contentTypesToEncode: [] })
// No prefix (the root); an upstream chosen per request; a weighted split, sticky by a key.
route({ upstream: 'u', rewritePrefix: '/api2' })
route({ prefix: '/', upstream: (request) => request.headers['x-version'] === '2' ? 'v2' : 'v1' })
route({ prefix: '/', upstream: [{ name: 'v1', weight: 95 }, { name: 'v2', weight: 5 }], sticky: (request) => request.headers['x-user'] as string | undefined })
// @ts-expect-error a split's entries are { name, weight }
route({ prefix: '/', upstream: [{ name: 'v1' }] })
reply({ queryString: {}, contentType: 'text/plain', onResponse: undefined, body: '', rewriteHeaders: (h) => h, rewriteRequestHeaders: (_r, h) => h, method: 'GET', timeout: 1000 })
// @ts-expect-error the pool owns undici
route({ prefix: '/', upstream: 'u', undici: undefined })
// @ts-expect-error the pool owns http
route({ prefix: '/', upstream: 'u', http: undefined })
// @ts-expect-error the pool owns http2
route({ prefix: '/', upstream: 'u', http2: undefined })
// @ts-expect-error the pool owns base
route({ prefix: '/', upstream: 'u', base: undefined })
// @ts-expect-error the pool owns globalAgent
route({ prefix: '/', upstream: 'u', globalAgent: undefined })
// @ts-expect-error the pool owns destroyAgent
route({ prefix: '/', upstream: 'u', destroyAgent: undefined })
// @ts-expect-error the pool owns balancedPoolOptions
route({ prefix: '/', upstream: 'u', balancedPoolOptions: undefined })
// @ts-expect-error the pool owns retryMethods
route({ prefix: '/', upstream: 'u', retryMethods: undefined })
// @ts-expect-error the pool owns maxRetriesOn503
route({ prefix: '/', upstream: 'u', maxRetriesOn503: undefined })
route({ prefix: '/', upstream: 'u', websocket: undefined })
// @ts-expect-error wsUpstream: the upstream's targets serve the upgrades
route({ prefix: '/', upstream: 'u', wsUpstream: undefined })
// @ts-expect-error wsHooks is for a frame relay
route({ prefix: '/', upstream: 'u', wsHooks: undefined })
// @ts-expect-error wsReconnect is for a frame relay
route({ prefix: '/', upstream: 'u', wsReconnect: undefined })
// @ts-expect-error wsClientOptions is for a frame relay
route({ prefix: '/', upstream: 'u', wsClientOptions: undefined })
// @ts-expect-error wsServerOptions is for a frame relay
route({ prefix: '/', upstream: 'u', wsServerOptions: undefined })
// @ts-expect-error the pool owns replyOptions.getUpstream
reply({ getUpstream: undefined })
// @ts-expect-error the pool owns replyOptions.retryDelay
reply({ retryDelay: undefined })
// @ts-expect-error the pool owns replyOptions.retriesCount
reply({ retriesCount: undefined })
// @ts-expect-error the pool owns replyOptions.maxRetriesOn503
reply({ maxRetriesOn503: undefined })
// @ts-expect-error the pool owns replyOptions.onError
reply({ onError: undefined })

// @ts-expect-error a connection age is a duration, not a boolean
void app.register(sssonectorPool, { upstreams: { u: { targets: [] } }, pool: { maxConnectionAge: true } })
// @ts-expect-error the client body timeout takes a known unit
void app.register(sssonectorPool, { upstreams: { u: { targets: [], timeouts: { clientBody: '1 minute' } } } })

// The decorator.
async function use (): Promise<void> {
  const users = app.sssonector.upstream('users')
  expectType<SssonectorUpstream>(users)
  expectType<readonly string[]>(app.sssonector.names)
  const stats = users.stats()
  expectType<UpstreamStats>(stats)
  expectType<TargetStats[]>(stats.targets)
  expectType<'up' | 'draining'>(stats.targets[0].state)
  expectType<Partial<Record<ErrorCategory, number>>>(stats.targets[0].errors)
  const res = await users.request({ method: 'GET', path: '/v1/users/1' })
  expectType<UpstreamResponse>(res)
  expectType<number>(res.statusCode)
  expectType<unknown>(await res.body.json())
  users.addTarget('http://10.0.0.7:8080')
  users.addTarget({ url: 'http://10.0.0.8:8080', weight: 2 })
  await users.removeTarget('http://10.0.0.5:8080')
  // @ts-expect-error a request needs a path
  await users.request({ method: 'GET' })
}
void use

// Hedged requests: per upstream, a duration or a percentile.
void app.register(sssonectorPool, { upstreams: { u: { targets: [], hedge: { delay: 'p95', budget: 5 } } } })
void app.register(sssonectorPool, { upstreams: { u: { targets: [], hedge: { delay: '20ms' } } } })
void app.register(sssonectorPool, { upstreams: { u: { targets: [], hedge: false } } })
// @ts-expect-error a delay is a duration or a percentile
void app.register(sssonectorPool, { upstreams: { u: { targets: [], hedge: { delay: 'soon' } } } })
expectType<{ sent: number, won: number, cancelled: number, denied: number } | null>(app.sssonector.upstream('u').stats().hedges)

// first: it holds a nextTick tick object as the module is evaluated (see the file)
import './tick-shape.js'
import fp from 'fastify-plugin'
import { beginClose, closeMargin, closeOnSignal } from './graceful.js'
import Fastify from 'fastify'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { SssonectorDecorator, SssonectorOptions } from '../types/index.js'
import { resolveOptions } from './options/index.js'
import { Upstream } from './upstream.js'
import { registerRoute } from './proxy.js'
import { Metrics } from './metrics.js'
import { UnknownUpstreamError } from './errors.js'
import { renderStatus } from './status.js'
import { routeUpgrades } from './upgrade.js'
import { CLOSE_GRACE } from './tunnel.js'
import { DEFAULTS } from './options/defaults.js'
import { SharedState, clusterTransport, redisTransport } from './shared-state.js'

export type * from '../types/index.js'
export * as errors from './errors.js'
export { parseDuration } from './options/index.js'
export { Upstream } from './upstream.js'
export { UpstreamDispatcher } from './dispatcher.js'
export { relayClusterState } from './shared-state.js'

/**
 * The plugin: validates the options into a new object, builds the upstreams,
 * decorates `fastify.sssonector`, registers the proxy routes and the metrics
 * route, and closes everything with the app. No logic of its own.
 */
async function sssonector (fastify: FastifyInstance, options: SssonectorOptions): Promise<void> {
  const opts = resolveOptions(options)
  const metrics = new Metrics({ prefix: opts.metrics.prefix, registry: opts.metrics.registry, defaultMetrics: opts.metrics.defaultMetrics })
  const upstreams = new Map<string, Upstream>()
  for (const u of opts.upstreams) upstreams.set(u.name, new Upstream(u, { log: fastify.log, meter: metrics }))
  const list = [...upstreams.values()]
  metrics.watch(list)
  const names = Object.freeze([...upstreams.keys()])

  // Shared target state: this replica's own changes go out, the peers' come in (never on the request path).
  let shared: SharedState | null = null
  if (opts.shared !== null) {
    const { mode, url, key } = opts.shared
    const transport = mode === 'redis' ? await redisTransport(url!, key) : clusterTransport(key)
    shared = new SharedState(transport, {
      peerReport: (name, origin, event, until, reason) => upstreams.get(name)?.peerReport(origin, event, until, reason) ?? false
    }, fastify.log)
    const s = shared
    for (const u of list) u.share = (name, origin, event, cause, reason, ttl) => { s.report(name, origin, event, cause, reason, ttl) }
    metrics.watchShared(s)
    fastify.addHook('onReady', async () => { s.start() })
    fastify.addHook('onClose', async () => { await s.close() })
  }

  // closeBy: when open tunnels are closed, once closing (ms since the epoch).
  const state = { closing: false, closeBy: Infinity }
  const decorator: SssonectorDecorator = {
    names,
    sharedStats: () => shared?.stats() ?? null,
    get closing () { return state.closing },
    upstream (name: string): Upstream {
      const u = upstreams.get(name)
      if (u === undefined) throw new UnknownUpstreamError(JSON.stringify(name), names.join(', '))
      return u
    }
  }
  fastify.decorate('sssonector', decorator)

  for (const route of opts.routes) registerRoute(fastify, route, upstreams, state)
  const wsRoutes = opts.routes.filter((r) => r.websocket)
  if (wsRoutes.length > 0) routeUpgrades(fastify, wsRoutes.map((r) => `${fastify.prefix}${r.prefix ?? ''}`))

  const scrape = async (_request: FastifyRequest, reply: FastifyReply): Promise<string> => {
    reply.type(metrics.registry.contentType)
    return await metrics.registry.metrics()
  }
  const metricsPath = opts.metrics.path
  if (metricsPath !== false && opts.metrics.port === undefined) {
    fastify.get(metricsPath, { onRequest: opts.metrics.onRequest as onRequestHookHandler | undefined, logLevel: 'warn' }, scrape)
  }
  // Metrics on a port of their own, apart from the app's (not exposed with it).
  let metricsServer: FastifyInstance | null = null
  if (metricsPath !== false && opts.metrics.port !== undefined) {
    const server = metricsServer = Fastify({ logger: false })
    server.get(metricsPath, { onRequest: opts.metrics.onRequest as onRequestHookHandler | undefined }, scrape)
    const { port, host } = opts.metrics
    fastify.addHook('onReady', async () => { await server.listen({ port, host }) })
    fastify.addHook('onClose', async () => { await server.close() })
  }
  fastify.decorate('sssonectorMetrics', {
    registry: metrics.registry,
    get address () { return metricsServer?.server.address() ?? null }
  })

  const statusPath = opts.status.path
  if (statusPath !== false) {
    fastify.get(statusPath, { onRequest: opts.status.onRequest as onRequestHookHandler | undefined, logLevel: 'warn' }, async (request, reply) => {
      const stats = list.map((u) => u.stats())
      const accept = request.headers.accept ?? ''
      if (accept.includes('text/html')) {
        reply.type('text/html; charset=utf-8')
        return renderStatus(stats, Date.now(), shared?.stats() ?? null)
      }
      return { upstreams: stats, shared: shared?.stats() ?? null }
    })
  }

  // Warming: ready() (so listen()) waits for the first discovery lookup, then the first round of active checks.
  fastify.addHook('onReady', async () => {
    await Promise.all(list.map(async (u) => {
      await u.startDiscovery()
      await u.startHealth()
    }))
  })

  // Closing: health checks and outlier timers stop first, before in-flight requests drain.
  const gracefulClose = opts.gracefulClose
  const delay = gracefulClose === false ? DEFAULTS.gracefulClose.delay : gracefulClose.delay
  const pluginTimeout = fastify.initialConfig.pluginTimeout ?? 10_000
  fastify.addHook('preClose', async () => {
    state.closing = true
    for (const u of list) {
      u.discovery?.stop()
      u.stopHealth()
    }
    beginClose(fastify)
    // Open tunnels may go on until the close's delay, then are closed (the server's close waits for their sockets).
    // A hook that outlasts Fastify's pluginTimeout fails the close: the wait ends before it, with time for the close frames.
    if (state.closeBy === Infinity) state.closeBy = Date.now() + delay
    const bound = pluginTimeout > 0 ? Math.max(0, pluginTimeout - CLOSE_GRACE - 500) : Infinity
    const wait = Math.min(state.closeBy - Date.now(), bound)
    await Promise.all(list.map(async (u) => { await u.closeTunnels(wait) }))
  })

  let forget: (() => void) | null = null
  if (gracefulClose !== false) {
    fastify.addHook('onReady', async () => {
      forget = closeOnSignal({
        app: fastify,
        delay: gracefulClose.delay,
        preStop: gracefulClose.preStop,
        inFlight: () => list.reduce((n, u) => n + u.active + u.pending, 0),
        onSignal: () => {
          state.closing = true
          // The drain waits for the connections, tunnels among them; what is left at its end is closed.
          state.closeBy = Date.now() + gracefulClose.delay - closeMargin(gracefulClose.delay)
        }
      })
    })
  }

  fastify.addHook('onClose', async () => {
    forget?.()
    await Promise.all(list.map(async (u) => { await u.close() }))
  })
}

const sssonectorPool = fp(sssonector, {
  fastify: '5.x',
  name: 'fastify-sssonector'
})

export default sssonectorPool
export { sssonectorPool }

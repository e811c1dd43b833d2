import fp from 'fastify-plugin'
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import type { SssonectorDecorator, SssonectorOptions } from '../types/index.js'
import { resolveOptions } from './options.js'
import { Upstream } from './upstream.js'
import { registerRoute } from './proxy.js'
import { Metrics } from './metrics.js'
import { UnknownUpstreamError } from './errors.js'

export type * from '../types/index.js'
export * as errors from './errors.js'
export { parseDuration } from './options.js'
export { Upstream, UpstreamDispatcher } from './upstream.js'

/**
 * The plugin: validates the options into a new object, builds the upstreams,
 * decorates `fastify.sssonector`, registers the proxy routes and the metrics
 * route, and closes everything with the app. No logic of its own.
 */
async function sssonector (fastify: FastifyInstance, options: SssonectorOptions): Promise<void> {
  const opts = resolveOptions(options)
  const upstreams = new Map<string, Upstream>()
  for (const u of opts.upstreams) upstreams.set(u.name, new Upstream(u, { log: fastify.log }))
  const list = [...upstreams.values()]
  const names = Object.freeze([...upstreams.keys()])

  const decorator: SssonectorDecorator = {
    names,
    upstream (name: string): Upstream {
      const u = upstreams.get(name)
      if (u === undefined) throw new UnknownUpstreamError(JSON.stringify(name), names.join(', '))
      return u
    }
  }
  fastify.decorate('sssonector', decorator)

  for (const route of opts.routes) registerRoute(fastify, route, upstreams.get(route.upstream)!)

  const metrics = new Metrics(list, opts.metrics.prefix, opts.metrics.registry)
  const metricsPath = opts.metrics.path
  if (metricsPath !== false) {
    fastify.get(metricsPath, async (_request, reply) => {
      reply.type(metrics.registry.contentType)
      return await metrics.registry.metrics()
    })
  }

  // Warming: ready() (so listen()) waits for the first round of active checks.
  fastify.addHook('onReady', async () => {
    await Promise.all(list.map(async (u) => await u.startHealth()))
  })

  let grace: { uninstall: () => void } | null = null
  const gracefulClose = opts.gracefulClose
  if (gracefulClose !== false) {
    fastify.addHook('onReady', async () => {
      grace = closeWithGrace({ delay: gracefulClose.delay, logger: fastify.log }, async ({ signal, err }) => {
        if (err !== undefined) fastify.log.error({ err }, 'closing after an uncaught error')
        else fastify.log.info({ signal }, 'closing on signal')
        await fastify.close()
      })
    })
  }

  fastify.addHook('onClose', async () => {
    grace?.uninstall()
    await Promise.all(list.map((u) => u.close()))
  })
}

const sssonectorPool = fp(sssonector, {
  fastify: '5.x',
  name: 'fastify-sssonector'
})

export default sssonectorPool
export { sssonectorPool }

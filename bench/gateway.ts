// A gateway for the benchmark, run in its own process by run.ts (and ws.ts): Fastify on
// 127.0.0.1:0 (logger off) proxying the scenario's prefix to its targets,
// either with plain @fastify/http-proxy or with this plugin; or the bare Node
// proxy (bare.ts), with no framework.
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import { childMain } from './protocol.js'
import { startBare } from './bare.js'
import type { GatewayConfig, GatewayKind } from './scenarios.js'

type Builder = (app: FastifyInstance, config: GatewayConfig) => Promise<void>

const builders: Record<Exclude<GatewayKind, 'bare'>, Builder> = {
  'http-proxy': async (app, config) => {
    const { default: proxy } = await import('@fastify/http-proxy')
    if (config.targets.length === 1) {
      await app.register(proxy, { upstream: config.targets[0]!, prefix: config.prefix, websocket: config.websocket === true })
    } else {
      // http-proxy takes one upstream URL: balance several with undici's
      // BalancedPool (every target then sees the first target's Host)
      const { BalancedPool } = await import('undici')
      const pool = new BalancedPool(config.targets)
      app.addHook('onClose', async () => { await pool.close() })
      await app.register(proxy, { upstream: config.targets[0]!, undici: pool, prefix: config.prefix, websocket: config.websocket === true })
    }
  },
  // loaded only in its own child, so a plugin that fails to load fails this arm alone
  sssonector: async (app, config) => {
    const { default: sssonectorPool } = await import('../lib/index.js')
    await app.register(sssonectorPool, {
      // the WebSocket benchmark opens up to 200,000 idle tunnels (WSBENCH_IDLE), past the default maxTunnels
      upstreams: { bench: { targets: config.targets, ...(config.balance !== undefined ? { balance: config.balance } : {}), ...(config.websocket === true ? { pool: { maxTunnels: 200_000 } } : {}), ...config.upstream } },
      routes: [{ prefix: config.prefix, upstream: 'bench', ...(config.websocket === true ? { websocket: true } : {}) }],
      metrics: false,
      gracefulClose: false
    })
  }
}

childMain<GatewayConfig>(async (config) => {
  if (config.kind === 'bare') return await startBare(config.targets)
  const build = builders[config.kind]
  if (build === undefined) throw new Error(`unknown gateway kind ${JSON.stringify(config.kind)}`)
  const app = Fastify({ logger: false })
  try {
    await build(app, config)
    await app.listen({ host: '127.0.0.1', port: 0 })
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
  const { port } = app.server.address() as AddressInfo
  return { port, close: async () => { await app.close() } }
})

// A gateway for `npm run bench:h2`, run in its own process by h2.ts: Fastify
// on 127.0.0.1:0 (logger off; `http2: true` for the gRPC arm, h2c with prior
// knowledge, as gRPC clients speak it) with fastify-sssonector, one upstream
// of the config's targets spoken to with its `protocol`, one route, and the
// metrics at /metrics and the status page at /status on the same port (the
// parent reads the connections the pool opened, and those open, there).
import Fastify from 'fastify'
import type { AddressInfo } from 'node:net'
import { childMain } from './protocol.js'

export interface H2GatewayConfig {
  targets: string[]
  protocol: 'http1' | 'http2'
  prefix: string
  rewritePrefix?: string
  /** the gateway's own server speaks HTTP/2 (h2c) instead of HTTP/1.1 */
  http2Server: boolean
  /** the plugin's upstream options beyond its targets and protocol */
  upstream?: Record<string, unknown>
}

const METRICS_PATH = '/metrics'
const STATUS_PATH = '/status'
const UPSTREAM_NAME = 'bench'

childMain<H2GatewayConfig>(async (config) => {
  const { default: sssonectorPool } = await import('../lib/index.js')
  // The two kinds of server make two types of app: the plugin and the calls below are the same for both.
  const app = (config.http2Server ? Fastify({ logger: false, http2: true }) : Fastify({ logger: false })) as unknown as ReturnType<typeof Fastify>
  try {
    await app.register(sssonectorPool, {
      upstreams: { [UPSTREAM_NAME]: { targets: config.targets, protocol: config.protocol, ...config.upstream } },
      routes: [{ prefix: config.prefix, upstream: UPSTREAM_NAME, ...(config.rewritePrefix !== undefined ? { rewritePrefix: config.rewritePrefix } : {}) }],
      metrics: { path: METRICS_PATH },
      status: { path: STATUS_PATH },
      gracefulClose: false
    })
    await app.listen({ host: '127.0.0.1', port: 0 })
  } catch (err) {
    await app.close().catch(() => {})
    throw err
  }
  const { port } = app.server.address() as AddressInfo
  return { port, close: async () => { await app.close() } }
})

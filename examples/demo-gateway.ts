// The demo gateway behind `npm start`: three embedded upstream servers on loopback,
// `/api/*` proxied through one upstream that balances over them, and `/metrics`.
// Try: curl localhost:3000/api/hello ; curl localhost:3000/metrics ; curl localhost:3000/status
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import sssonectorPool from '../lib/index.js'

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'

async function startDemoUpstream (name: string): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ upstream: name, method: req.method, url: req.url }))
  })
  server.keepAliveTimeout = 65_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

const upstreams = await Promise.all(['alpha', 'beta', 'gamma'].map(startDemoUpstream))
const targets = upstreams.map((s) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`)

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(sssonectorPool, {
  upstreams: { demo: { targets, balance: 'round-robin' } },
  routes: [{ prefix: '/api', upstream: 'demo', rewritePrefix: '/v1' }],
  metrics: { path: '/metrics' },
  gracefulClose: { delay: '10s' }
})
app.get('/status', async () => app.sssonector.upstream('demo').stats())
app.addHook('onClose', async () => {
  for (const s of upstreams) s.close()
})

await app.listen({ port, host })
const base = `http://${host}:${port}`
app.log.info({ targets }, 'demo upstreams')
process.stdout.write([
  '',
  'fastify-sssonector demo gateway',
  `  proxy:   ${base}/api/hello   (round-robin over ${targets.join(', ')})`,
  `  metrics: ${base}/metrics`,
  `  stats:   ${base}/status`,
  'Ctrl-C to stop (graceful close).',
  ''
].join('\n'))

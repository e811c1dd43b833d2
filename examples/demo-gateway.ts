// The demo gateway behind `npm start`: three embedded upstream servers on loopback,
// `/api/*` proxied through one upstream that balances over them, `/metrics`, the
// status page at `/status`, and `/demo/<name>/<mode>` to break an upstream and
// watch the gateway fail over: `down` (its port refuses), `slow` (2 s answers),
// `503` (it answers 503, its health check too), `up` (back to normal).
// Try: curl localhost:3000/api/hello ; open localhost:3000/status ; curl localhost:3000/demo/beta/down
import http from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import Fastify from 'fastify'
import sssonectorPool from '../lib/index.js'

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
const MODES = ['up', 'down', 'slow', '503'] as const
type Mode = typeof MODES[number]

/** One embedded upstream, which the demo can take down, slow down or make answer 503. */
class DemoUpstream {
  readonly name: string
  mode: Mode = 'up'
  port = 0
  readonly #sockets = new Set<Socket>()
  readonly #server: http.Server

  constructor (name: string) {
    this.name = name
    this.#server = http.createServer((req, res) => { this.#answer(req, res) })
    this.#server.keepAliveTimeout = 65_000
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s)
      s.once('close', () => { this.#sockets.delete(s) })
    })
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  #answer (req: http.IncomingMessage, res: http.ServerResponse): void {
    const send = (): void => {
      res.statusCode = this.mode === '503' ? 503 : 200
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ upstream: this.name, method: req.method, url: req.url, mode: this.mode }))
    }
    if (this.mode !== 'slow') {
      send()
      return
    }
    const timer = setTimeout(send, 2000)
    res.once('close', () => { clearTimeout(timer) })
  }

  async listen (): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(this.port, '127.0.0.1', resolve))
    this.port = (this.#server.address() as AddressInfo).port
  }

  /** Stops listening and cuts its connections: connects to its port are refused until `up`. */
  async stop (): Promise<void> {
    if (!this.#server.listening) return
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    for (const s of this.#sockets) s.destroy()
    await closed
  }

  async set (mode: Mode): Promise<void> {
    if (mode === 'down') await this.stop()
    else if (!this.#server.listening) await this.listen()
    this.mode = mode
  }
}

const demo = ['alpha', 'beta', 'gamma'].map((name) => new DemoUpstream(name))
for (const u of demo) await u.listen()
const targets = demo.map((u) => u.url)

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(sssonectorPool, {
  upstreams: {
    demo: {
      targets,
      balance: 'round-robin',
      // Active checks, so a target answering 503 leaves rotation and comes back once it is well.
      healthCheck: { path: '/health', interval: '2s', unhealthyThreshold: 2, healthyThreshold: 2 },
      timeouts: { headers: '1s' }
    }
  },
  routes: [{ prefix: '/api', upstream: 'demo', rewritePrefix: '/v1' }],
  metrics: { path: '/metrics' },
  status: { path: '/status' },
  gracefulClose: { delay: '10s' }
})

app.get<{ Params: { name: string, mode: string } }>('/demo/:name/:mode', async (request, reply) => {
  const u = demo.find((x) => x.name === request.params.name)
  const mode = MODES.find((m) => m === request.params.mode)
  if (u === undefined || mode === undefined) {
    return await reply.code(404).send({ error: `try /demo/<${demo.map((x) => x.name).join('|')}>/<${MODES.join('|')}>` })
  }
  await u.set(mode)
  request.log.info({ upstream: u.name, target: u.url, mode }, 'demo upstream changed')
  return { upstream: u.name, target: u.url, mode }
})
app.addHook('onClose', async () => {
  await Promise.all(demo.map(async (u) => { await u.stop() }))
})

await app.listen({ port, host })
const address = app.server.address() as AddressInfo
const base = `http://${host}:${address.port}`
app.log.info({ targets }, 'demo upstreams')
process.stdout.write([
  '',
  'fastify-sssonector demo gateway',
  `  proxy:   ${base}/api/hello   (round-robin over ${demo.map((u) => `${u.name} ${u.url}`).join(', ')})`,
  `  status:  ${base}/status      (open it in a browser; JSON with Accept: application/json)`,
  `  metrics: ${base}/metrics`,
  `  break:   ${base}/demo/beta/down   (or slow, 503; ${base}/demo/beta/up to mend it)`,
  'Ctrl-C to stop (graceful close).',
  ''
].join('\n'))

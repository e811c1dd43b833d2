import t from 'tap'
import http from 'node:http'
import { once } from 'node:events'
import { request } from 'undici'
import Fastify, { LogController } from 'fastify'
import type { FastifyServerOptions } from 'fastify'
import sssonectorPool from '../lib/index.js'
import { Upstream, NO_TARGET_LOG_INTERVAL } from '../lib/upstream.js'
import type { UpstreamLogger } from '../lib/upstream.js'
import { resolveOptions } from '../lib/options/index.js'
import { FlapLog, RateLimitedLog } from '../lib/log-limits.js'
import type { SssonectorOptions } from '../types/index.js'
import { refusedPort, startGateway, startUpstream, until } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'

interface Line { level: number, msg: string, [key: string]: unknown }

/** Log lines kept as they come, and a wait for the first matching one. */
class Lines {
  readonly all: Line[] = []
  readonly #waiters: Array<{ test: (l: Line) => boolean, resolve: (l: Line) => void }> = []

  push (line: Line): void {
    this.all.push(line)
    for (const w of this.#waiters.filter((x) => x.test(line))) {
      this.#waiters.splice(this.#waiters.indexOf(w), 1)
      w.resolve(line)
    }
  }

  matching (re: RegExp): Line[] {
    return this.all.filter((l) => re.test(l.msg))
  }

  async next (re: RegExp): Promise<Line> {
    const found = this.all.find((l) => re.test(l.msg))
    if (found !== undefined) return found
    return await new Promise((resolve) => this.#waiters.push({ test: (l) => re.test(l.msg), resolve }))
  }

  /** A logger in the shape an upstream takes (levels as pino numbers them). */
  get logger (): UpstreamLogger {
    const at = (level: number) => (obj: object, msg: string): void => { this.push({ ...obj, level, msg }) }
    return { debug: at(20), info: at(30), warn: at(40) }
  }
}

async function loggedGateway (t: Teardown, options: SssonectorOptions, fastify: FastifyServerOptions = {}, setup?: Parameters<typeof startGateway>[2]): Promise<{ gw: Gateway, lines: Lines }> {
  const lines = new Lines()
  const gw = await startGateway(t, options, setup, { logger: { level: 'info', stream: { write: (l: string) => { lines.push(JSON.parse(l) as Line) } } }, ...fastify })
  return { gw, lines }
}

async function get (gw: Gateway, path: string): Promise<{ status: number, headers: Record<string, unknown>, body: string }> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
}

t.test('units: one line per interval with the count of those not logged; flaps past the first two per window summarised at its end', async (t) => {
  const rate = new RateLimitedLog(1000)
  t.same([0, 10, 999, 1000, 1500, 2100].map((now) => rate.hit(now)), [0, -1, -1, 2, -1, 1])
  rate.hit(2200)
  t.equal(rate.take(), 1, 'the count not logged yet, taken')
  t.equal(rate.take(), 0)

  const flaps = new FlapLog(1000, 2)
  t.same([0, 100, 200, 300, 400].map((now) => flaps.change(now)), [true, true, false, false, false], 'the first two of the window are logged')
  t.equal(flaps.due, 1000, 'the summary at the window\'s end')
  t.equal(flaps.summary(999), 0, 'not before')
  t.equal(flaps.summary(1000), 3, 'three changes not logged')
  t.equal(flaps.due, null)
  t.equal(flaps.change(1500), false, 'still flapping: the next window is summarised whole')
  t.equal(flaps.summary(2000), 1)
  t.equal(flaps.summary(3000), 0, 'a window without changes')
  t.equal(flaps.change(3001), true, 'after a quiet window, a change is logged at once again')
})

t.test('NO_TARGET: no error line with a stack per 503, one warning for the upstream instead; the 503 answer is as it was', async (t) => {
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const { gw, lines } = await loggedGateway(t, {
    // A long skip: no quick trial during the test, every request after the first is refused at admission.
    upstreams: { a: { targets: [dead], pool: { retryInterval: '10m', maxRetryInterval: '1h' }, retry: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  t.equal((await get(gw, '/first')).status, 502, 'the first request finds the target dead')
  const answers = []
  for (let i = 0; i < 30; i++) answers.push(await get(gw, `/x${i}`))
  t.same(new Set(answers.map((a) => a.status)), new Set([503]))
  t.match(answers[0].headers, { 'retry-after': /^\d+$/, 'content-type': 'application/json; charset=utf-8' })
  t.equal(answers[0].body, '{"statusCode":503,"code":"FST_SSSONECTOR_NO_TARGET","error":"Service Unavailable","message":"No target of upstream a can take the request"}', 'Fastify\'s error body, byte for byte')
  const errorLines = lines.all.filter((l) => l.level >= 50 && (l.err as { code?: string } | undefined)?.code === 'FST_SSSONECTOR_NO_TARGET')
  t.equal(errorLines.length, 0, `no error line per 503 (there were ${errorLines.length})`)
  const warnings = lines.matching(/^no target can take requests/)
  t.equal(warnings.length, 1, 'one warning for 30 refusals within the interval')
  t.match(warnings[0], { level: 40, upstream: 'a', reason: 'no_target', suppressed: 0, targets: [{ target: dead, causes: ['connect_failed: connect_refused'] }] })
  t.equal(gw.app.sssonector.upstream('a').stats().rejected.no_target, 30, 'each refusal counted all the same')
})

t.test('NO_TARGET: an app\'s error handler still shapes the 503 (and logs what it logs)', async (t) => {
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const seen: string[] = []
  const { gw } = await loggedGateway(t, {
    upstreams: { a: { targets: [dead], pool: { retryInterval: '10m', maxRetryInterval: '1h' }, retry: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  }, {}, (app) => {
    app.setErrorHandler(async (err: Error & { code?: string, statusCode?: number }, _req, reply) => {
      seen.push(String(err.code))
      return await reply.code(err.statusCode ?? 500).send({ custom: err.code })
    })
  })
  await get(gw, '/first')
  const res = await get(gw, '/x')
  t.equal(res.status, 503)
  t.match(res.headers, { 'retry-after': /^\d+$/ })
  t.same(JSON.parse(res.body), { custom: 'FST_SSSONECTOR_NO_TARGET' })
  t.same(seen, ['FST_SSSONECTOR_UPSTREAM_CONNECT', 'FST_SSSONECTOR_NO_TARGET'], 'the app\'s handler saw both errors')
})

t.test('NO_TARGET on a clock: the next line after the interval carries the count not logged; the return to rotation tells the rest', async (t) => {
  const port = await refusedPort()
  const dead = `http://127.0.0.1:${port}`
  const lines = new Lines()
  const clock = { now: Date.now() }
  // Quick trials (no target in rotation) a hundredth of the skip apart: 36 s, none during the test.
  const config = resolveOptions({ upstreams: { u: { targets: [dead], pool: { retryInterval: '1h', maxRetryInterval: '2h' }, retry: false } } }).upstreams[0]
  const u = new Upstream(config, { now: () => clock.now, log: lines.logger })
  t.teardown(() => u.close())
  const refused = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await t.rejects(u.request({ method: 'GET', path: '/' }), { code: 'FST_SSSONECTOR_NO_TARGET' })
  }
  await t.rejects(u.request({ method: 'GET', path: '/' }), { code: 'FST_SSSONECTOR_UPSTREAM_CONNECT' })
  await refused(5)
  clock.now += NO_TARGET_LOG_INTERVAL
  await refused(4)
  t.same(lines.matching(/^no target/).map((l) => l.suppressed), [0, 4], 'the second line, an interval later, counts the four not logged')
  // It comes back: its trial, at the end of the skip, connects.
  const server = http.createServer((_req, res) => { res.end('back') })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  clock.now += 60 * 60_000
  const res = await u.request({ method: 'GET', path: '/' })
  t.equal(await res.body.text(), 'back')
  t.match(lines.matching(/^target back in rotation/), [{ level: 30, refused: 3 }], 'the 503s after the last line, told when the outage ends')
})

t.test('a normal shutdown logs each target leaving at info, not warn', async (t) => {
  const one = await startUpstream(t)
  const two = await startUpstream(t)
  const lines = new Lines()
  const app = Fastify({ logger: { level: 'info', stream: { write: (l: string) => { lines.push(JSON.parse(l) as Line) } } } })
  await app.register(sssonectorPool, { upstreams: { a: { targets: [one.url, two.url] } }, gracefulClose: false })
  await app.ready()
  await app.close()
  const draining = lines.matching(/draining/)
  t.equal(draining.length, 2)
  t.match(draining, [{ level: 30, cause: 'draining', reason: 'closing' }, { level: 30, cause: 'draining', reason: 'closing' }])
  t.same(lines.all.filter((l) => l.level >= 40), [], 'no warning at all')
})

t.test('a flapping target logs its first two changes, then one summary per window, not a line per flap', async (t) => {
  const FLAPS = 10 // answers to its probes that flip its state: down, up, down, ... up
  const flappy = await startUpstream(t, (req, res) => {
    const n = flappy.seen.filter((s) => s.url === '/health').length
    res.statusCode = req.url === '/health' && n <= FLAPS && n % 2 === 1 ? 500 : 200
    res.end()
  })
  const lines = new Lines()
  const config = resolveOptions({
    upstreams: { u: { targets: [flappy.url], healthCheck: { path: '/health', interval: '10ms', healthyThreshold: 1, unhealthyThreshold: 1 } } }
  }).upstreams[0]
  const u = new Upstream(config, { log: lines.logger, flapWindow: 1000 })
  t.teardown(() => u.close())
  await u.startHealth()
  // Probes run one after another: the next one arrives once the last answer was taken.
  await until(flappy.events, 'request', () => flappy.seen.length > FLAPS)
  const out = lines.matching(/^target out of rotation/)
  const back = lines.matching(/^target back in rotation/)
  t.equal(out.length + back.length, 2, `${FLAPS} changes, two lines as they came (there were ${out.length + back.length})`)
  if (out.length + back.length !== 2) return
  t.match(out, [{ level: 40, cause: 'active_health' }])
  t.match(back, [{ level: 30, cause: 'active_health' }])
  const summary = await lines.next(/^target flapping/)
  t.match(summary, { level: 30, target: flappy.url, changes: FLAPS - 2, window: 1000, causes: [] })
  t.match(summary.msg, /8 more state changes within 1s; in rotation now/)
  t.equal(lines.matching(/^panic(:| over)/).length, 2, 'the panic that followed each change: two lines...')
  t.match(await lines.next(/^panic flapping/), { changes: FLAPS - 2, panic: false }, '...and its own summary')
})

t.test('Fastify\'s own lines per request: a route\'s logLevel quiets them; http-proxy\'s disableRequestLogging does not; a function of the request given to Fastify does', async (t) => {
  const up = await startUpstream(t)
  const perRequest = /^(incoming request|request completed)$/
  const upstreams = { a: { targets: [up.url] } }

  const plain = await loggedGateway(t, { upstreams, routes: [{ prefix: '/api', upstream: 'a' }] })
  t.equal((await get(plain.gw, '/api/x')).status, 200)
  t.equal(plain.lines.matching(perRequest).length, 2, 'by default: incoming and completed, at info')
  t.equal(plain.lines.matching(/^(fetching from remote server|response received)$/).length, 0, 'reply-from\'s own lines are off (disableRequestLogging: true passed to http-proxy)')

  const replyFrom = await loggedGateway(t, { upstreams, routes: [{ prefix: '/api', upstream: 'a', disableRequestLogging: false }] })
  t.equal((await get(replyFrom.gw, '/api/x')).status, 200)
  t.equal(replyFrom.lines.matching(/^(fetching from remote server|response received)$/).length, 2, 'the route option is reply-from\'s: false turns its lines on')

  const quiet = await loggedGateway(t, { upstreams, routes: [{ prefix: '/api', upstream: 'a', logLevel: 'warn' }] }, {}, (app) => {
    app.get('/own', async () => 'own')
  })
  t.equal((await get(quiet.gw, '/api/x')).status, 200)
  t.equal(quiet.lines.matching(perRequest).length, 0, 'logLevel: warn on the route: none for the proxied request')
  t.equal((await get(quiet.gw, '/own')).status, 200)
  t.equal(quiet.lines.matching(perRequest).length, 2, 'the app\'s other routes log as before')

  // Fastify 5.12's form (its top-level disableRequestLogging is deprecated, FSTDEP023).
  const byFunction = await loggedGateway(t, { upstreams, routes: [{ prefix: '/api', upstream: 'a' }] }, {
    logController: new LogController({ disableRequestLogging: (req) => req.url.startsWith('/api/') })
  }, (app) => { app.get('/own', async () => 'own') })
  t.equal((await get(byFunction.gw, '/api/x')).status, 200)
  t.equal(byFunction.lines.matching(perRequest).length, 0, 'Fastify\'s LogController with disableRequestLogging as a function of the request: none for the proxy routes')
  t.equal((await get(byFunction.gw, '/own')).status, 200)
  t.equal(byFunction.lines.matching(perRequest).length, 2, 'the others log')
})

import t from 'tap'
import { Writable } from 'node:stream'
import { request } from 'undici'
import { Registry } from 'prom-client'
import Fastify, { LogController } from 'fastify'
import sssonectorPool from '../lib/index.js'
import { Gate, eventually, refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'

async function scrape (gw: Gateway, path = '/metrics'): Promise<string> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  t.match(res.headers['content-type'], /text\/plain/)
  return await res.body.text()
}

/** The value of one series, or undefined. */
function value (text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue
    const inside = line.slice(name.length + 1, line.indexOf('}'))
    if (want.every((w) => inside.split(',').includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return undefined
}

t.test('active connections equal the upstream\'s own count while requests are held; idle after a burst too', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('ok') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxIdle: 3 } } },
    routes: [{ prefix: '/api', upstream: 'a' }]
  })
  const held = Array.from({ length: 7 }, async () => await request(`${gw.url}/api/x`, { dispatcher: gw.agent }))
  await gate.waitingFor(7)
  const during = await scrape(gw)
  const labels = { upstream: 'a', target: up.url }
  t.equal(value(during, 'sssonector_pool_active_connections', labels), up.sockets.size, `active connections: ${up.sockets.size}, as the upstream counts them`)
  t.equal(value(during, 'sssonector_pool_active_connections', labels), 7)
  t.equal(value(during, 'sssonector_upstream_active_requests', { upstream: 'a' }), 7)
  gate.open()
  for (const p of held) await (await p).body.dump()
  await up.socketsAtMost(3)
  const after = await scrape(gw)
  t.equal(value(after, 'sssonector_pool_idle_connections', labels), up.sockets.size, 'idle connections: as the upstream counts them')
  t.equal(value(after, 'sssonector_pool_active_connections', labels), 0)
  t.equal(value(after, 'sssonector_pool_connections_opened_total', labels), 7)
  t.equal(value(after, 'sssonector_pool_connection_age_seconds_count', labels), 4, '4 closed past maxIdle, their ages observed')
  t.equal(value(after, 'sssonector_request_duration_seconds_count', { ...labels, status_class: '2xx' }), 7)
  t.match(after, /# TYPE sssonector_pool_connection_errors counter/)
  t.match(after, /# TYPE sssonector_pool_health_check_failures counter/)
})

t.test('a killed target raises connection_errors{reason="connect_refused"}; a failing probe raises health_check_failures; retries and health are counted', async (t) => {
  const live = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: {
      a: { targets: [dead, live.url], balance: 'round-robin' },
      b: { targets: [dead], healthCheck: { path: '/h', interval: '20ms', timeout: '100ms' } }
    },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  for (let i = 0; i < 4; i++) t.equal((await request(`${gw.url}/x`, { dispatcher: gw.agent })).statusCode, 200)
  await eventually(() => gw.app.sssonector.upstream('b').stats().targets[0].health.length > 0)
  const before = await scrape(gw)
  const probeFailures = value(before, 'sssonector_pool_health_check_failures', { upstream: 'b', target: dead }) ?? 0
  t.ok(probeFailures >= 1, `health_check_failures ${probeFailures}`)
  t.equal(value(before, 'sssonector_pool_connection_errors', { upstream: 'a', target: dead, reason: 'connect_refused' }), 1)
  t.equal(value(before, 'sssonector_request_retries_total', { upstream: 'a', reason: 'connect_refused' }), 1)
  t.equal(value(before, 'sssonector_target_healthy', { upstream: 'a', target: dead }), 0)
  t.equal(value(before, 'sssonector_target_health_cause', { upstream: 'a', target: dead, cause: 'connect_failed' }), 1)
  t.equal(value(before, 'sssonector_target_healthy', { upstream: 'a', target: live.url }), 1)
  t.equal(value(before, 'sssonector_circuit_breaker_state', { upstream: 'a', target: live.url }), 0)
})

t.test('two apps in one process keep registries of their own; a shared registry is used when given', async (t) => {
  const up = await startUpstream(t)
  const one = await startGateway(t, { upstreams: { a: { targets: [up.url] } } })
  const two = await startGateway(t, { upstreams: { a: { targets: [up.url] } } })
  t.not(one.app.sssonectorMetrics.registry, two.app.sssonectorMetrics.registry)
  const registry = new Registry()
  const shared = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, metrics: { registry, prefix: 'gw_', path: '/m', defaultMetrics: true } })
  t.equal(shared.app.sssonectorMetrics.registry, registry)
  const text = await scrape(shared, '/m')
  t.match(text, /gw_pool_active_connections/)
  t.match(text, /gw_process_cpu_user_seconds_total/, 'default metrics, with the prefix')
  t.equal((await request(`${shared.url}/metrics`, { dispatcher: shared.agent })).statusCode, 404, 'only at the configured path')
})

t.test('metrics: false removes the route; a guard protects it; a port of its own keeps it off the app\'s', async (t) => {
  const up = await startUpstream(t)
  const off = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, metrics: false })
  t.equal((await request(`${off.url}/metrics`, { dispatcher: off.agent })).statusCode, 404)
  const guarded = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    metrics: {
      onRequest: async (req, reply) => {
        if (req.headers.authorization !== 'Bearer scrape') await reply.code(401).send({ error: 'no' })
      }
    }
  })
  t.equal((await request(`${guarded.url}/metrics`, { dispatcher: guarded.agent })).statusCode, 401)
  t.equal((await request(`${guarded.url}/metrics`, { dispatcher: guarded.agent, headers: { authorization: 'Bearer scrape' } })).statusCode, 200)
  const apart = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, metrics: { port: 0 } })
  t.equal((await request(`${apart.url}/metrics`, { dispatcher: apart.agent })).statusCode, 404, 'not on the app\'s port')
  const address = apart.app.sssonectorMetrics.address as import('node:net').AddressInfo
  const res = await request(`http://127.0.0.1:${address.port}/metrics`)
  t.equal(res.statusCode, 200)
  t.match(await res.body.text(), /sssonector_pool_idle_connections/)
})

t.test('status: JSON per upstream and target, and an HTML page that refreshes itself', async (t) => {
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url, dead], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  for (let i = 0; i < 3; i++) await (await request(`${gw.url}/x`, { dispatcher: gw.agent })).body.dump()
  const json = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'application/json' } })).body.json() as { upstreams: Array<{ targets: Array<{ url: string, available: boolean, health: Array<{ cause: string }>, latency: number, failureRatio: number }> }> }
  const [live, down] = json.upstreams[0].targets
  t.equal(live.available, true)
  t.ok(live.latency > 0, 'recent latency')
  t.equal(down.available, false)
  t.equal(down.health[0].cause, 'connect_failed')
  t.ok(down.failureRatio > 0, 'recent error rate')
  const html = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
  t.match(html, /<meta http-equiv="refresh" content="2">/)
  t.match(html, new RegExp(`data-target="${dead}" data-state="down"`))
  t.match(html, /connect_failed for \d+s/)
})

t.test('logs: state changes once at warn and info, failed attempts with their category, nothing per successful request', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({ write (chunk: Buffer, _enc, cb) { lines.push(JSON.parse(chunk.toString())); cb() } })
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const app = Fastify({ logger: { level: 'info', stream }, logController: new LogController({ disableRequestLogging: true }) })
  t.teardown(() => app.close())
  await app.register(sssonectorPool, {
    upstreams: { a: { targets: [dead, up.url], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'a' }],
    gracefulClose: false
  })
  for (let i = 0; i < 10; i++) t.equal((await app.inject('/x')).statusCode, 200)
  const mine = lines.filter((l) => l.upstream === 'a')
  t.match(mine, [
    { level: 40, target: dead, cause: 'connect_failed', reason: 'connect_refused', msg: 'target out of rotation: connect_failed' },
    { level: 30, target: dead, reason: 'connect_refused', attempt: 1, msg: 'attempt failed, retrying' }
  ])
  t.equal(mine.length, 2, 'nothing more: the successful requests log nothing')
})

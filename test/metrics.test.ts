import t from 'tap'
import { request } from 'undici'
import http from 'node:http'
import { once } from 'node:events'
import { performance } from 'node:perf_hooks'
import { refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'
import { scrape, series, value } from './helpers/scrape.js'

const SEED_COUNTERS = ['sssonector_pool_connection_errors', 'sssonector_pool_health_check_failures']

async function metricsOf (gw: Gateway): Promise<string> {
  return await scrape(`${gw.url}/metrics`, gw.agent)
}

t.test('counters: the seed\'s two keep their names, every other ends in _total; those with known label sets start at 0', async (t) => {
  const up = await startUpstream(t)
  const other = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const text = await metricsOf(gw)
  const counters = [...text.matchAll(/^# TYPE (\S+) counter$/gm)].map((m) => m[1])
  t.same(counters.filter((n) => !n.endsWith('_total')).sort(), SEED_COUNTERS, 'only the seed\'s counters lack _total')
  for (const name of ['sssonector_pool_connections_opened_total', 'sssonector_request_retries_total', 'sssonector_requests_rejected_total', 'sssonector_client_errors_total']) {
    t.ok(counters.includes(name), `${name} is a counter`)
  }

  // Before any request, each counter whose labels are known reads 0.
  const target = { upstream: 'a', target: up.url }
  t.equal(value(text, 'sssonector_pool_connections_opened_total', target), 0, 'connections opened: 0')
  t.equal(value(text, 'sssonector_pool_health_check_failures', target), 0, 'health check failures: 0')
  for (const reason of ['connect_refused', 'connect_timeout', 'dns', 'tls', 'reset', 'headers_timeout', 'body_timeout', 'protocol']) {
    t.equal(value(text, 'sssonector_pool_connection_errors', { ...target, reason }), 0, `connection errors ${reason}: 0`)
  }
  for (const reason of ['connect_refused', 'connect_timeout', 'dns', 'tls', 'reset', 'protocol', 'http_5xx']) {
    t.equal(value(text, 'sssonector_request_retries_total', { upstream: 'a', reason }), 0, `retries ${reason}: 0`)
  }
  for (const reason of ['no_target', 'pool_exhausted']) {
    t.equal(value(text, 'sssonector_requests_rejected_total', { upstream: 'a', reason }), 0, `rejected ${reason}: 0`)
  }

  // A target added later starts at 0 too; a removed one's series go.
  gw.app.sssonector.upstream('a').addTarget(other.url)
  const added = await metricsOf(gw)
  t.equal(value(added, 'sssonector_pool_connections_opened_total', { upstream: 'a', target: other.url }), 0, 'an added target: 0 opened')
  t.equal(value(added, 'sssonector_pool_connection_errors', { upstream: 'a', target: other.url, reason: 'reset' }), 0, 'an added target: 0 resets')
  await gw.app.sssonector.upstream('a').removeTarget(other.url)
  const removed = await metricsOf(gw)
  t.equal(series(removed, 'sssonector_pool_connections_opened_total').filter((s) => s.labels.target === other.url).length, 0, 'a removed target: no series')
})

t.test('attempt durations: a monotonic sub-millisecond clock, and buckets below 1 ms', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  let client = 0
  for (let i = 0; i < 20; i++) {
    const start = performance.now()
    const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
    await res.body.dump()
    client += performance.now() - start
  }
  const text = await metricsOf(gw)
  const labels = { upstream: 'a', target: up.url, status_class: '2xx' }
  t.equal(value(text, 'sssonector_request_duration_seconds_count', labels), 20)
  for (const le of ['0.00025', '0.0005']) {
    t.not(value(text, 'sssonector_request_duration_seconds_bucket', { ...labels, le }), undefined, `a bucket at ${le} s`)
  }
  const sum = value(text, 'sssonector_request_duration_seconds_sum', labels)!
  const ms = sum * 1000
  t.ok(Math.abs(ms - Math.round(ms)) > 1e-6, `the 20 durations add up to ${ms} ms: not a whole number of milliseconds (a 1 ms clock gives whole ones)`)
  t.ok(ms < client, `the attempts took ${ms.toFixed(3)} ms, within the ${client.toFixed(3)} ms the client waited`)
})

t.test('target_healthy: a target whose connects fail reads 0 while its trial is due, and 1 once a trial succeeded', async (t) => {
  const live = await startUpstream(t)
  const port = await refusedPort()
  const dead = `http://127.0.0.1:${port}`
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [dead, live.url], balance: 'round-robin', pool: { retryInterval: 100 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  t.equal((await request(`${gw.url}/x`, { dispatcher: gw.agent })).statusCode, 200)
  const up = gw.app.sssonector.upstream('a')
  const down = up.stats().targets[0].down
  t.ok(down !== null, 'the dead target is skipped after its failed connect')
  // Its skip ends at a known time: wait until then, not for an event.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, down!.until - Date.now()) + 5))
  const due = up.stats().targets[0]
  t.equal(due.available, true, 'its trial is due: the balancer may pick it')
  t.ok(due.down !== null, 'and it is still down: no trial succeeded')
  const text = await metricsOf(gw)
  t.equal(value(text, 'sssonector_target_healthy', { upstream: 'a', target: dead }), 0, 'target_healthy: 0 while its trial is merely due')
  t.equal(value(text, 'sssonector_target_health_cause', { upstream: 'a', target: dead, cause: 'connect_failed' }), 1, 'its cause: connect_failed')
  t.equal(value(text, 'sssonector_target_healthy', { upstream: 'a', target: live.url }), 1)

  // The target comes back on its port; the next request to it is its trial.
  const revived = http.createServer((_req, res) => { res.end('back') })
  revived.listen(port, '127.0.0.1')
  await once(revived, 'listening')
  t.teardown(async () => {
    revived.closeAllConnections()
    await new Promise((resolve) => revived.close(resolve))
  })
  for (let i = 0; i < 2; i++) await (await request(`${gw.url}/x`, { dispatcher: gw.agent })).body.dump()
  t.equal(up.stats().targets[0].down, null, 'its trial succeeded')
  const after = await metricsOf(gw)
  t.equal(value(after, 'sssonector_target_healthy', { upstream: 'a', target: dead }), 1, 'target_healthy: 1 once a trial succeeded')
})

t.test('the attempt histogram reads as prom-client\'s own would: text, JSON, reset, a target forgotten', async (t) => {
  const { Histogram, Registry } = await import('prom-client')
  const { Metrics } = await import('../lib/metrics.js')
  const ours = new Registry()
  const metrics = new Metrics({ prefix: 'x_', registry: ours, defaultMetrics: false })
  const theirs = new Registry()
  const reference = new Histogram({
    name: 'x_request_duration_seconds',
    help: 'Duration of each attempt to a target, to its answer\'s end, by status class (error: no answer), on a monotonic sub-millisecond clock',
    labelNames: ['upstream', 'target', 'status_class'],
    buckets: [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [theirs]
  })
  const classes = ['1xx', '2xx', '3xx', '4xx', '5xx', 'error']
  const meters = [metrics.target('u', 'http://a:1'), metrics.target('u', 'http://b:2')]
  const targets = ['http://a:1', 'http://b:2']
  // Values on and between the bounds, past the last one, and 0.
  const seconds = [0, 0.00025, 0.0003, 0.001, 0.004, 0.05, 0.7, 12, 31, 100]
  for (let i = 0; i < 40; i++) {
    const m = i % 2
    const cls = i % 3 === 0 ? 5 : 1
    const v = seconds[i % seconds.length]
    meters[m].attempt(cls, v)
    reference.observe({ upstream: 'u', target: targets[m], status_class: classes[cls] }, v)
  }
  const pick = async (r: InstanceType<typeof Registry>): Promise<string> =>
    (await r.metrics()).split('\n').filter((l) => l.includes('x_request_duration_seconds')).join('\n')
  t.equal(await pick(ours), await pick(theirs), 'the same text, line for line')
  const json = async (r: InstanceType<typeof Registry>): Promise<unknown> =>
    JSON.parse(JSON.stringify((await r.getMetricsAsJSON()).find((m) => m.name === 'x_request_duration_seconds')))
  t.same(await json(ours), await json(theirs), 'the same JSON, as a worker sends it to the cluster aggregator')
  metrics.forget('u', 'http://b:2')
  reference.remove({ upstream: 'u', target: 'http://b:2', status_class: '2xx' })
  reference.remove({ upstream: 'u', target: 'http://b:2', status_class: 'error' })
  t.equal(await pick(ours), await pick(theirs), 'a forgotten target\'s series are gone')
  t.notMatch(await pick(ours), 'http://b:2')
  ours.resetMetrics()
  t.notMatch(await pick(ours), 'x_request_duration_seconds_count', 'reset: no series until the next attempt')
  meters[0].attempt(1, 0.002)
  t.match(await pick(ours), /x_request_duration_seconds_count\{upstream="u",target="http:\/\/a:1",status_class="2xx"\} 1$/m, 'counting again from 0')
})

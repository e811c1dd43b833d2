import t from 'tap'
import { PROBATION_ATTEMPTS } from '../lib/target.js'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { eventually, refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'

async function get (gw: Gateway, path: string): Promise<number> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  await res.body.dump()
  return res.statusCode
}

/** A plain server that can be killed and started again on the same port. */
async function restartable (t: Teardown): Promise<{ url: string, hits: () => number, kill: () => Promise<void>, start: () => Promise<void> }> {
  let hits = 0
  let server: http.Server | null = null
  let port = 0
  const start = async (): Promise<void> => {
    server = http.createServer((req, res) => {
      if (req.url !== '/health') hits++
      res.end('ok')
    })
    server.listen(port, '127.0.0.1')
    await once(server, 'listening')
    port = (server.address() as AddressInfo).port
  }
  const kill = async (): Promise<void> => {
    const s = server!
    server = null
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
  }
  await start()
  t.teardown(async () => { if (server !== null) await kill() })
  return { url: `http://127.0.0.1:${port}`, hits: () => hits, kill, start }
}

t.test('a killed target leaves rotation on its failed checks and comes back; 1000 GETs across both moves all succeed', async (t) => {
  const a = await restartable(t)
  const b = await restartable(t)
  const gw = await startGateway(t, {
    upstreams: {
      u: {
        targets: [a.url, b.url],
        healthCheck: { path: '/health', interval: '40ms', timeout: '200ms', healthyThreshold: 2, unhealthyThreshold: 2 },
        panicThreshold: 0
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  let done = 0
  const codes: number[] = []
  const load = (async () => {
    while (done < 1000) {
      const batch = await Promise.all(Array.from({ length: 5 }, async () => await get(gw, '/x')))
      codes.push(...batch)
      done += batch.length
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  await eventually(() => done >= 100)
  await b.kill()
  await eventually(() => u.stats().targets[1].health.some((h) => h.cause === 'active_health'))
  const triedWhenOut = u.stats().targets[1].requests
  await eventually(() => done >= 500)
  t.equal(u.stats().targets[1].requests, triedWhenOut, 'out of rotation, the killed target was not even tried: the live one took every request')
  await b.start()
  await eventually(() => u.stats().targets[1].available)
  const bBack = b.hits()
  await load
  t.equal(codes.length, 1000)
  t.equal(codes.filter((c) => c === 200).length, 1000, 'every GET succeeded')
  t.ok(b.hits() > bBack, 'the target back in rotation got traffic again')
})

t.test('warming: ready() waits for the first probes, so a dead target never gets a request; probes use their own connection', async (t) => {
  const probes: http.IncomingHttpHeaders[] = []
  const live = await startUpstream(t, (req, res) => {
    if (req.url === '/ready') {
      probes.push({ ...req.headers, method: req.method })
      res.statusCode = 204
    }
    res.end('ok')
  })
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: {
      u: {
        targets: [dead, live.url],
        healthCheck: { path: '/ready', method: 'HEAD', headers: { 'x-probe': 'yes' }, interval: '1m', timeout: '500ms' }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  t.match(u.stats().targets[0].health, [{ cause: 'active_health' }], 'the dead target is out before the first request')
  for (let i = 0; i < 20; i++) t.equal(await get(gw, '/x'), 200)
  t.equal(u.stats().targets[0].requests, 0, 'not one request went to it')
  t.match(probes[0], { method: 'HEAD', 'x-probe': 'yes', host: `127.0.0.1:${live.port}` })
  t.equal(u.stats().targets[1].opened, 1, 'the traffic used one pooled connection')
  t.equal(live.accepted, 2, 'the probe had a connection of its own')
})

t.test('a target answering 503 to half its requests beside two healthy ones: GETs all succeed, and once its breaker opens it gets much less traffic', async (t) => {
  let n = 0
  const flaky = await startUpstream(t, (_req, res) => {
    res.statusCode = n++ % 2 === 0 ? 503 : 200
    res.end('flaky')
  })
  const ups = [await startUpstream(t), flaky, await startUpstream(t)]
  const gw = await startGateway(t, {
    upstreams: {
      u: {
        targets: ups.map((u) => u.url),
        balance: 'round-robin',
        circuitBreaker: { minimumRequests: 10, failureRate: 0.3 },
        pool: { retryInterval: '10s' }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const codes: number[] = []
  for (let i = 0; i < 300; i++) codes.push(await get(gw, `/${i}`))
  t.equal(codes.filter((c) => c === 200).length, 300, 'every GET succeeded')
  t.ok(flaky.seen.length < 40, `the flaky target got ${flaky.seen.length} of 300 (a third would be 100)`)
  t.match(gw.app.sssonector.upstream('u').stats().targets[1].breaker, { state: 'open' })
})

t.test('outlier ejection: a target slowed beside two fast ones is ejected and gets no request while ejected', async (t) => {
  const slow = await startUpstream(t, (_req, res) => { setTimeout(() => res.end('slow'), 60) })
  const ups = [await startUpstream(t), slow, await startUpstream(t)]
  const gw = await startGateway(t, {
    upstreams: {
      u: {
        targets: ups.map((u) => u.url),
        balance: 'round-robin',
        outlierDetection: { interval: '300ms', minimumRequests: 3, baseEjectionTime: '1m' }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  // Load until it is ejected (bounded: the detector judges every 300 ms).
  for (let round = 0; round < 500 && !u.stats().targets[1].health.some((h) => h.cause === 'ejected'); round++) {
    await Promise.all(Array.from({ length: 6 }, async () => await get(gw, '/x')))
  }
  t.match(u.stats().targets[1].health, [{ cause: 'ejected' }], 'ejected as the slow one')
  const before = slow.seen.length
  const codes: number[] = []
  for (let i = 0; i < 60; i++) codes.push(await get(gw, '/y'))
  t.equal(codes.filter((c) => c === 200).length, 60, 'every request served')
  t.equal(slow.seen.length, before, 'no request reached the ejected target')
  t.equal(u.stats().targets[1].ejections, 1)
})

t.test('probation: a slow target back from its ejection gets a few requests, one at a time, and is ejected again', async (t) => {
  let inFlight = 0
  let most = 0
  const slow = await startUpstream(t, (_req, res) => {
    most = Math.max(most, ++inFlight)
    setTimeout(() => { inFlight--; res.end('slow') }, 60)
  })
  const ups = [await startUpstream(t), slow, await startUpstream(t)]
  const gw = await startGateway(t, {
    upstreams: {
      u: {
        targets: ups.map((u) => u.url),
        balance: 'round-robin',
        outlierDetection: { interval: '200ms', minimumRequests: 3, baseEjectionTime: '300ms', maxEjectionTime: '1m' }
      }
    },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  const ejections = (): number => u.stats().targets[1].ejections
  for (let round = 0; round < 500 && ejections() === 0; round++) {
    await Promise.all(Array.from({ length: 6 }, async () => await get(gw, '/x')))
  }
  t.equal(ejections(), 1, 'ejected once')
  most = 0
  const before = slow.seen.length
  // Six requests in flight at a time until the slow target is back, on probation, and ejected again (bounded).
  const codes: number[] = []
  for (let round = 0; round < 500 && ejections() < 2; round++) {
    codes.push(...await Promise.all(Array.from({ length: 6 }, async () => await get(gw, '/y'))))
  }
  t.equal(ejections(), 2, 'ejected again after its probation')
  t.equal(codes.filter((c) => c === 200).length, codes.length, `every one of the ${codes.length} requests meanwhile served`)
  const during = slow.seen.length - before
  t.ok(during >= 1 && during <= PROBATION_ATTEMPTS, `its probation took ${during} requests (at most ${PROBATION_ATTEMPTS})`)
  t.equal(most, 1, 'one at a time')
  t.match(u.stats().targets[1].health, [{ cause: 'ejected' }])
})

t.test('a target added at run time with checks on waits for its first good probe', async (t) => {
  const a = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { u: { targets: [a.url], healthCheck: { path: '/h', interval: '1m' } } },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const b = await startUpstream(t)
  const u = gw.app.sssonector.upstream('u')
  u.addTarget(b.url)
  t.match(u.stats().targets[1].health, [{ cause: 'active_health' }], 'out until probed')
  await eventually(() => u.stats().targets[1].available)
  t.ok(b.seen.some((s) => s.url === '/h'), 'probed')
  await u.removeTarget(b.url)
})

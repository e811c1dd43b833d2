import t from 'tap'
import { request } from 'undici'
import { Gate, eventually, startGateway, startUpstream } from './helpers/servers.js'
import type { Teardown, UpstreamHandler } from './helpers/servers.js'

/** Two upstreams sharing one gate and one count of requests inside their handlers. */
async function gatedPair (t: Teardown, gate: Gate): Promise<{ urls: string[], max: () => number, now: () => number, ups: Array<Awaited<ReturnType<typeof startUpstream>>> }> {
  let inside = 0
  let max = 0
  const handler: UpstreamHandler = async (_req, res) => {
    inside++
    max = Math.max(max, inside)
    await gate.wait()
    inside--
    res.end('ok')
  }
  const ups = [await startUpstream(t, handler), await startUpstream(t, handler)]
  return { urls: ups.map((u) => u.url), max: () => max, now: () => inside, ups }
}

for (const balance of ['round-robin', 'least-request', 'random'] as const) {
  t.test(`maxActive caps the requests inside the upstreams and the sockets open, across targets (${balance})`, async (t) => {
    const gate = new Gate()
    t.teardown(() => gate.open())
    const pair = await gatedPair(t, gate)
    const gw = await startGateway(t, {
      upstreams: { a: { targets: pair.urls, balance, pool: { maxActive: 4 } } },
      routes: [{ prefix: '/', upstream: 'a' }]
    })
    const all = Array.from({ length: 50 }, (_, i) => request(`${gw.url}/${i}`, { dispatcher: gw.agent }).then(async (r) => { await r.body.dump(); return r.statusCode }))
    await gate.waitingFor(4)
    await eventually(() => gw.app.sssonector.upstream('a').stats().pending === 46)
    const s = gw.app.sssonector.upstream('a').stats()
    t.equal(pair.now(), 4, '4 requests inside the upstreams')
    t.equal(s.connections, 4)
    t.equal(s.pending, 46, 'the rest wait in the queue')
    gate.open()
    const codes = await Promise.all(all)
    t.same(new Set(codes), new Set([200]), 'all 50 succeed')
    t.equal(pair.max(), 4, 'never more than 4 at once')
    const sockets = pair.ups[0].sockets.size + pair.ups[1].sockets.size
    t.ok(sockets <= 4, `at most 4 sockets open (${sockets})`)
    t.equal(gw.app.sssonector.upstream('a').stats().active, 0)
  })
}

t.test('maxActivePerTarget caps each target', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const pair = await gatedPair(t, gate)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: pair.urls, pool: { maxActive: 10, maxActivePerTarget: 2 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const all = Array.from({ length: 30 }, (_, i) => request(`${gw.url}/${i}`, { dispatcher: gw.agent }).then(async (r) => { await r.body.dump(); return r.statusCode }))
  await gate.waitingFor(4)
  t.equal(pair.ups[0].inflight, 2)
  t.equal(pair.ups[1].inflight, 2)
  gate.open()
  t.same(new Set(await Promise.all(all)), new Set([200]))
  t.equal(pair.ups[0].maxInflight, 2, 'first target never saw more than 2')
  t.equal(pair.ups[1].maxInflight, 2, 'second target never saw more than 2')
})

t.test('maxActive closes an idle connection of one target so another target can get one', async (t) => {
  const gate = new Gate()
  const a = await startUpstream(t)
  const b = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('b') })
  const gw = await startGateway(t, {
    upstreams: { u: { targets: [a.url, b.url], balance: 'round-robin', pool: { maxActive: 1 } } },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const r1 = await request(`${gw.url}/1`, { dispatcher: gw.agent }) // to a; its socket stays idle
  await r1.body.dump()
  t.equal(a.sockets.size, 1)
  const r2 = request(`${gw.url}/2`, { dispatcher: gw.agent }) // to b: a's idle socket is closed for it
  await gate.waitingFor(1)
  await a.socketsAtMost(0)
  t.equal(gw.app.sssonector.upstream('u').stats().connections, 1)
  gate.open()
  t.equal((await r2).statusCode, 200)
  await (await r2).body.dump()
})

t.test('maxIdle: after a burst the open sockets settle to at most maxIdle', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('ok') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxIdle: 5 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const all = Array.from({ length: 20 }, (_, i) => request(`${gw.url}/${i}`, { dispatcher: gw.agent }).then(async (r) => { await r.body.dump(); return r.statusCode }))
  await gate.waitingFor(20)
  t.equal(up.sockets.size, 20, '20 sockets during the burst')
  gate.open()
  t.same(new Set(await Promise.all(all)), new Set([200]))
  await up.socketsAtMost(5)
  t.equal(up.sockets.size, 5)
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.idle, 5)
  t.equal(s.targets[0].opened, 20)
  t.equal(s.targets[0].closed, 15)
  t.equal(s.targets[0].connectionAges.length, 5)
})

t.test('idleTimeout: an idle socket is closed after it', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { idleTimeout: '150ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  await res.body.dump()
  t.equal(up.sockets.size, 1)
  await up.socketsAtMost(0)
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.connections, 0)
  t.equal(s.targets[0].closed, 1)
})

t.test('an idle socket is never kept past the upstream\'s Keep-Alive hint minus a margin', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.setHeader('keep-alive', 'timeout=3')
    res.end('ok')
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { idleTimeout: '5m' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  await res.body.dump()
  await up.socketsAtMost(0) // closed by the gateway at 3 s - 2 s, not at 5 minutes
  await eventually(() => gw.app.sssonector.upstream('a').stats().connections === 0) // dropped from the pool on its close event
  const again = await request(`${gw.url}/y`, { dispatcher: gw.agent })
  t.equal(again.statusCode, 200, 'the next request gets a fresh socket')
  await again.body.dump()
})

t.test('queue: FIFO up to maxQueue for queueTimeout, then 503 POOL_EXHAUSTED with Retry-After', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const order: string[] = []
  const up = await startUpstream(t, async (req, res) => {
    order.push(req.url ?? '')
    await gate.wait()
    res.end('ok')
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxActive: 1, maxQueue: 3, queueTimeout: '10s' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  const first = request(`${gw.url}/first`, { dispatcher: gw.agent })
  await gate.waitingFor(1)
  const queued: Array<Promise<number>> = []
  for (const name of ['q1', 'q2', 'q3']) {
    queued.push(request(`${gw.url}/${name}`, { dispatcher: gw.agent }).then(async (r) => { await r.body.dump(); return r.statusCode }))
    await eventually(() => a.stats().pending === queued.length)
  }
  const full = await request(`${gw.url}/overflow`, { dispatcher: gw.agent })
  t.equal(full.statusCode, 503, 'past maxQueue: 503 at once')
  t.equal(full.headers['retry-after'], '10')
  t.equal((await full.body.json() as { code: string }).code, 'FST_SSSONECTOR_POOL_EXHAUSTED')
  gate.open()
  t.equal((await first).statusCode, 200)
  t.same(await Promise.all(queued), [200, 200, 200])
  t.same(order, ['/first', '/q1', '/q2', '/q3'], 'served in arrival order')
  t.same(a.stats().rejected, { pool_exhausted: 1 })
})

t.test('queue: a request waits at most queueTimeout; one whose client hangs up leaves the queue at once', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('ok') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxActive: 1, queueTimeout: '200ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  const first = request(`${gw.url}/first`, { dispatcher: gw.agent })
  await gate.waitingFor(1)

  const ac = new AbortController()
  const leaving = request(`${gw.url}/leaving`, { dispatcher: gw.agent, signal: ac.signal }).catch((err: Error) => err)
  await eventually(() => a.stats().pending === 1)
  ac.abort()
  await gw.closedCount(1)
  t.equal(a.stats().pending, 0, 'left the queue when its client hung up')
  t.type(await leaving, Error)

  const timedOut = await request(`${gw.url}/waits`, { dispatcher: gw.agent })
  t.equal(timedOut.statusCode, 503, 'gave up after queueTimeout')
  t.equal((await timedOut.body.json() as { code: string }).code, 'FST_SSSONECTOR_POOL_EXHAUSTED')
  gate.open()
  t.equal((await first).statusCode, 200)
  t.equal(up.seen.length, 1, 'neither queued request reached the upstream')
})

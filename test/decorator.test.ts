import t from 'tap'
import { once } from 'node:events'
import { request } from 'undici'
import { Gate, refusedPort, startGateway, startUpstream } from './helpers/servers.js'

t.test('upstream(name): an unknown name is a clear error', async (t) => {
  const gw = await startGateway(t, { upstreams: { users: { targets: [] }, orders: { targets: [] } } })
  t.same(gw.app.sssonector.names, ['users', 'orders'])
  t.equal(gw.app.sssonector.upstream('users').name, 'users')
  t.throws(() => gw.app.sssonector.upstream('payments'), {
    code: 'FST_SSSONECTOR_UNKNOWN_UPSTREAM',
    message: 'Unknown upstream "payments"; the upstreams are: users, orders'
  })
})

t.test('stats() is plain JSON with per-target state, connections and counters', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url, { url: 'http://127.0.0.1:1', weight: 2 }], balance: 'round-robin' } }
  })
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(JSON.parse(JSON.stringify(s)), s, 'survives JSON unchanged')
  t.match(s, {
    name: 'a',
    balance: 'round-robin',
    active: 0,
    pending: 0,
    connections: 0,
    idle: 0,
    admitted: 0,
    rejected: {},
    targets: [
      { url: up.url, origin: up.url, weight: 1, state: 'up', active: 0, idle: 0, connections: 0, opened: 0, closed: 0, connectionAges: [], requests: 0, errors: {} },
      { url: 'http://127.0.0.1:1', weight: 2, state: 'up' }
    ]
  })
  t.type(s.targets[0].age, 'number')
})

t.test('request(): undici\'s response, no throw on 5xx, the connection held until the body is read', async (t) => {
  const up = await startUpstream(t, (req, res, body) => {
    res.statusCode = req.url === '/fail' ? 503 : 200
    res.setHeader('x-method', req.method ?? '')
    res.end(`${req.url} ${body.toString()}`)
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } } })
  const a = gw.app.sssonector.upstream('a')

  const res = await a.request({ method: 'GET', path: '/v1/users/1?x=1' })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-method'], 'GET')
  t.equal(a.stats().active, 1, 'held while the body is unread')
  t.equal(await res.body.text(), '/v1/users/1?x=1 ')
  if (!res.body.closed) await once(res.body, 'close')
  t.equal(a.stats().active, 0, 'released once read')
  t.equal(up.seen[0].headers.host, `127.0.0.1:${up.port}`)

  const posted = await a.request({ method: 'POST', path: '/p', body: 'hello', headers: { 'content-type': 'text/plain' } })
  t.equal(await posted.body.text(), '/p hello')

  const failed = await a.request({ method: 'GET', path: '/fail' })
  t.equal(failed.statusCode, 503, 'a 5xx is an answer, not an exception')
  failed.body.destroy()
  await once(failed.body, 'close').catch(() => {})
  t.equal(a.stats().active, 0, 'released once destroyed')

  await t.rejects(a.request({ method: 'GET', path: 'no-slash' }), { code: 'FST_SSSONECTOR_OPTIONS', message: /request\.path: "no-slash"/ })
  await t.rejects(a.request({ method: '', path: '/' }), { code: 'FST_SSSONECTOR_OPTIONS' })
  await t.rejects(a.request(null as never), { code: 'FST_SSSONECTOR_OPTIONS' })
})

t.test('request() throws FST_SSSONECTOR_* errors when nothing can serve', async (t) => {
  const port = await refusedPort()
  const gw = await startGateway(t, {
    upstreams: { dead: { targets: [`http://127.0.0.1:${port}`] }, empty: { targets: [] } }
  })
  await t.rejects(gw.app.sssonector.upstream('dead').request({ method: 'GET', path: '/' }), {
    code: 'FST_SSSONECTOR_UPSTREAM_CONNECT', statusCode: 502, category: 'connect_refused'
  })
  await t.rejects(gw.app.sssonector.upstream('empty').request({ method: 'GET', path: '/' }), {
    code: 'FST_SSSONECTOR_NO_TARGET', statusCode: 503, retryAfter: 5
  })
  t.equal(gw.app.sssonector.upstream('dead').stats().active, 0)
})

t.test('request() honours timeouts.request and an abort signal', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('late') })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], timeouts: { request: '200ms' } } } })
  const a = gw.app.sssonector.upstream('a')
  await t.rejects(a.request({ method: 'GET', path: '/' }), { code: 'FST_SSSONECTOR_REQUEST_TIMEOUT', statusCode: 504 })
  const ac = new AbortController()
  const p = a.request({ method: 'GET', path: '/', signal: ac.signal })
  await gate.waitingFor(2)
  ac.abort()
  await t.rejects(p)
  t.equal(a.stats().active, 0)
  t.same(a.stats().targets[0].errors, { request_timeout: 1 }, 'a caller\'s abort is not a target failure')
})

t.test('the upstream\'s dispatcher serves plain undici calls through the same pool', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } } })
  const a = gw.app.sssonector.upstream('a') as unknown as { dispatcher: import('undici').Dispatcher, stats: () => { admitted: number, active: number } }
  const res = await request('http://ignored.invalid/direct', { dispatcher: a.dispatcher })
  t.equal(res.statusCode, 200)
  const body = await res.body.json() as { url: string, headers: { host: string } }
  t.equal(body.url, '/direct')
  t.equal(body.headers.host, `127.0.0.1:${up.port}`, 'the target decides where it goes')
  t.equal(a.stats().admitted, 1)
  t.equal(a.stats().active, 0)

  // Headers as undici's flat list go out as they are.
  const listed = await request('http://ignored.invalid/list', { dispatcher: a.dispatcher, headers: ['x-one', '1', 'x-two', '2'] })
  const seen = await listed.body.json() as { headers: Record<string, string> }
  t.equal(seen.headers['x-one'], '1')
  t.equal(seen.headers['x-two'], '2')
})

t.test('addTarget and removeTarget: a removed target finishes what it has, takes nothing new, then closes', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const first = await startUpstream(t)
  const second = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('second') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [first.url], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  a.addTarget({ url: second.url, weight: 1 })
  t.throws(() => a.addTarget(second.url), { code: 'FST_SSSONECTOR_OPTIONS', message: /is a target already/ })
  t.throws(() => a.addTarget('ftp://x'), { code: 'FST_SSSONECTOR_OPTIONS' })
  t.equal(a.stats().targets.length, 2)

  // Round-robin: the first request goes to `first`, the second to `second` and waits there.
  const r1 = await request(`${gw.url}/one`, { dispatcher: gw.agent })
  await r1.body.dump()
  const held = request(`${gw.url}/two`, { dispatcher: gw.agent })
  await gate.waitingFor(1)
  const removed = a.removeTarget(second.url)
  let removedDone = false
  removed.then(() => { removedDone = true }, () => {})
  for (let i = 0; i < 5; i++) {
    const r = await request(`${gw.url}/more`, { dispatcher: gw.agent })
    t.equal(r.statusCode, 200)
    await r.body.dump()
  }
  t.equal(second.seen.length, 1, 'no new request reached the draining target')
  t.equal(removedDone, false, 'removal waits for the request in flight')
  gate.open()
  const res = await held
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'second', 'the request in flight finished')
  await removed
  for (const s of second.sockets) await once(s, 'close')
  t.equal(second.sockets.size, 0, 'its sockets are closed')
  t.same(a.stats().targets.map((x) => x.url), [first.url])
  await t.rejects(a.removeTarget(second.url), { code: 'FST_SSSONECTOR_UNKNOWN_TARGET' })
  await t.rejects(a.removeTarget('::'), { code: 'FST_SSSONECTOR_UNKNOWN_TARGET' })
})

t.test('the dispatcher: no target fails the handler; close() closes the upstream, which then refuses with 503', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] }, empty: { targets: [] } } })
  const empty = gw.app.sssonector.upstream('empty') as unknown as { dispatcher: import('undici').Dispatcher }
  await t.rejects(request('http://x.invalid/', { dispatcher: empty.dispatcher }), { code: 'FST_SSSONECTOR_NO_TARGET' })

  const a = gw.app.sssonector.upstream('a') as unknown as { dispatcher: import('undici').Dispatcher } & import('../types/index.js').SssonectorUpstream
  const res = await a.request({ method: 'GET', path: '/' })
  await res.body.dump()
  await a.dispatcher.close()
  await a.dispatcher.destroy()
  await t.rejects(a.request({ method: 'GET', path: '/' }), { code: 'FST_SSSONECTOR_CLOSED', statusCode: 503 })
  t.same(a.stats().rejected, { no_target: 1 })
})

t.test('request() and plain undici calls wait in the queue like proxied requests, and leave it when aborted', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (req, res) => { await gate.wait(); res.end(req.url) })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], pool: { maxActive: 1, maxQueue: 3 } } } })
  const a = gw.app.sssonector.upstream('a') as unknown as { dispatcher: import('undici').Dispatcher } & import('../types/index.js').SssonectorUpstream
  const first = a.request({ method: 'GET', path: '/first' })
  await gate.waitingFor(1)
  const queuedClient = a.request({ method: 'GET', path: '/client' })
  const queuedPlain = request('http://x.invalid/plain', { dispatcher: a.dispatcher })
  const ac = new AbortController()
  const aborted = a.request({ method: 'GET', path: '/aborted', signal: ac.signal })
  t.equal(a.stats().pending, 3)
  await t.rejects(a.request({ method: 'GET', path: '/overflow' }), { code: 'FST_SSSONECTOR_POOL_EXHAUSTED', statusCode: 503 })
  ac.abort()
  await t.rejects(aborted)
  t.equal(a.stats().pending, 2, 'the aborted one left the queue')
  gate.open()
  t.equal(await (await first).body.text(), '/first')
  t.equal(await (await queuedClient).body.text(), '/client')
  t.equal(await (await queuedPlain).body.text(), '/plain')
  t.same(up.seen.map((s) => s.url), ['/first', '/client', '/plain'])
})

t.test('a plain undici call that waits past queueTimeout fails with POOL_EXHAUSTED', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('x') })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], pool: { maxActive: 1, queueTimeout: '100ms', maxQueue: 1 } } } })
  const a = gw.app.sssonector.upstream('a') as unknown as { dispatcher: import('undici').Dispatcher } & import('../types/index.js').SssonectorUpstream
  const first = a.request({ method: 'GET', path: '/' })
  await gate.waitingFor(1)
  const late = request('http://x.invalid/late', { dispatcher: a.dispatcher })
  await t.rejects(request('http://x.invalid/full', { dispatcher: a.dispatcher }), { code: 'FST_SSSONECTOR_POOL_EXHAUSTED' }, 'queue full')
  await t.rejects(late, { code: 'FST_SSSONECTOR_POOL_EXHAUSTED' }, 'waited too long')
  gate.open()
  await (await first).body.dump()
})

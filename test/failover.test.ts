import t from 'tap'
import http from 'node:http'
import { request } from 'undici'
import type { Dispatcher } from 'undici'
import { refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'

async function send (gw: Gateway, path: string, opts: { method?: string, body?: Buffer, headers?: Record<string, string> } = {}): Promise<{ status: number, body: string }> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent, method: (opts.method ?? 'GET') as Dispatcher.HttpMethod, body: opts.body, headers: opts.headers })
  return { status: res.statusCode, body: await res.body.text() }
}

/** Runs `total` calls of fn, `width` at a time. */
async function inParallel<R> (total: number, width: number, fn: (i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = []
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < total) {
      const i = next++
      out[i] = await fn(i)
    }
  }))
  return out
}

/** An upstream that notes every request's x-id and echoes its body length. */
async function counted (t: Teardown, ids: Map<string, number>, handler?: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void): Promise<string> {
  const up = await startUpstream(t, (req, res, body) => {
    const id = String(req.headers['x-id'])
    ids.set(id, (ids.get(id) ?? 0) + 1)
    if (handler !== undefined) return handler(req, res, body)
    res.end(String(body.length))
  })
  return up.url
}

t.test('1 of 3 targets refusing connections: 1000 GETs and 200 POSTs of 64 KiB all succeed, each POST body reaching an upstream once', async (t) => {
  const ids = new Map<string, number>()
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [await counted(t, ids), dead, await counted(t, ids)], pool: { retryInterval: '50ms', maxRetryInterval: '100ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const body = Buffer.alloc(64 * 1024, 'p')
  const gets = await inParallel(1000, 20, async (i) => (await send(gw, `/get/${i}`, { headers: { 'x-id': `g${i}` } })).status)
  const posts = await inParallel(200, 10, async (i) => await send(gw, `/post/${i}`, { method: 'POST', body, headers: { 'x-id': `p${i}` } }))
  t.equal(gets.filter((s) => s === 200).length, 1000, 'every GET succeeded')
  t.equal(posts.filter((p) => p.status === 200 && p.body === String(body.length)).length, 200, 'every POST succeeded with its whole body')
  t.ok([...Array(200).keys()].every((i) => ids.get(`p${i}`) === 1), 'each POST reached an upstream exactly once')
  const s = gw.app.sssonector.upstream('a').stats()
  t.ok((s.targets[1].errors.connect_refused ?? 0) >= 1, `the dead target was tried (${s.targets[1].errors.connect_refused}) and skipped between trials`)
  t.ok((s.targets[1].errors.connect_refused ?? 0) < 200, 'not on every request')
})

t.test('an upstream that resets the second request on each connection: GETs all succeed; POSTs past bufferBody get 502, reaching it at most once', async (t) => {
  const ids = new Map<string, number>()
  const perSocket = new WeakMap<object, number>()
  const url = await counted(t, ids, (req, res, body) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1
    perSocket.set(req.socket, n)
    if (n === 2) {
      req.socket.resetAndDestroy()
      return
    }
    res.end(String(body.length))
  })
  const gw = await startGateway(t, {
    // The breaker would take this target out; here the retries alone are tested.
    upstreams: { a: { targets: [url], retry: { bufferBody: 1024 }, circuitBreaker: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  // Three at a time: within the default retry budget (3 retries in flight), which the budget test covers.
  const gets = await inParallel(100, 3, async (i) => (await send(gw, `/g${i}`, { headers: { 'x-id': `g${i}` } })).status)
  t.equal(gets.filter((s) => s === 200).length, 100, 'every GET succeeded')
  const posts = await inParallel(40, 4, async (i) => (await send(gw, `/p${i}`, { method: 'POST', body: Buffer.alloc(4096, 'x'), headers: { 'x-id': `p${i}` } })).status)
  t.ok(posts.includes(502), 'a reset POST gets 502')
  t.ok(posts.every((s) => s === 200 || s === 502))
  t.ok([...Array(40).keys()].every((i) => (ids.get(`p${i}`) ?? 0) <= 1), 'no POST reached the upstream twice')
  // An idempotent PUT that fits bufferBody is kept and replayed after a reset.
  const puts = await inParallel(40, 3, async (i) => await send(gw, `/u${i}`, { method: 'PUT', body: Buffer.alloc(512, 'y'), headers: { 'x-id': `u${i}` } }))
  t.ok(puts.every((p) => p.status === 200 && p.body === '512'), 'every PUT succeeded with its whole body')
  t.equal(gw.app.sssonector.upstream('a').stats().retriesActive, 0, 'the budget\'s count is back to 0')
})

t.test('a target that always answers 503 beside two healthy ones: GETs succeed; POSTs get its 503 as sent', async (t) => {
  const ids = new Map<string, number>()
  const busy = await counted(t, ids, (_req, res) => {
    res.statusCode = 503
    res.setHeader('x-from', 'busy')
    res.end('busy, try later')
  })
  const gw = await startGateway(t, {
    // The breaker would take the busy target out; here the retries alone are tested.
    upstreams: { a: { targets: [await counted(t, ids), busy, await counted(t, ids)], balance: 'round-robin', circuitBreaker: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const gets = await inParallel(60, 3, async (i) => (await send(gw, `/g${i}`, { headers: { 'x-id': `g${i}` } })).status)
  t.ok(gets.every((s) => s === 200), 'every GET succeeded')
  const posts = await inParallel(30, 1, async (i) => await send(gw, `/p${i}`, { method: 'POST', body: Buffer.from('x'), headers: { 'x-id': `p${i}` } }))
  const refused = posts.filter((p) => p.status === 503)
  t.ok(refused.length >= 5, `POSTs that landed on it got its 503 (${refused.length})`)
  t.ok(refused.every((p) => p.body === 'busy, try later'), 'as the upstream sent it')
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.targets[1].active, 0, 'no connection left busy by a dropped answer')
  t.ok(s.targets[1].idle >= 1, 'the dropped answer\'s connection was kept')
})

t.test('retry budget: with every target down, attempts stay within the budget; then a fast 503 without any connect', async (t) => {
  const targets = [await refusedPort(), await refusedPort(), await refusedPort()].map((p) => `http://127.0.0.1:${p}`)
  const gw = await startGateway(t, {
    // A skip long enough that no quick trial (a hundredth of it) falls within the test.
    upstreams: { a: { targets, retry: { budget: { percent: 0, minConcurrent: 2 } }, pool: { retryInterval: '10m', maxRetryInterval: '1h' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  const codes = await Promise.all(Array.from({ length: 30 }, async (_, i) => (await send(gw, `/${i}`)).status))
  t.ok(codes.every((c) => c === 502 || c === 503), 'all fail cleanly')
  const attempts = a.stats().targets.reduce((n, x) => n + x.requests, 0)
  t.ok(attempts <= 30 + 2 * 3, `${attempts} attempts for 30 requests: first tries plus what the budget allowed`)
  const res = await request(`${gw.url}/late`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 503)
  t.equal((await res.body.json() as { code: string }).code, 'FST_SSSONECTOR_NO_TARGET')
  const retryAfter = Number(res.headers['retry-after'])
  t.ok(retryAfter >= 590 && retryAfter <= 600, `Retry-After ${retryAfter}: when the first target may be tried again`)
  t.equal(a.stats().targets.reduce((n, x) => n + x.requests, 0), attempts, 'no connect attempt for it')
})

t.test('upstream.request() follows the same policy', async (t) => {
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, { upstreams: { a: { targets: [dead, up.url], balance: 'round-robin' } } })
  const a = gw.app.sssonector.upstream('a')
  for (let i = 0; i < 5; i++) {
    const res = await a.request({ method: 'POST', path: '/x', body: 'hello' })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(a.stats().targets[0].errors.connect_refused, 1, 'the dead target was tried once, then skipped')
})

t.test('retry: false turns failover off', async (t) => {
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [dead, up.url], balance: 'round-robin', retry: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  t.equal((await send(gw, '/x')).status, 502)
})

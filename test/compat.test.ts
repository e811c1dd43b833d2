// What a user of @fastify/http-proxy writes, as its README documents it, works
// the same through the pool's routes.
import t from 'tap'
import { request } from 'undici'
import Fastify from 'fastify'
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { startGateway, startPlainProxy, startUpstream } from './helpers/servers.js'
import type { Teardown, Upstream } from './helpers/servers.js'

interface Echo { port: number, url: string, headers: Record<string, string>, body: string }

/** A slow upstream: answers after `ms`, headers and all. */
async function slowUpstream (t: Teardown, ms: number): Promise<Upstream> {
  return await startUpstream(t, (_req, res) => {
    const timer = setTimeout(() => { res.end('late') }, ms)
    res.on('close', () => { clearTimeout(timer) })
  })
}

t.test('reply.from() in the route\'s own preHandler (http-proxy\'s fromParameters pattern) goes through the pool', async (t) => {
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  function preHandler (this: unknown, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (request.url !== '/api/original') {
      done()
      return
    }
    const { url, options } = (reply as unknown as { fromParameters: (u: string, p: unknown) => { url: string, options: object } }).fromParameters('/updated', request.params)
    reply.from(url, options)
  }
  const gw = await startGateway(t, {
    upstreams: { api: { targets: [a.url, b.url], balance: 'round-robin' } },
    routes: [{ prefix: '/api', upstream: 'api', preHandler }]
  })
  const ports = new Set<number>()
  for (let i = 0; i < 4; i++) {
    const res = await request(`${gw.url}/api/original`, { dispatcher: gw.agent })
    const body = await res.body.json() as Echo
    t.equal(res.statusCode, 200, 'answered by the upstream')
    t.equal(body.url, '/updated', 'at the URL the preHandler chose')
    t.equal(body.headers.host, `127.0.0.1:${body.port}`, 'with its target\'s Host')
    t.equal(body.headers['x-forwarded-for'], '127.0.0.1', 'forwarded as any proxied request')
    ports.add(body.port)
  }
  t.equal(ports.size, 2, 'balanced over both targets')
  const res = await request(`${gw.url}/api/other`, { dispatcher: gw.agent })
  t.equal(((await res.body.json()) as Echo).url, '/other', 'the other requests are proxied as before')
  t.equal(gw.app.sssonector.upstream('api').stats().active, 0, 'every slot given back')
})

t.test('reply.from() in the preHandler fails over, and fails as the route does', async (t) => {
  const a = await startUpstream(t)
  await a.close()
  const b = await startUpstream(t)
  const bare = (_request: FastifyRequest, reply: FastifyReply): void => { reply.from('/x') }
  const gw = await startGateway(t, {
    upstreams: { api: { targets: [a.url, b.url], balance: 'round-robin' }, dead: { targets: [a.url], retry: false }, dead2: { targets: [a.url], retry: false } },
    routes: [
      { prefix: '/api', upstream: 'api', preHandler: bare },
      { prefix: '/dead', upstream: 'dead', preHandler: bare },
      { prefix: '/plain', upstream: 'dead2' }
    ]
  })
  for (let i = 0; i < 3; i++) {
    const res = await request(`${gw.url}/api/a`, { dispatcher: gw.agent })
    const body = await res.body.json() as Echo
    t.equal(res.statusCode, 200, 'the refused target is failed over')
    t.equal(body.port, b.port)
    t.equal(body.headers['x-forwarded-for'], '127.0.0.1', 'a bare reply.from() gets the route\'s headers')
  }
  const plain = await request(`${gw.url}/plain/a`, { dispatcher: gw.agent })
  const expected = await plain.body.json() as { code: string }
  t.equal(plain.statusCode, 502)
  t.equal(expected.code, 'FST_SSSONECTOR_UPSTREAM_CONNECT')
  const res = await request(`${gw.url}/dead/a`, { dispatcher: gw.agent })
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 502, 'the same status as the route\'s own handler')
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_CONNECT', 'with the pool\'s code, not a TypeError or a 500: ' + JSON.stringify(body))
})

t.test('a route with no prefix and a rewritePrefix maps paths as http-proxy does', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ upstream: 'a', rewritePrefix: '/api2' }]
  })
  const plain = await startPlainProxy(t, { upstream: up.url, rewritePrefix: '/api2' })
  for (const path of ['/a', '/a/b?x=1', '/']) {
    const ours = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
    const theirs = await request(`${plain}${path}`)
    t.equal(ours.statusCode, theirs.statusCode, `${path}: same status`)
    t.equal(((await ours.body.json()) as Echo).url, ((await theirs.body.json()) as Echo).url, `${path}: same upstream path`)
  }
  const res = await request(`${gw.url}/a`, { dispatcher: gw.agent })
  t.equal(((await res.body.json()) as Echo).url, '/api2/a')
})

t.test('replyOptions.rewriteRequestHeaders has the last word on Host too', async (t) => {
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [a.url, b.url], balance: 'round-robin' } },
    routes: [
      { prefix: '/vhost', upstream: 'a', replyOptions: { rewriteRequestHeaders: (_req, headers) => ({ ...headers, host: 'api.example.test' }) } },
      { prefix: '/same', upstream: 'a', replyOptions: { rewriteRequestHeaders: (_req, headers) => ({ ...headers, 'x-seen-host': String(headers.host) }) } }
    ]
  })
  for (let i = 0; i < 2; i++) {
    const res = await request(`${gw.url}/vhost/x`, { dispatcher: gw.agent })
    const body = await res.body.json() as Echo
    t.equal(body.headers.host, 'api.example.test', `the hook's Host reaches target ${body.port}`)
  }
  const res = await request(`${gw.url}/same/x`, { dispatcher: gw.agent })
  const body = await res.body.json() as Echo
  t.equal(body.headers.host, `127.0.0.1:${body.port}`, 'a hook that leaves Host alone: the target\'s')
  t.equal(body.headers['x-seen-host'], `127.0.0.1:${body.port}`, 'the hook sees the Host of the request\'s target, as with http-proxy')
})

t.test('replyOptions.timeout bounds the route\'s wait for the upstream\'s answer', async (t) => {
  const up = await slowUpstream(t, 3000)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], retry: false } },
    routes: [{ prefix: '/', upstream: 'a', replyOptions: { timeout: 150 } }]
  })
  const started = performance.now()
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  const took = performance.now() - started
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 504)
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_HEADERS_TIMEOUT')
  t.ok(took < 1000, `the route's 150 ms held, not the upstream's 30 s or undici's second (took ${took.toFixed(0)} ms)`)
})

t.test('timeouts.request applies to upstream.dispatcher as to upstream.request()', async (t) => {
  const up = await slowUpstream(t, 1500)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], retry: false, timeouts: { request: 100 } } }
  })
  const upstream = gw.app.sssonector.upstream('a')
  const started = performance.now()
  const err = await request('http://ignored.invalid/x', { dispatcher: upstream.dispatcher }).then(() => null, (e: Error & { code?: string }) => e)
  const took = performance.now() - started
  t.ok(err !== null, 'the request failed')
  t.equal(err?.code, 'FST_SSSONECTOR_REQUEST_TIMEOUT', 'with the request timeout')
  t.ok(took < 1000, `at about 100 ms (took ${took.toFixed(0)} ms)`)
  const err2 = await upstream.request({ method: 'GET', path: '/x' }).then(() => null, (e: Error & { code?: string }) => e)
  t.equal(err2?.code, 'FST_SSSONECTOR_REQUEST_TIMEOUT', 'upstream.request() the same')
})

t.test('timeouts.request cuts an answer whose body outlasts it, through upstream.dispatcher too', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-length': '4' })
    res.write('ab')
    const timer = setTimeout(() => { res.end('cd') }, 1500)
    res.on('close', () => { clearTimeout(timer) })
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], retry: false, timeouts: { request: 100 } } }
  })
  const upstream = gw.app.sssonector.upstream('a')
  for (const [how, go] of [
    ['upstream.dispatcher', async () => await request('http://ignored.invalid/x', { dispatcher: upstream.dispatcher })],
    ['upstream.request()', async () => await upstream.request({ method: 'GET', path: '/x' })]
  ] as const) {
    const started = performance.now()
    const res = await go()
    t.equal(res.statusCode, 200, `${how}: the head came at once`)
    const err = await res.body.text().then(() => null, (e: Error) => e)
    const took = performance.now() - started
    t.ok(err !== null, `${how}: the body is cut`)
    t.ok(took < 1000, `${how}: at about 100 ms (took ${took.toFixed(0)} ms)`)
  }
})

t.test('timeouts.headers under a second holds to the millisecond scale', async (t) => {
  const up = await slowUpstream(t, 3000)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], retry: false, timeouts: { headers: 120 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const started = performance.now()
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  const took = performance.now() - started
  t.equal(res.statusCode, 504)
  t.equal(((await res.body.json()) as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_HEADERS_TIMEOUT')
  // undici's own timer ticks every half second: it fired at 500 ms to a second.
  t.ok(took >= 110 && took < 450, `fired at about 120 ms, not at undici's half-second tick (took ${took.toFixed(0)} ms)`)
})

t.test('a route\'s upstream may be a function of the request', async (t) => {
  const v1 = await startUpstream(t)
  const v2 = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { v1: { targets: [v1.url] }, v2: { targets: [v2.url] } },
    routes: [{ prefix: '/', upstream: (request) => String(request.headers['x-version'] ?? 'v1') }]
  })
  for (const [version, port] of [['v1', v1.port], ['v2', v2.port], ['v1', v1.port]] as const) {
    const res = await request(`${gw.url}/x`, { dispatcher: gw.agent, headers: { 'x-version': version } })
    t.equal(((await res.body.json()) as Echo).port, port, `x-version ${version} goes to ${version}`)
  }
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent, headers: { 'x-version': 'v3' } })
  const body = await res.body.json() as { code: string, message: string }
  t.equal(res.statusCode, 500, 'a name that is no upstream is the app\'s error')
  t.equal(body.code, 'FST_SSSONECTOR_UNKNOWN_UPSTREAM')
  t.match(body.message, /"v3"/, 'naming what the function returned')
  t.equal(v1.seen.length + v2.seen.length, 3, 'and reaches no upstream')
  for (const name of ['v1', 'v2']) t.equal(gw.app.sssonector.upstream(name).stats().active, 0)
})

t.test('a weighted split sends each upstream its share, and a sticky key keeps its upstream', async (t) => {
  const stable = await startUpstream(t)
  const canary = await startUpstream(t)
  const off = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { stable: { targets: [stable.url] }, canary: { targets: [canary.url] }, off: { targets: [off.url] } },
    routes: [
      { prefix: '/split', upstream: [{ name: 'stable', weight: 75 }, { name: 'canary', weight: 25 }, { name: 'off', weight: 0 }] },
      { prefix: '/sticky', upstream: [{ name: 'stable', weight: 50 }, { name: 'canary', weight: 50 }], sticky: (request) => request.headers['x-user'] as string | undefined }
    ]
  })
  const n = 400
  for (let i = 0; i < n; i++) await (await request(`${gw.url}/split/x`, { dispatcher: gw.agent })).body.dump()
  // 25% of 400 is 100, with a standard deviation of about 8.7: 70 to 130 is beyond 3 of them.
  t.ok(canary.seen.length >= 70 && canary.seen.length <= 130, `the canary took about a quarter (${canary.seen.length} of ${n})`)
  t.equal(stable.seen.length + canary.seen.length, n, 'the rest went to stable')
  t.equal(off.seen.length, 0, 'weight 0 takes none')

  const home = new Map<string, number>()
  for (let round = 0; round < 3; round++) {
    for (let u = 0; u < 60; u++) {
      const res = await request(`${gw.url}/sticky/x`, { dispatcher: gw.agent, headers: { 'x-user': `user-${u}` } })
      const port = ((await res.body.json()) as Echo).port
      if (round === 0) home.set(`user-${u}`, port)
      else t.equal(port, home.get(`user-${u}`), `user-${u} stays on its upstream`)
    }
  }
  const onCanary = [...home.values()].filter((p) => p === canary.port).length
  t.ok(onCanary > 10 && onCanary < 50, `keys spread over both (${onCanary} of 60 on the canary)`)
})

t.test('a bad split or choice fails register, naming the option', async (t) => {
  const cases: Array<[unknown, string | undefined, RegExp]> = [
    [[{ name: 'nope', weight: 1 }], undefined, /routes\[0\]\.upstream\[0\]\.name: "nope" is not an upstream/],
    [[{ name: 'a', weight: 1 }, { name: 'a', weight: 2 }], undefined, /routes\[0\]\.upstream\[1\]\.name: "a" is in the split twice/],
    [[{ name: 'a', weight: 1001 }], undefined, /routes\[0\]\.upstream\[0\]\.weight: 1001/],
    [[{ name: 'a', weight: 0 }], undefined, /routes\[0\]\.upstream: .* has no weight above 0/],
    [[], undefined, /routes\[0\]\.upstream: \[\] is an empty split/],
    [[{ name: 'a', weight: 1, extra: true }], undefined, /routes\[0\]\.upstream\[0\]/],
    ['a', 'sticky', /routes\[0\]\.sticky: .* is for a weighted split/]
  ]
  for (const [upstream, sticky, message] of cases) {
    const app = Fastify()
    const { default: plugin } = await import('../lib/index.js')
    const route = { prefix: '/x', upstream, ...(sticky === undefined ? {} : { sticky: () => 'k' }) }
    await t.rejects(async () => { await app.register(plugin, { upstreams: { a: { targets: [] } }, routes: [route as never], gracefulClose: false }) }, { code: 'FST_SSSONECTOR_OPTIONS', message }, String(message))
    await app.close()
  }
})

t.test('the app\'s hooks run on the proxy routes when added before ready, after register too; an encapsulated plugin\'s do not', async (t) => {
  const up = await startUpstream(t)
  const { default: plugin } = await import('../lib/index.js')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(plugin, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/api', upstream: 'a' }], gracefulClose: false })
  app.addHook('onRequest', async (request, reply) => {
    if (request.headers.authorization !== 'yes') await reply.code(401).send({ error: 'no' })
  })
  await app.register(async (scope) => {
    scope.addHook('onRequest', async (_request, reply) => { await reply.code(418).send() })
  })
  await app.ready()
  const denied = await app.inject('/api/x')
  t.equal(denied.statusCode, 401, 'an onRequest hook added after `await register` runs')
  t.equal(up.seen.length, 0, 'and nothing reached the upstream')
  t.equal(app.sssonector.upstream('a').stats().admitted, 0, 'nor took a slot')
  const allowed = await app.inject({ url: '/api/x', headers: { authorization: 'yes' } })
  t.equal(allowed.statusCode, 200, 'the encapsulated plugin\'s hook (418) does not apply to the proxy routes')
})

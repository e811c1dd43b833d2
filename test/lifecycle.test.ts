import t from 'tap'
import { once } from 'node:events'
import http from 'node:http'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

t.test('an app preHandler that rejects runs first, and the request takes no slot', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  }, (app) => {
    app.addHook('preHandler', async (req, reply) => {
      if (req.headers.authorization !== 'Bearer ok') {
        reply.code(401)
        return await reply.send({ error: 'unauthorized' })
      }
    })
  })
  const denied = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(denied.statusCode, 401)
  await denied.body.dump()
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.admitted, 0, 'no admission for a rejected request')
  t.equal(s.active, 0)
  t.equal(up.seen.length, 0, 'nothing reached the upstream')

  const allowed = await request(`${gw.url}/x`, { dispatcher: gw.agent, headers: { authorization: 'Bearer ok' } })
  t.equal(allowed.statusCode, 200)
  await allowed.body.dump()
  t.equal(gw.app.sssonector.upstream('a').stats().admitted, 1)
})

t.test('a route preHandler of the user runs before admission too', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{
      prefix: '/',
      upstream: 'a',
      preHandler: (_req, reply, _done) => { reply.code(403).send({ error: 'no' }) }
    }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 403)
  await res.body.dump()
  t.equal(gw.app.sssonector.upstream('a').stats().admitted, 0)
  t.equal(up.seen.length, 0)
})

t.test('with retry off, a 503 to a GET reaches the upstream exactly once (reply-from\'s retries are off)', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.statusCode = 503
    res.end('busy')
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }],
    retry: false
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 503)
  t.equal(await res.body.text(), 'busy')
  t.equal(up.seen.length, 1)
})

/** An upstream that sends headers and a first chunk, then holds the rest until the gate opens. */
async function holdingUpstream (t: Teardown, gate: Gate): Promise<{ url: string, closed: Promise<unknown>[], seen: unknown[] }> {
  const closed: Promise<unknown>[] = []
  const up = await startUpstream(t, async (_req, res) => {
    closed.push(once(res, 'close'))
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first chunk\n')
    await gate.wait()
    if (!res.destroyed) res.end('rest\n')
  })
  return { url: up.url, closed, seen: up.seen }
}

for (const method of ['GET', 'POST'] as const) {
  t.test(`a client that hangs up mid-response (${method}) releases its slot`, async (t) => {
    const gate = new Gate()
    const up = await holdingUpstream(t, gate)
    const gw = await startGateway(t, {
      upstreams: { a: { targets: [up.url] } },
      routes: [{ prefix: '/', upstream: 'a' }]
    })
    const req = http.request(`${gw.url}/x`, { method, headers: method === 'POST' ? { 'content-type': 'text/plain' } : {} })
    req.end(method === 'POST' ? 'a body the upstream reads in full' : undefined)
    const [res] = await once(req, 'response') as [http.IncomingMessage]
    t.equal(res.statusCode, 200)
    await once(res, 'data')
    await gate.waitingFor(1)
    t.equal(gw.app.sssonector.upstream('a').stats().active, 1, 'one request active while the response streams')
    req.destroy()
    await up.closed[0] // the gateway stopped the upstream's response
    const s = gw.app.sssonector.upstream('a').stats()
    t.equal(s.active, 0, 'slot released')
    t.equal(s.targets[0].active, 0, 'attempt ended')
    t.same(s.targets[0].errors, {}, 'a client hang-up is not a target failure')
    gate.open()
  })
}

t.test('an upstream that dies mid-response aborts the client\'s response and releases the slot', async (t) => {
  const up = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '100' })
    res.write('partial')
    setImmediate(() => res.socket?.destroy())
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const req = http.get(`${gw.url}/x`)
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  t.equal(res.statusCode, 200, 'headers had gone out already')
  res.resume()
  const [err] = await once(res, 'error') as [Error]
  t.match(err.message, /aborted/, 'the client sees an aborted response, not a complete one')
  await gw.closedCount(1)
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.active, 0)
  t.equal(s.targets[0].active, 0)
  t.equal(s.targets[0].errors.reset, 1, 'counted as a reset of the target')
})

t.test('an upstream that never answers gets 504 after timeouts.headers', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => {
    await gate.wait()
    res.end()
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], timeouts: { headers: '200ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 504)
  const body = await res.body.json() as { code: string, statusCode: number }
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_HEADERS_TIMEOUT')
  t.equal(up.seen.length, 1)
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.active, 0)
  t.equal(s.targets[0].errors.headers_timeout, 1)
})

t.test('timeouts.request: 504 when nothing was sent yet, a cut response after', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (req, res) => {
    if (req.url === '/stream') {
      res.writeHead(200)
      res.write('started')
    }
    await gate.wait()
    res.end()
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], timeouts: { request: '300ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/slow`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 504)
  t.equal((await res.body.json() as { code: string }).code, 'FST_SSSONECTOR_REQUEST_TIMEOUT')

  const req = http.get(`${gw.url}/stream`)
  const [r2] = await once(req, 'response') as [http.IncomingMessage]
  t.equal(r2.statusCode, 200)
  r2.resume()
  const [err] = await once(r2, 'error') as [Error]
  t.match(err.message, /aborted/)
  await gw.closedCount(2)
  t.equal(gw.app.sssonector.upstream('a').stats().active, 0)
})

import t from 'tap'
import { request } from 'undici'
import { rawRequest, startGateway, startUpstream } from './helpers/servers.js'

t.test('a GET goes through the upstream to its target and back', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { users: { targets: [up.url] } },
    routes: [{ prefix: '/users', upstream: 'users', rewritePrefix: '/v1/users' }]
  })
  const res = await request(`${gw.url}/users/1?x=1`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200)
  const body = await res.body.json() as { url: string, headers: Record<string, string> }
  t.equal(body.url, '/v1/users/1?x=1', 'prefix rewritten, query kept')
  t.equal(body.headers.host, `127.0.0.1:${up.port}`, 'the upstream sees its own Host')
  t.equal(body.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(body.headers['x-forwarded-proto'], 'http')
  t.equal(body.headers['x-forwarded-host'], new URL(gw.url).host)
  t.equal(up.seen.length, 1)
  t.equal(gw.app.sssonector.upstream('users').stats().active, 0, 'nothing active once answered')
})

t.test('a POST body streams to the upstream; its status and headers come back', async (t) => {
  const up = await startUpstream(t, (_req, res, body) => {
    res.statusCode = 201
    res.setHeader('x-echo-length', String(body.length))
    res.end(body)
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const payload = JSON.stringify({ hello: 'world', n: [1, 2, 3] })
  const res = await request(`${gw.url}/things`, {
    dispatcher: gw.agent,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: payload
  })
  t.equal(res.statusCode, 201)
  t.equal(res.headers['x-echo-length'], String(Buffer.byteLength(payload)))
  t.equal(await res.body.text(), payload)
  t.equal(up.seen[0].method, 'POST')
  t.equal(up.seen[0].headers['content-type'], 'application/json')
})

t.test('hop-by-hop headers are stripped both ways; X-Forwarded-For is appended to', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    res.setHeader('keep-alive', 'timeout=60')
    res.setHeader('x-kept', 'yes')
    res.setHeader('proxy-authenticate', 'Basic')
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(req.headers))
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/h`, {
    dispatcher: gw.agent,
    headers: {
      'x-forwarded-for': '203.0.113.9',
      te: 'trailers',
      'proxy-authorization': 'Basic Zm9vOmJhcg==',
      'x-custom': 'kept'
    }
  })
  const seen = await res.body.json() as Record<string, string>
  t.equal(seen['x-forwarded-for'], '203.0.113.9, 127.0.0.1')
  t.equal(seen['x-custom'], 'kept')
  t.notOk('te' in seen, 'te stripped')
  t.notOk('proxy-authorization' in seen, 'proxy-authorization stripped')
  t.equal(res.headers['x-kept'], 'yes')
  t.notOk(res.headers['proxy-authenticate'], 'proxy-authenticate stripped from the response')
  t.not(res.headers['keep-alive'], 'timeout=60', 'the upstream\'s Keep-Alive is not passed on')

  // A client's Connection header names more hop-by-hop headers (undici would not send this one).
  const port = Number(new URL(gw.url).port)
  const raw = await rawRequest(port, 'GET /c HTTP/1.1\r\nHost: x\r\nConnection: close, x-drop-me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n\r\n')
  t.match(raw, /^HTTP\/1.1 200/)
  const last = up.seen[up.seen.length - 1].headers
  t.notOk('x-drop-me' in last, 'headers named by Connection stripped')
  t.notOk('keep-alive' in last, 'keep-alive stripped')
})

t.test('X-Forwarded-Proto and X-Forwarded-Host from the client are replaced, not repeated', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/f`, {
    dispatcher: gw.agent,
    headers: { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', accept: 'text/plain', 'x-many': ['1', '2'] }
  })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  const seen = up.seen[0]
  t.equal(seen.headers['x-forwarded-proto'], 'http')
  t.equal(seen.headers['x-forwarded-host'], new URL(gw.url).host)
  t.equal(seen.headers.accept, 'text/plain')
  t.equal(seen.headers['x-many'], '1, 2', 'a header sent twice arrives with both values')
  t.equal(seen.headers.host, `127.0.0.1:${up.port}`)
})

t.test('an app\'s rewriteRequestHeaders sees the X-Forwarded-* headers and has the last word', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{
      prefix: '/',
      upstream: 'a',
      replyOptions: {
        rewriteRequestHeaders: (_req: unknown, headers: Record<string, unknown>) => {
          t.equal(headers['x-forwarded-for'], '127.0.0.1', 'the hook sees X-Forwarded-For')
          t.equal(headers['x-forwarded-proto'], 'http')
          return { ...headers, 'x-forwarded-host': 'public.example', 'x-added': 'yes' }
        }
      }
    }]
  })
  for (let i = 0; i < 2; i++) {
    const res = await request(`${gw.url}/u`, { dispatcher: gw.agent })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(up.seen.length, 2)
  t.equal(up.seen[1].headers['x-forwarded-host'], 'public.example')
  t.equal(up.seen[1].headers['x-added'], 'yes')
  t.equal(up.seen[1].headers['x-forwarded-for'], '127.0.0.1')
  t.equal(up.seen[1].headers.host, `127.0.0.1:${up.port}`)
  t.equal(gw.app.sssonector.upstream('a').stats().active, 0)
})

t.test('upstream statuses, including 5xx, pass through unchanged', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    res.statusCode = Number(req.url?.slice(1))
    res.end('status ' + String(res.statusCode))
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }],
    retry: false
  })
  for (const code of [200, 204, 404, 500, 503]) {
    const res = await request(`${gw.url}/${code}`, { dispatcher: gw.agent })
    t.equal(res.statusCode, code)
    await res.body.dump()
  }
})

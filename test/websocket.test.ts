import t from 'tap'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { startGateway } from './helpers/servers.js'
import { closed, nextMessage, openWs, startWsUpstream } from './helpers/ws.js'
import type { Upstream } from '../lib/upstream.js'

const wsUrl = (httpUrl: string, path: string): string => `${httpUrl.replace('http', 'ws')}${path}`

t.test('a WebSocket through a websocket route: upgrade, echo, close; plain HTTP on the same route still proxied', async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', rewritePrefix: '/v1', websocket: true }]
  })
  const ws = await openWs(wsUrl(gw.url, '/chat/room?x=1'))
  t.equal(up.upgrades.length, 1, 'the target got the upgrade')
  t.equal(up.upgrades[0].url, '/v1/room?x=1', 'path rewritten as on the HTTP path')
  t.equal(up.upgrades[0].headers.host, `127.0.0.1:${up.port}`, 'the target sees its own Host')
  t.equal(gw.app.sssonector.upstream('chat').stats().tunnels, 1, 'one tunnel open')
  ws.send('hello')
  const m = await nextMessage(ws)
  t.equal(m.data.toString(), 'hello')
  t.equal(m.isBinary, false)
  const res = await request(`${gw.url}/chat/plain`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200)
  t.same(await res.body.json(), { name: 'up', url: '/v1/plain' }, 'plain HTTP on the same route')
  ws.close(4001, 'bye')
  const c = await closed(ws)
  t.equal(c.code, 4001, 'close code from the client echoed back by the target')
  // Resolves once every tunnel lease is released (closing none: they end by themselves first).
  await (gw.app.sssonector.upstream('chat') as Upstream).closeTunnels(10_000)
  t.equal(gw.app.sssonector.upstream('chat').stats().tunnels, 0, 'the tunnel is released')
  t.same(gw.app.sssonector.upstream('chat').stats().upgrades, { ok: 1, refused: 0, failed: 0, no_target: 0, rejected: 0 })
})

t.test('faithful: subprotocol, permessage-deflate, cookie and X-Forwarded-* reach the target; text, binary, fragments, ping/pong and close codes pass both ways', async (t) => {
  const seen: { closes: Array<[number, string]>, pongs: string[], messages: string[] } = { closes: [], pongs: [], messages: [] }
  const up = await startWsUpstream(t, 'up', {
    perMessageDeflate: true,
    handleProtocols: (protocols) => protocols.has('chat.v1') ? 'chat.v1' : false
  }, (ws) => {
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? '' : data.toString()
      seen.messages.push(isBinary ? `binary:${(data as Buffer).length}` : text)
      if (text === 'fragments please') {
        ws.send('ab', { fin: false })
        ws.send('cd', { fin: false })
        ws.send('ef', { fin: true })
      } else if (text === 'ping me') {
        ws.ping('from-target')
      } else if (text === 'close me') {
        ws.close(4002, 'target says bye')
      } else {
        ws.send(data, { binary: isBinary })
      }
    })
    ws.on('pong', (data) => { seen.pongs.push(data.toString()) })
    ws.on('close', (code, reason) => { seen.closes.push([code, reason.toString()]) })
  })
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const ws = await openWs(wsUrl(gw.url, '/chat'), ['chat.v2', 'chat.v1'], { headers: { cookie: 'sid=abc; theme=dark', 'x-forwarded-for': '10.0.0.9' } })
  t.equal(ws.protocol, 'chat.v1', 'the subprotocol the target chose reaches the client')
  t.match(ws.extensions, /permessage-deflate/, 'permessage-deflate negotiated end to end')
  const h = up.upgrades[0].headers
  t.equal(h['sec-websocket-protocol'], 'chat.v2,chat.v1', 'the offered subprotocols reach the target as the client sent them')
  t.match(h['sec-websocket-extensions'], /permessage-deflate/)
  t.equal(h.cookie, 'sid=abc; theme=dark', 'cookies reach the target')
  t.equal(h['x-forwarded-for'], '10.0.0.9, 127.0.0.1', 'X-Forwarded-For: the chain with the client appended')
  t.equal(h['x-forwarded-proto'], 'http')
  t.equal(h['x-forwarded-host'], new URL(gw.url).host)
  t.equal(h.upgrade, 'websocket')
  t.match(h.connection, /upgrade/i)

  ws.send('hello')
  t.same(await nextMessage(ws), { data: Buffer.from('hello'), isBinary: false }, 'text echoed as text')
  const bin = Buffer.from([0, 1, 2, 255, 254])
  ws.send(bin)
  t.same(await nextMessage(ws), { data: bin, isBinary: true }, 'binary echoed as binary')
  ws.send('frag', { fin: false })
  ws.send('ment', { fin: false })
  ws.send('ed', { fin: true })
  t.same(await nextMessage(ws), { data: Buffer.from('fragmented'), isBinary: false }, 'a fragmented message from the client reaches the target whole')
  ws.send('fragments please')
  t.same(await nextMessage(ws), { data: Buffer.from('abcdef'), isBinary: false }, 'a fragmented message from the target reaches the client whole')

  const pong = once(ws, 'pong')
  ws.ping('from-client')
  t.equal(((await pong)[0] as Buffer).toString(), 'from-client', 'ping from the client, pong from the target')
  const ping = once(ws, 'ping')
  ws.send('ping me')
  t.equal(((await ping)[0] as Buffer).toString(), 'from-target', 'ping from the target reaches the client')
  ws.send('sync')
  await nextMessage(ws)
  t.same(seen.pongs, ['from-target'], 'the client\'s pong reaches the target')

  ws.send('close me')
  t.same(await closed(ws), { code: 4002, reason: 'target says bye' }, 'the target\'s close code and reason reach the client')

  const ws2 = await openWs(wsUrl(gw.url, '/chat'), 'chat.v1')
  ws2.close(4001, 'client says bye')
  await closed(ws2)
  t.same(seen.closes, [[4002, 'target says bye'], [4001, 'client says bye']], 'the client\'s close code and reason reach the target')
})

t.test('a 16 MB message each way', async (t) => {
  const up = await startWsUpstream(t, 'up', { perMessageDeflate: false })
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const ws = await openWs(wsUrl(gw.url, '/chat'), undefined, { perMessageDeflate: false })
  const big = randomBytes(16 * 1024 * 1024)
  ws.send(big)
  const back = await nextMessage(ws)
  t.equal(back.data.length, big.length, '16 MB back')
  t.ok(back.data.equals(big), 'byte for byte')
  ws.close()
  await closed(ws)
})

t.test('the app\'s hooks run first: onRequest and preHandler see the upgrade; a 401 from a hook leaves no upstream connection and takes no slot', async (t) => {
  const up = await startWsUpstream(t)
  const hooks: string[] = []
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  }, (app) => {
    app.addHook('onRequest', async (request, reply) => {
      hooks.push(`onRequest ${String(request.headers.upgrade)}`)
      if (request.headers.authorization !== 'Bearer ok') return await reply.code(401).send({ error: 'no token' })
    })
    app.addHook('preHandler', async (request) => { hooks.push(`preHandler ${String(request.headers.upgrade)}`) })
  })
  const err = await openWs(wsUrl(gw.url, '/chat')).then(() => null, (e: { statusCode: number, body: string }) => e)
  t.equal(err?.statusCode, 401, 'the hook\'s 401 reaches the client')
  t.match(err?.body, /no token/)
  t.same(hooks, ['onRequest websocket'], 'onRequest saw the upgrade')
  t.equal(up.upgrades.length, 0, 'the target got no upgrade')
  t.equal(up.sockets.size, 0, 'and no connection')
  const stats = gw.app.sssonector.upstream('chat').stats()
  t.equal(stats.tunnels, 0, 'no tunnel slot taken')
  t.same(stats.upgrades, { ok: 0, refused: 0, failed: 0, no_target: 0, rejected: 0 }, 'no upgrade counted')
  t.equal(stats.targets[0].requests, 0)

  const ws = await openWs(wsUrl(gw.url, '/chat'), undefined, { headers: { authorization: 'Bearer ok' } })
  t.same(hooks.slice(1), ['onRequest websocket', 'preHandler websocket'], 'with the token, both hooks ran before the upgrade went on')
  ws.close()
  await closed(ws)
})

t.test('a target\'s answer other than 101 reaches the client as it came, and counts as refused', async (t) => {
  const up = await startWsUpstream(t, 'up', {
    verifyClient: (_info, cb) => {
      cb(false, 403, 'Forbidden here', { 'x-why': 'origin' }) // eslint-disable-line n/no-callback-literal
    }
  })
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const err = await openWs(wsUrl(gw.url, '/chat')).then(() => null, (e: { statusCode: number, headers: Record<string, string>, body: string }) => e)
  t.equal(err?.statusCode, 403)
  t.equal(err?.headers['x-why'], 'origin', 'its headers')
  t.equal(err?.body, 'Forbidden here', 'its body')
  const stats = gw.app.sssonector.upstream('chat').stats()
  t.equal(stats.upgrades.refused, 1)
  t.equal(stats.targets[0].down, null, 'a 403 says nothing against the target')
  await (gw.app.sssonector.upstream('chat') as Upstream).closeTunnels(10_000)
  t.equal(stats.tunnels, 0, 'the slot went back')
})

t.test('an upgrade to a path with no route gets Fastify\'s 404; an upgrade on a route without websocket is proxied as plain HTTP', async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }, { prefix: '/api', upstream: 'chat' }]
  })
  const e404 = await openWs(wsUrl(gw.url, '/nowhere')).then(() => null, (e: { statusCode: number }) => e)
  t.equal(e404?.statusCode, 404)
  const eApi = await openWs(wsUrl(gw.url, '/api/x')).then(() => null, (e: { statusCode: number, body: string }) => e)
  t.equal(eApi?.statusCode, 200, 'the HTTP answer of the target, not a tunnel')
  t.same(JSON.parse(eApi?.body ?? '{}'), { name: 'up', url: '/x' })
  t.equal(up.upgrades.length, 0, 'the target saw no upgrade')
})

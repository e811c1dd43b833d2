import t from 'tap'
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

import t from 'tap'
import { request } from 'undici'
import { refusedPort, startGateway } from './helpers/servers.js'
import { closed, nextMessage, openWs, startWsUpstream } from './helpers/ws.js'
import type { WsUpstream } from './helpers/ws.js'
import type { Teardown } from './helpers/servers.js'
import { Upstream } from '../lib/upstream.js'
import { resolveOptions } from '../lib/options/index.js'
import { seeded } from './helpers/random.js'
import { WebSocket } from 'ws'

const wsUrl = (httpUrl: string, path: string): string => `${httpUrl.replace('http', 'ws')}${path}`

/** A ws target that says its name first, then echoes. */
async function named (t: Teardown, name: string): Promise<WsUpstream> {
  return await startWsUpstream(t, name, {}, (ws) => {
    ws.send(name)
    ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
  })
}

/** Opens a tunnel and reads which target it landed on. */
async function land (url: string, headers: Record<string, string> = {}): Promise<{ ws: WebSocket, name: string }> {
  const ws = new WebSocket(url, { headers })
  // Listening before the open: the name may come with the 101.
  const m = await nextMessage(ws)
  return { ws, name: m.data.toString() }
}

async function closeAll (sockets: WebSocket[]): Promise<void> {
  await Promise.all(sockets.map(async (ws) => {
    ws.close()
    await closed(ws)
  }))
}

const refusal = async (url: string): Promise<{ statusCode: number, headers: Record<string, string>, body: string }> =>
  await openWs(url).then(() => { throw new Error('opened') }, (e: { statusCode: number, headers: Record<string, string>, body: string }) => e)

t.test('round-robin spreads tunnels over the targets; stats count each target\'s tunnels', async (t) => {
  const a = await named(t, 'a')
  const b = await named(t, 'b')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [a.url, b.url], balance: 'round-robin' } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const opened = []
  for (let i = 0; i < 4; i++) opened.push(await land(wsUrl(gw.url, '/chat')))
  const names = opened.map((o) => o.name).sort()
  t.same(names, ['a', 'a', 'b', 'b'], 'two tunnels on each')
  const stats = gw.app.sssonector.upstream('chat').stats()
  t.equal(stats.tunnels, 4)
  t.same(stats.targets.map((x) => x.tunnels), [2, 2], 'stats per target')
  t.same(stats.targets.map((x) => x.busy), [0, 0], 'tunnels hold no pooled connection')
  await closeAll(opened.map((o) => o.ws))
})

t.test('least-request counts open tunnels as outstanding: new tunnels go to the target that has fewer', async (t) => {
  const config = resolveOptions({ upstreams: { u: { targets: ['http://127.0.0.1:1'], balance: 'least-request' } } }).upstreams[0]
  const up = new Upstream(config, { random: seeded(7) })
  t.teardown(async () => { await up.destroy() })
  const held = []
  for (let i = 0; i < 4; i++) held.push(up.tunnel())
  up.addTarget('http://127.0.0.1:2')
  const next = []
  for (let i = 0; i < 4; i++) next.push(up.tunnel())
  t.same(next.map((l) => l.target.origin), Array(4).fill('http://127.0.0.1:2'), 'each new tunnel goes to the target with fewer tunnels')
  t.same(up.stats().targets.map((x) => x.tunnels), [4, 4])
  for (const l of [...held, ...next]) {
    l.result({ category: 'client_abort', status: 0, latency: 0 })
    l.release()
  }
  t.equal(up.stats().tunnels, 0)
})

t.test('consistent-hash keeps a key\'s tunnels on one target', async (t) => {
  const targets = await Promise.all(['a', 'b', 'c'].map(async (n) => await named(t, n)))
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: targets.map((x) => x.url), balance: 'consistent-hash', hashKey: (request) => String(request.headers['x-user']) } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const open: WebSocket[] = []
  const where: Record<string, string[]> = {}
  // 12 keys over 3 targets: all on one target by chance once in about 180,000 runs (the ring's points follow the targets' random ports; with 4 keys it was 1 in 27)
  for (const user of ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'mallory', 'niaj']) {
    for (let i = 0; i < 2; i++) {
      const o = await land(wsUrl(gw.url, '/chat'), { 'x-user': user })
      open.push(o.ws)
      ;(where[user] ??= []).push(o.name)
    }
  }
  for (const [user, names] of Object.entries(where)) t.equal(new Set(names).size, 1, `${user}'s tunnels all on ${names[0]}`)
  t.ok(new Set(Object.values(where).map((n) => n[0])).size > 1, 'the keys spread over more than one target')
  await closeAll(open)
})

t.test('failover: a refused connect moves the upgrade to another target, and feeds the refusing target\'s state', async (t) => {
  const port = await refusedPort()
  const good = await named(t, 'good')
  const dead = `http://127.0.0.1:${port}`
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [dead, good.url], balance: 'round-robin' } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const opened = [await land(wsUrl(gw.url, '/chat')), await land(wsUrl(gw.url, '/chat'))]
  t.same(opened.map((o) => o.name), ['good', 'good'], 'both land on the live target')
  const stats = gw.app.sssonector.upstream('chat').stats()
  const d = stats.targets.find((x) => x.url === dead)!
  t.equal(d.errors.connect_refused, 1, 'the refusal is the dead target\'s error')
  t.ok(d.down !== null, 'it is skipped now')
  t.equal(d.available, false)
  t.equal(stats.upgrades.ok, 2)
  const metrics = await (await request(`${gw.url}/metrics`, { dispatcher: gw.agent })).body.text()
  t.match(metrics, /sssonector_request_retries_total\{upstream="chat",reason="connect_refused"\} 1/, 'the retry is counted')
  await closeAll(opened.map((o) => o.ws))
})

t.test('failover: a 503 before the 101 moves the upgrade to another target; a 5xx on the last attempt reaches the client', async (t) => {
  const busy = await startWsUpstream(t, 'busy', {
    verifyClient: (_info, cb) => {
      cb(false, 503, 'busy') // eslint-disable-line n/no-callback-literal
    }
  })
  const good = await named(t, 'good')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [busy.url, good.url], balance: 'round-robin' } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const opened = [await land(wsUrl(gw.url, '/chat')), await land(wsUrl(gw.url, '/chat'))]
  t.same(opened.map((o) => o.name), ['good', 'good'], 'both land on the target that accepts')
  t.ok(busy.upgrades.length >= 1, 'the busy target was tried')
  const stats = gw.app.sssonector.upstream('chat').stats()
  const b = stats.targets.find((x) => x.url === busy.url)!
  t.equal(b.window.answers['5xx'], busy.upgrades.length, 'each of its 503s is in its window')
  t.equal(b.window.retries, busy.upgrades.length, 'and each was retried')
  await closeAll(opened.map((o) => o.ws))

  const alone = await startGateway(t, {
    upstreams: { chat: { targets: [busy.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const e = await refusal(wsUrl(alone.url, '/chat'))
  t.equal(e.statusCode, 502, 'with no other target, the 503 ends as a 502 of the gateway')
  t.match(e.body, /FST_SSSONECTOR_UPSTREAM_STATUS/)
  t.equal(alone.app.sssonector.upstream('chat').stats().upgrades.failed, 1)
})

t.test('pool.maxTunnels: an upgrade beyond it gets 503 POOL_EXHAUSTED with Retry-After; requests are counted apart', async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url], pool: { maxTunnels: 1, maxActive: 1 } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const ws = await openWs(wsUrl(gw.url, '/chat'))
  const e = await refusal(wsUrl(gw.url, '/chat'))
  t.equal(e.statusCode, 503)
  t.match(JSON.parse(e.body), { code: 'FST_SSSONECTOR_POOL_EXHAUSTED' })
  t.ok(Number(e.headers['retry-after']) >= 1, 'Retry-After')
  t.equal(up.upgrades.length, 1, 'the refused upgrade never reached the target')
  const res = await request(`${gw.url}/chat/plain`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200, 'a request still goes through with the tunnel open (maxActive 1 counts connections, not tunnels)')
  await res.body.dump()
  t.equal(gw.app.sssonector.upstream('chat').stats().upgrades.rejected, 1)
  ws.close()
  await closed(ws)
})

t.test('no target in rotation: 503 NO_TARGET with Retry-After', async (t) => {
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const e = await refusal(wsUrl(gw.url, '/chat'))
  t.equal(e.statusCode, 503)
  t.match(JSON.parse(e.body), { code: 'FST_SSSONECTOR_NO_TARGET' })
  t.ok(Number(e.headers['retry-after']) >= 1)
  t.equal(gw.app.sssonector.upstream('chat').stats().upgrades.no_target, 1)
})

t.test('metrics and the status page show the tunnels', async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }],
    status: { path: '/status' }
  })
  let metrics = await (await request(`${gw.url}/metrics`, { dispatcher: gw.agent })).body.text()
  t.match(metrics, 'sssonector_upgrades_total{upstream="chat",result="ok"} 0', 'counters start at 0')
  t.match(metrics, 'sssonector_upgrades_total{upstream="chat",result="rejected"} 0')
  const ws = await openWs(wsUrl(gw.url, '/chat'))
  metrics = await (await request(`${gw.url}/metrics`, { dispatcher: gw.agent })).body.text()
  t.match(metrics, `sssonector_tunnels_active{upstream="chat",target="${up.url}"} 1`)
  t.match(metrics, 'sssonector_upgrades_total{upstream="chat",result="ok"} 1')
  const html = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
  t.equal(cell(html, up.url, 'tunnels'), '1', 'the status page shows the target\'s open tunnel')
  ws.close()
  await closed(ws)
  await (gw.app.sssonector.upstream('chat') as Upstream).closeTunnels(10_000)
  metrics = await (await request(`${gw.url}/metrics`, { dispatcher: gw.agent })).body.text()
  t.match(metrics, `sssonector_tunnels_active{upstream="chat",target="${up.url}"} 0`)
  t.match(metrics, 'sssonector_tunnel_duration_seconds_count{upstream="chat"} 1', 'its duration observed once it closed')
})

/** A cell of a target's row of the status page, by its column's name. */
function cell (html: string, url: string, column: string): string {
  const tr = new RegExp(`<tr class="[^"]*" data-target="${url}" data-state="[^"]*">(.*?)</tr>`, 's').exec(html)
  if (tr === null) throw new Error(`no row for ${url}`)
  const section = html.slice(html.lastIndexOf('<section', tr.index))
  const columns = [...section.matchAll(/<th[^>]*>(.*?)<\/th>/g)].map((m) => m[1])
  const cells = [...tr[1].matchAll(/<td[^>]*>(.*?)<\/td>/gs)].map((m) => m[1].replace(/<[^>]+>/g, ''))
  return cells[columns.indexOf(column)]
}

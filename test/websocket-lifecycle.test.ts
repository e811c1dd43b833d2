import t from 'tap'
import { EventEmitter } from 'node:events'
import { WebSocket } from 'ws'
import { startGateway } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'
import { closed, nextMessage, openWs, startWsUpstream } from './helpers/ws.js'
import type { WsUpstream } from './helpers/ws.js'
import type { Upstream } from '../lib/upstream.js'
import { gateway, skip } from './fixtures/gateway-process.js'

const wsUrl = (httpUrl: string, path: string): string => `${httpUrl.replace('http', 'ws')}${path}`

/** A ws target that says its name first, then echoes; it records the close codes it saw, and tells each on `events`. */
async function named (t: Teardown, name: string, closes: number[] = [], events = new EventEmitter()): Promise<WsUpstream> {
  return await startWsUpstream(t, name, {}, (ws) => {
    ws.send(name)
    ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
    ws.on('close', (code) => {
      closes.push(code)
      events.emit('close', code)
    })
  })
}

/** Resolves once `n` closes were told on `events`. */
async function closes (events: EventEmitter, n: number): Promise<void> {
  let seen = 0
  await new Promise<void>((resolve) => {
    events.on('close', () => { if (++seen === n) resolve() })
  })
}

async function land (url: string): Promise<{ ws: WebSocket, name: string }> {
  const ws = new WebSocket(url)
  const m = await nextMessage(ws)
  return { ws, name: m.data.toString() }
}

async function echo (ws: WebSocket, text: string): Promise<string> {
  ws.send(text)
  return (await nextMessage(ws)).data.toString()
}

t.test('timeouts.tunnelIdle closes a tunnel with no byte either way, with a going-away close to both sides', async (t) => {
  const seen: number[] = []
  const events = new EventEmitter()
  const up = await named(t, 'up', seen, events)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url], timeouts: { tunnelIdle: '300ms' } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const { ws } = await land(wsUrl(gw.url, '/chat'))
  const targetClosed = closes(events, 1)
  const start = Date.now()
  t.equal(await echo(ws, 'still here'), 'still here', 'traffic passes before the idle time')
  const c = await closed(ws)
  t.same(c, { code: 1001, reason: 'idle' }, 'the client gets 1001')
  t.ok(Date.now() - start >= 250, 'not before the idle time')
  await targetClosed
  t.same(seen, [1001], 'the target gets 1001 too')
  // The gateway's own two sockets close a moment after its peers': its lease goes back then.
  await (gw.app.sssonector.upstream('chat') as Upstream).closeTunnels(10_000)
  t.equal(gw.app.sssonector.upstream('chat').stats().tunnels, 0)
})

t.test('removeTarget drains a target\'s tunnels: new ones go elsewhere, open ones go on until tunnelDrain, then get 1001', async (t) => {
  const aCloses: number[] = []
  const aEvents = new EventEmitter()
  const a = await named(t, 'a', aCloses, aEvents)
  const aClosed = closes(aEvents, 1)
  const b = await named(t, 'b')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [a.url, b.url], balance: 'round-robin', timeouts: { tunnelDrain: '400ms' } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const first = await land(wsUrl(gw.url, '/chat'))
  const second = await land(wsUrl(gw.url, '/chat'))
  const onA = first.name === 'a' ? first.ws : second.ws
  const onB = first.name === 'a' ? second.ws : first.ws
  t.same([first.name, second.name].sort(), ['a', 'b'])
  const up = gw.app.sssonector.upstream('chat')
  const start = Date.now()
  const removed = up.removeTarget(a.url)
  const later = await Promise.all([land(wsUrl(gw.url, '/chat')), land(wsUrl(gw.url, '/chat'))])
  t.same(later.map((l) => l.name), ['b', 'b'], 'new tunnels go to the targets that stay')
  t.equal(await echo(onA, 'draining'), 'draining', 'the open tunnel to the removed target goes on meanwhile')
  t.same(await closed(onA), { code: 1001, reason: 'going away' }, 'then it gets 1001')
  t.ok(Date.now() - start >= 350, 'at the end of tunnelDrain')
  await removed
  await aClosed
  t.same(aCloses, [1001], 'the removed target got 1001 too')
  t.equal(await echo(onB, 'unaffected'), 'unaffected', 'tunnels to the other target go on')
  for (const ws of [onB, ...later.map((l) => l.ws)]) ws.close()
  await Promise.all([onB, ...later.map((l) => l.ws)].map(async (ws) => await closed(ws)))
})

t.test('app.close() waits for open tunnels up to gracefulClose.delay, then closes them with 1001; nothing stays open', async (t) => {
  const seen: number[] = []
  const events = new EventEmitter()
  const up = await named(t, 'up', seen, events)
  const targetClosed = closes(events, 2)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }],
    gracefulClose: { delay: '500ms' }
  })
  const open = await Promise.all([land(wsUrl(gw.url, '/chat')), land(wsUrl(gw.url, '/chat'))])
  const start = Date.now()
  const closing = gw.app.close()
  const refused = await openWs(wsUrl(gw.url, '/chat')).then(() => null, (e: { statusCode?: number }) => e)
  t.equal(refused?.statusCode, 503, 'a new upgrade while closing is refused')
  t.equal(await echo(open[0].ws, 'before the delay'), 'before the delay', 'open tunnels go on meanwhile')
  const codes = await Promise.all(open.map(async (o) => await closed(o.ws)))
  t.same(codes, [{ code: 1001, reason: 'going away' }, { code: 1001, reason: 'going away' }], 'each client gets 1001')
  await closing
  const took = Date.now() - start
  t.ok(took >= 450 && took < 3000, `closed at the delay (${took} ms)`)
  const connections = await new Promise<number>((resolve) => { gw.app.server.getConnections((_e, n) => { resolve(n) }) })
  t.equal(connections, 0, 'no client connection left')
  t.equal(gw.app.server.listening, false)
  t.equal(gw.app.sssonector.upstream('chat').stats().tunnels, 0, 'no tunnel left')
  await targetClosed
  t.same(seen, [1001, 1001], 'the target got 1001 for each')
  const handles = (process as unknown as { _getActiveHandles: () => unknown[] })._getActiveHandles()
  const gatewaySockets = handles.filter((h) => {
    const s = h as { remotePort?: number, localPort?: number, destroyed?: boolean }
    return s.destroyed === false && (s.remotePort === up.port)
  })
  t.equal(gatewaySockets.length, 0, 'no socket of the gateway to the target left open')
})

t.test('a target killed under open tunnels: its clients see a close, reconnect, and land on the healthy target', async (t) => {
  const a = await named(t, 'a')
  const b = await named(t, 'b')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [a.url, b.url], balance: 'round-robin' } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const open = []
  for (let i = 0; i < 4; i++) open.push(await land(wsUrl(gw.url, '/chat')))
  const onA = open.filter((o) => o.name === 'a')
  t.equal(onA.length, 2, 'two tunnels on the target to kill')
  const seen = onA.map(async (o) => await closed(o.ws))
  await a.kill()
  const codes = await Promise.all(seen)
  t.equal(codes.length, 2, 'each of its clients sees its tunnel close')
  for (const c of codes) t.equal(c.code, 1006, 'abnormal closure: the target died, nobody sent a close frame')
  const again = []
  for (let i = 0; i < onA.length; i++) again.push(await land(wsUrl(gw.url, '/chat')))
  t.same(again.map((l) => l.name), ['b', 'b'], 'the reconnections land on the healthy target')
  const stats = gw.app.sssonector.upstream('chat').stats()
  const dead = stats.targets.find((x) => x.url === a.url)!
  t.equal(dead.tunnels, 0, 'no tunnel counted on the dead target')
  t.equal(dead.available, false, 'the dead target is out of rotation')
  t.equal(stats.targets.find((x) => x.url === b.url)!.tunnels, 4)
  for (const ws of [...open.filter((o) => o.name === 'b'), ...again].map((o) => o.ws)) ws.close()
  await Promise.all([...open.filter((o) => o.name === 'b'), ...again].map(async (o) => await closed(o.ws)))
})

t.test('SIGTERM with open tunnels: they go on during the drain, get 1001 at its end, and the process exits 0 within the delay', { skip }, async (t) => {
  const seen: number[] = []
  const events = new EventEmitter()
  const up = await named(t, 'up', seen, events)
  const targetClosed = closes(events, 2)
  const gw = await gateway(t, up.url, { delay: 1500, flags: 'websocket' })
  const url = `ws://127.0.0.1:${gw.port}/chat`
  const open = await Promise.all([land(url), land(url)])
  const start = Date.now()
  gw.child.kill('SIGTERM')
  await gw.logged(/closing on signal/)
  t.equal(await echo(open[0].ws, 'during the drain'), 'during the drain', 'a tunnel goes on during the drain')
  const codes = await Promise.all(open.map(async (o) => await closed(o.ws)))
  t.same(codes.map((c) => c.code), [1001, 1001], 'each client gets 1001')
  const [code, signal] = await gw.exit
  const took = Date.now() - start
  t.equal(code, 0, 'exit 0')
  t.equal(signal, null)
  t.ok(took < 1500, `within the delay (${took} ms)`)
  await targetClosed
  t.same(seen, [1001, 1001], 'the target got 1001 for each')
})

t.test('setTargets drains the tunnels of the targets it drops, as removeTarget does', async (t) => {
  const a = await named(t, 'a')
  const b = await named(t, 'b')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [a.url, b.url], balance: 'round-robin', timeouts: { tunnelDrain: '300ms' } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const open = [await land(wsUrl(gw.url, '/chat')), await land(wsUrl(gw.url, '/chat'))]
  const onA = open.find((o) => o.name === 'a')!.ws
  const onB = open.find((o) => o.name === 'b')!.ws
  const set = gw.app.sssonector.upstream('chat').setTargets([b.url])
  const later = await land(wsUrl(gw.url, '/chat'))
  t.equal(later.name, 'b', 'a new tunnel goes to the target kept')
  t.same(await closed(onA), { code: 1001, reason: 'going away' }, 'the dropped target\'s tunnel gets 1001 at the end of tunnelDrain')
  await set
  t.equal(await echo(onB, 'kept'), 'kept', 'the kept target\'s tunnel goes on')
  t.same(gw.app.sssonector.upstream('chat').stats().targets.map((x) => [x.url, x.tunnels]), [[b.url, 2]])
  onB.close()
  later.ws.close()
  await Promise.all([closed(onB), closed(later.ws)])
})

t.test('app.close() with open tunnels ends its wait before Fastify\'s pluginTimeout would fail the close', async (t) => {
  const up = await named(t, 'up')
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  }, undefined, { pluginTimeout: 2500 })
  const { ws } = await land(wsUrl(gw.url, '/chat'))
  const start = Date.now()
  const gone = closed(ws)
  await gw.app.close()
  const took = Date.now() - start
  t.same(await gone, { code: 1001, reason: 'going away' })
  t.ok(took >= 900 && took < 2500, `closed after pluginTimeout less 1.5 s, not the 10 s delay, and without an error (${took} ms)`)
})

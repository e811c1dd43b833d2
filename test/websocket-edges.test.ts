import t from 'tap'
import https from 'node:https'
import http from 'node:http'
import net from 'node:net'
import { readFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { WebSocket, WebSocketServer } from 'ws'
import { startGateway } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'
import { closed, nextMessage, openWs, startWsUpstream } from './helpers/ws.js'
import { FrameEdges, closeFrame } from '../lib/frames.js'
import { underPrefixes } from '../lib/upgrade.js'
import type { Upstream } from '../lib/upstream.js'

const cert = readFileSync(new URL('./fixtures/cert.pem', import.meta.url))
const key = readFileSync(new URL('./fixtures/key.pem', import.meta.url))
const wsUrl = (httpUrl: string, path: string): string => `${httpUrl.replace('http', 'ws')}${path}`
const refusal = async (url: string): Promise<{ statusCode: number, headers: Record<string, string>, body: string }> =>
  await openWs(url).then(() => { throw new Error('opened') }, (e: { statusCode: number, headers: Record<string, string>, body: string }) => e)

/** A target that takes upgrade requests and never answers them, holding their sockets (reading, it sees the gateway's end). */
async function holdingTarget (t: Teardown): Promise<{ origin: string, held: net.Socket[], upgradeArrived: Promise<void> }> {
  const server = http.createServer()
  let arrived!: () => void
  const upgradeArrived = new Promise<void>((resolve) => { arrived = resolve })
  const held: net.Socket[] = []
  server.on('upgrade', (_req, socket: net.Socket) => {
    held.push(socket)
    socket.resume()
    socket.once('end', () => { socket.destroy() })
    arrived()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of held) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, held, upgradeArrived }
}

t.test('an https target: the upgrade goes over TLS with the upstream\'s tls options (a self-signed certificate refused without tls.ca)', async (t) => {
  const server = https.createServer({ cert, key })
  const wss = new WebSocketServer({ server })
  wss.on('connection', (ws) => { ws.on('message', (data) => { ws.send(`secure ${data.toString()}`) }) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate()
    await new Promise((resolve) => server.close(resolve))
  })
  const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  const strict = await startGateway(t, {
    upstreams: { chat: { targets: [origin] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const e = await refusal(wsUrl(strict.url, '/chat'))
  t.equal(e.statusCode, 502)
  t.match(JSON.parse(e.body), { code: 'FST_SSSONECTOR_UPSTREAM_TLS' }, 'the certificate is verified')
  t.equal(strict.app.sssonector.upstream('chat').stats().upgrades.failed, 1)

  const trusting = await startGateway(t, {
    upstreams: { chat: { targets: [origin], tls: { ca: cert } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const ws = await openWs(wsUrl(trusting.url, '/chat'))
  ws.send('hi')
  t.equal((await nextMessage(ws)).data.toString(), 'secure hi', 'through TLS with tls.ca')
  ws.close()
  await closed(ws)
})

t.test('a target that never answers the upgrade: timeouts.headers ends it with 504, against the target', async (t) => {
  const server = http.createServer()
  const held: net.Socket[] = []
  server.on('upgrade', (_req, socket: net.Socket) => { held.push(socket) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of held) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [origin], timeouts: { headers: '200ms' } } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const e = await refusal(wsUrl(gw.url, '/chat'))
  t.equal(e.statusCode, 504)
  t.match(JSON.parse(e.body), { code: 'FST_SSSONECTOR_UPSTREAM_HEADERS_TIMEOUT' })
  const target = gw.app.sssonector.upstream('chat').stats().targets[0]
  t.equal(target.errors.headers_timeout, 1, 'the timeout is the target\'s error')
  t.equal(gw.app.sssonector.upstream('chat').stats().tunnels, 0, 'the slot went back')
})

t.test('a client that leaves during the upgrade frees its slot and says nothing of the target', async (t) => {
  const { origin, held, upgradeArrived } = await holdingTarget(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [origin] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  })
  const ws = new WebSocket(wsUrl(gw.url, '/chat'))
  ws.on('error', () => {})
  await upgradeArrived
  const gone = new Promise((resolve) => held[0].once('close', resolve))
  ws.terminate()
  await gone
  const stats = gw.app.sssonector.upstream('chat').stats()
  t.equal(stats.tunnels, 0, 'the slot went back')
  t.same(stats.targets[0].errors, {}, 'no error against the target')
  t.equal(stats.targets[0].down, null)
})

t.test('upgrades outside the WebSocket routes go to the app\'s own upgrade listener', async (t) => {
  const up = await startWsUpstream(t)
  const own = new WebSocketServer({ noServer: true })
  own.on('connection', (ws) => { ws.send('own') })
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [up.url] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }]
  }, (app) => {
    app.server.on('upgrade', (req, socket, head) => {
      if (req.url === '/own') own.handleUpgrade(req, socket, head, (ws) => { own.emit('connection', ws, req) })
    })
  })
  t.teardown(() => { for (const c of own.clients) c.terminate() })
  const mine = new WebSocket(wsUrl(gw.url, '/own'))
  t.equal((await nextMessage(mine)).data.toString(), 'own', 'the app\'s own listener got its upgrade')
  const proxied = await openWs(wsUrl(gw.url, '/chat/x'))
  proxied.send('through')
  t.equal((await nextMessage(proxied)).data.toString(), 'through', 'the route\'s upgrade went through the pool')
  t.equal(up.upgrades.length, 1, 'only the route\'s upgrade reached the target')
  mine.close()
  proxied.close()
  await Promise.all([closed(mine), closed(proxied)])
})

t.test('frame edges: headers split across chunks, 16- and 64-bit lengths, masked frames', async (t) => {
  const frame = (len: number, masked: boolean): Buffer => {
    const ext = len < 126 ? Buffer.alloc(0) : len < 65536 ? Buffer.alloc(2) : Buffer.alloc(8)
    if (len >= 126 && len < 65536) ext.writeUInt16BE(len)
    if (len >= 65536) ext.writeBigUInt64BE(BigInt(len))
    const b1 = (masked ? 0x80 : 0) | (len < 126 ? len : len < 65536 ? 126 : 127)
    return Buffer.concat([Buffer.from([0x82, b1]), ext, masked ? Buffer.from([1, 2, 3, 4]) : Buffer.alloc(0), Buffer.alloc(len)])
  }
  const stream = Buffer.concat([frame(5, true), frame(300, false), frame(70000, true), closeFrame(1001, 'x', true)])
  for (const size of [1, 3, 7, 1000, stream.length]) {
    const edges = new FrameEdges()
    let atEnd = true
    for (let i = 0; i < stream.length; i += size) {
      edges.feed(stream.subarray(i, i + size))
      if (i + size < stream.length && i + size === 6) atEnd = edges.atEdge
    }
    t.ok(edges.atEdge, `at an edge after every frame, in chunks of ${size}`)
    if (size === 3) t.notOk(atEnd, 'not at an edge in the middle of a frame')
  }
  const mid = new FrameEdges()
  mid.feed(stream.subarray(0, 8))
  t.notOk(mid.atEdge, 'in the middle of a header')
  t.same(underPrefixes('/chat/x?y=1', ['/chat']), true)
  t.same(underPrefixes('/chatty', ['/chat']), false)
  t.same(underPrefixes('/t/42/ws', ['/t/:id']), true)
  t.same(underPrefixes('/anything', ['']), true)
})

t.test('another protocol than websocket is tunnelled too; tunnelIdle closes it by ending its sockets', async (t) => {
  const server = http.createServer()
  server.on('upgrade', (req, socket: net.Socket) => {
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${String(req.headers.upgrade)}\r\n\r\n`)
    socket.pipe(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise((resolve) => server.close(resolve)) })
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const gw = await startGateway(t, {
    upstreams: { echo: { targets: [origin], timeouts: { tunnelIdle: '200ms' } } },
    routes: [{ prefix: '/echo', upstream: 'echo', websocket: true }]
  })
  const client = net.connect(Number(new URL(gw.url).port), '127.0.0.1')
  let got = ''
  const gotEcho = new Promise<void>((resolve) => {
    client.on('data', (c: Buffer) => {
      got += c.toString()
      if (got.endsWith('ping-raw')) resolve()
    })
  })
  const gone = new Promise((resolve) => client.once('close', resolve))
  client.write('GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo-proto\r\n\r\nping-raw')
  await gotEcho
  t.match(got, /^HTTP\/1\.1 101 Switching Protocols\r\n/, '101 passed on')
  t.match(got, /Upgrade: echo-proto/i, 'with the target\'s Upgrade')
  t.ok(got.endsWith('\r\n\r\nping-raw'), 'the bytes sent with the upgrade request reach the target and come back')
  await gone
  // The gateway's side of it closes a moment after the client's: until its lease is released.
  await (gw.app.sssonector.upstream('echo') as Upstream).closeTunnels(10_000)
  t.equal(gw.app.sssonector.upstream('echo').stats().upgrades.ok, 1)
  t.equal(gw.app.sssonector.upstream('echo').stats().tunnels, 0, 'closed when idle, slot back')
})

t.test('app.close() ends an upgrade still under way at the end of its delay: the client gets 503, the target nothing against it', async (t) => {
  const { origin, upgradeArrived } = await holdingTarget(t)
  const gw = await startGateway(t, {
    upstreams: { chat: { targets: [origin] } },
    routes: [{ prefix: '/chat', upstream: 'chat', websocket: true }],
    gracefulClose: { delay: '300ms' }
  })
  const answer = refusal(wsUrl(gw.url, '/chat'))
  await upgradeArrived
  const start = Date.now()
  await gw.app.close()
  const e = await answer
  t.equal(e.statusCode, 503)
  t.match(JSON.parse(e.body), { code: 'FST_SSSONECTOR_CLOSED' })
  t.ok(Date.now() - start < 3000, 'at the end of the delay, not at timeouts.headers (30 s)')
  const stats = gw.app.sssonector.upstream('chat').stats()
  t.same(stats.targets[0].errors, {}, 'nothing against the target')
  t.equal(stats.tunnels, 0)
  t.equal(stats.upgrades.rejected, 1)
})

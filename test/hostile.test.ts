import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { request } from 'undici'
import { rawRequest, startGateway, startUpstream } from './helpers/servers.js'
import { seeded } from './helpers/random.js'

t.test('a target host that does not resolve: 502 FST_SSSONECTOR_UPSTREAM_DNS, category dns', async (t) => {
  // An empty label: the resolver refuses it without asking any server.
  const gw = await startGateway(t, { upstreams: { a: { targets: ['http://a..b:1'] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_DNS')
  const s = gw.app.sssonector.upstream('a').stats()
  // The only target may be tried again by a retry backing off (its quick trial).
  t.same(Object.keys(s.targets[0].errors), ['dns'], 'counted as dns only')
  const dns = s.targets[0].errors.dns ?? 0
  t.ok(dns >= 1 && dns <= 4, `once per attempt, at most 4 (${dns})`)
  t.equal(s.active, 0)
})

t.test('request smuggling shapes are refused with 400 and never forwarded', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const port = Number(new URL(gw.url).port)
  const shapes: Record<string, string> = {
    'Content-Length with Transfer-Encoding': 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
    'duplicate Content-Length': 'POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd',
    'obs-fold': 'GET /x HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n',
    'Transfer-Encoding not chunked last': 'POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n',
    'space before colon': 'GET /x HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd'
  }
  for (const [name, raw] of Object.entries(shapes)) {
    const out = await rawRequest(port, raw)
    t.match(out, /^HTTP\/1\.1 400 /, `${name}: 400`)
  }
  t.equal(up.seen.length, 0, 'nothing was forwarded')
  t.equal(gw.app.sssonector.upstream('a').stats().admitted, 0)
})

t.test('random and malformed bytes on the gateway\'s port never crash it nor leak a slot (fuzz, fixed seed)', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const port = Number(new URL(gw.url).port)
  const random = seeded(20261127)
  const valid = Buffer.from('POST /fuzz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello')
  const pick = (n: number): number => Math.floor(random() * n)
  const cases = 300
  for (let i = 0; i < cases; i++) {
    let payload: Buffer
    const kind = i % 3
    if (kind === 0) {
      payload = Buffer.from(Array.from({ length: 1 + pick(200) }, () => pick(256)))
    } else {
      payload = Buffer.from(valid)
      const flips = 1 + pick(kind === 1 ? 3 : 12)
      for (let f = 0; f < flips; f++) payload[pick(payload.length)] = pick(256)
      if (kind === 2) payload = payload.subarray(0, pick(payload.length) + 1)
    }
    const socket = net.connect(port, '127.0.0.1')
    await once(socket, 'connect')
    const closed = once(socket, 'close')
    socket.on('error', () => {})
    socket.on('data', () => {})
    socket.end(payload)
    await closed
  }
  const res = await request(`${gw.url}/after`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200, `still serving after ${cases} hostile connections`)
  await res.body.dump()
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.active, 0, 'no slot leaked')
  t.equal(s.targets[0].active, 0)
})

t.test('a client that stops sending its body holds no slot meanwhile, and gets 408 after timeouts.clientBody', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxActive: 1 }, timeouts: { clientBody: '300ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const socket = net.connect(Number(new URL(gw.url).port), '127.0.0.1')
  await once(socket, 'connect')
  let out = ''
  socket.on('data', (c: Buffer) => { out += c.toString() })
  socket.on('error', () => {})
  const answered = (async () => { while (!out.includes('\r\n\r\n')) await once(socket, 'data') })()
  // A streamed type, 10 of its 1000 bytes, then nothing.
  socket.write('POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nContent-Type: application/octet-stream\r\n\r\n0123456789')
  const res = await request(`${gw.url}/meanwhile`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200, 'the one connection (maxActive 1) still serves others while that body is awaited')
  await res.body.dump()
  await answered
  t.match(out, /^HTTP\/1\.1 408 /, '408 once it sent nothing for 300 ms')
  t.match(out, /FST_SSSONECTOR_CLIENT_BODY_TIMEOUT/)
  t.match(out, /connection: close/i, 'its connection ends with the answer')
  socket.destroy()
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(up.seen.filter((r) => r.url === '/slow').length, 0, 'nothing of it reached the upstream')
  t.equal(s.active, 0, 'no slot held')
  t.same(s.clientErrors, { client_timeout: 1 }, 'counted as the client\'s')
  t.same(s.targets[0].errors, {}, 'not the target\'s')
})

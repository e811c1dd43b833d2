import t from 'tap'
import { once } from 'node:events'
import http from 'node:http'
import net from 'node:net'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import sssonectorPool from '../lib/index.js'
import { Gate, eventually, startUpstream } from './helpers/servers.js'
import type { Teardown, Upstream } from './helpers/servers.js'
import { gateway, skip } from './fixtures/gateway-process.js'

function get (port: number, path: string, agent: http.Agent): Promise<{ status: number, body: string, connection: string | undefined }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode!, body, connection: res.headers.connection }))
    }).on('error', reject)
  })
}

async function gatedUpstream (t: Teardown, gate: Gate): Promise<Upstream> {
  return await startUpstream(t, async (req, res) => {
    if (req.url === '/health') { res.end('ok'); return }
    await gate.wait()
    res.end('done')
  })
}

t.test('SIGTERM with 200 requests in flight: all 200 complete with 200 OK, the process exits 0', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await gatedUpstream(t, gate)
  const gw = await gateway(t, up.url, { delay: 10_000 })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 250 })
  t.teardown(() => agent.destroy())
  const all = Array.from({ length: 200 }, async (_, i) => await get(gw.port, `/r${i}`, agent))
  await gate.waitingFor(200)
  // One more request pipelined behind a held one on the same connection: it arrives while closing.
  const raw = net.connect(gw.port, '127.0.0.1')
  await once(raw, 'connect')
  const rawClosed = once(raw, 'close')
  let rawOut = ''
  raw.on('data', (c: Buffer) => { rawOut += c.toString() })
  raw.write('GET /held HTTP/1.1\r\nHost: x\r\n\r\n')
  await gate.waitingFor(201)
  gw.child.kill('SIGTERM')
  await gw.logged(/closing on signal/)
  raw.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  gate.open()
  const results = await Promise.all(all)
  t.equal(results.filter((r) => r.status === 200 && r.body === 'done').length, 200, 'all 200 completed with 200 OK')
  const [code, signal] = await gw.exit
  t.equal(code, 0, 'exit 0')
  t.equal(signal, null)
  await rawClosed
  t.match(rawOut, /^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: close\r\n\r\ndone$/, 'the request in flight finished, with Connection: close')
  t.notMatch(rawOut, /HTTP\/1\.1 [0-9]{3}[\s\S]*HTTP\/1\.1/, 'the one pipelined behind it was not answered: the connection closed, so its client sends it elsewhere')
  t.notOk(up.seen.some((r) => r.url === '/late'), 'nor was it sent to the upstream (its answer would have had no connection to go out on)')
})

t.test('closing: a request arriving on an open keep-alive connection gets 503 with Connection: close', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const app = Fastify()
  await app.register(sssonectorPool, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } }, gracefulClose: false })
  app.get('/slow', async () => { await gate.wait(); return 'slow done' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const raw = net.connect((app.server.address() as net.AddressInfo).port, '127.0.0.1')
  await once(raw, 'connect')
  const closed = once(raw, 'close')
  let out = ''
  raw.on('data', (c: Buffer) => { out += c.toString() })
  raw.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await gate.waitingFor(1)
  const closing = app.close()
  await eventually(() => app.sssonector.closing)
  raw.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  gate.open()
  await closed
  await closing
  t.match(out, /^HTTP\/1\.1 200 OK[\s\S]*slow done/, 'the request in flight finished')
  t.match(out, /HTTP\/1\.1 503 Service Unavailable\r\n(.*\r\n)*Connection: close\r\n/i, 'the late one: 503 with Connection: close')
})

t.test('app.close() with Fastify\'s return503OnClosing: false: a request arriving on an open keep-alive connection is served, with Connection: close', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const app = Fastify({ return503OnClosing: false })
  await app.register(sssonectorPool, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } }, gracefulClose: false })
  app.get('/slow', async () => { await gate.wait(); return 'slow done' })
  app.get('/late', async () => 'late done')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const raw = net.connect((app.server.address() as net.AddressInfo).port, '127.0.0.1')
  await once(raw, 'connect')
  const closed = once(raw, 'close')
  let out = ''
  raw.on('data', (c: Buffer) => { out += c.toString() })
  raw.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await gate.waitingFor(1)
  const closing = app.close()
  await eventually(() => app.sssonector.closing)
  raw.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  gate.open()
  await closed
  await closing
  t.match(out, /^HTTP\/1\.1 200 OK[\s\S]*slow done/, 'the request in flight finished')
  t.match(out, /slow doneHTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: close\r\n(.*\r\n)*\r\nlate done$/i, 'the late one: served by its route, with Connection: close, and the connection closed after it')
})

t.test('SIGTERM: an idle keep-alive connection stays open for its client\'s next request, answered with Connection: close; one left idle is closed when the drain ends, before the delay', { skip }, async (t) => {
  const gate = new Gate()
  gate.open()
  const delay = 3000
  const gw = await gateway(t, (await gatedUpstream(t, gate)).url, { delay })
  const port = gw.port
  const connect = async (): Promise<net.Socket> => {
    const s = net.connect(port, '127.0.0.1')
    s.on('error', () => {})
    t.teardown(() => s.destroy())
    await once(s, 'connect')
    return s
  }
  const used = await connect()
  const idle = await connect()
  const first: string[] = []
  for (const s of [used, idle]) {
    s.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\n')
    first.push(await readOne(s))
  }
  t.match(first, [/^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: keep-alive\r\n/i, /^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: keep-alive\r\n/i], 'both connections are kept alive before the signal')
  let idleClosedAt: number | null = null
  idle.on('close', () => { idleClosedAt = Date.now() })
  const usedClosed = once(used, 'close')
  const since = Date.now()
  gw.child.kill('SIGTERM')
  await gw.logged(/closing on signal/)
  used.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  const late = await readOne(used)
  const idleOpenAfterLate = idleClosedAt === null
  await usedClosed
  const [code] = await gw.exit
  const exited = Date.now() - since
  t.match(late, /^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: close\r\n(.*\r\n)*\r\ndone$/i, 'the request sent on the idle connection after the signal: the upstream\'s answer, with Connection: close')
  t.ok(idleOpenAfterLate, 'the other idle connection was still open then (not closed at the signal)')
  t.not(idleClosedAt, null, 'the connection left idle was closed by the gateway before it exited')
  t.equal(code, 0, `exit 0: the close completed before the delay ran out, which exits 1 (exit seen ${exited} ms after SIGTERM, delay ${delay} ms)`)
})

/** A Fastify app with the plugin and gracefulClose: false, listening, and a raw connection to it. */
async function pipelining (t: Teardown, setup: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, raw: net.Socket, out: () => string, closed: Promise<unknown> }> {
  const app = Fastify({ return503OnClosing: false })
  await app.register(sssonectorPool, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } }, gracefulClose: false })
  setup(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await app.close() })
  const raw = net.connect((app.server.address() as net.AddressInfo).port, '127.0.0.1')
  t.teardown(() => raw.destroy())
  await once(raw, 'connect')
  const closed = once(raw, 'close')
  let out = ''
  raw.on('data', (c: Buffer) => { out += c.toString() })
  return { app, raw, out: () => out, closed }
}

t.test('closing: a request pipelined behind an answer not yet begun is not handled; that answer ends the connection', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const handled: string[] = []
  const { app, raw, out, closed } = await pipelining(t, (app) => {
    app.get('/slow', async () => { handled.push('/slow'); await gate.wait(); return 'slow done' })
    app.get('/late', async () => { handled.push('/late'); return 'late done' })
  })
  raw.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await gate.waitingFor(1)
  const closing = app.close()
  await eventually(() => app.sssonector.closing)
  // A listener of the server's own sees every request it parses, handled or not.
  const arrived = once(app.server, 'request')
  raw.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  await arrived
  gate.open()
  await closed
  await closing
  t.match(out(), /^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: close\r\n(.*\r\n)*\r\nslow done$/i, 'the answer in flight says Connection: close, and is the only one')
  t.same(handled, ['/slow'], 'the pipelined request reached no handler')
})

t.test('closing: a request pipelined behind an answer that went out keeping the connection is handled, and its answer ends it', async (t) => {
  const gate = new Gate()
  const late = new Gate()
  t.teardown(() => { gate.open(); late.open() })
  const { app, raw, out, closed } = await pipelining(t, (app) => {
    app.get('/stream', (_req, reply) => {
      reply.hijack()
      reply.raw.writeHead(200, { 'content-length': '4' })
      reply.raw.write('da')
      gate.wait().then(() => { reply.raw.end('ta') }, () => {})
    })
    app.get('/late', async () => { await late.wait(); return 'late done' })
  })
  raw.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n')
  await gate.waitingFor(1)
  const closing = app.close()
  await eventually(() => app.sssonector.closing)
  raw.write('GET /late HTTP/1.1\r\nHost: x\r\n\r\n')
  await late.waitingFor(1)
  gate.open()
  late.open()
  await closed
  await closing
  t.match(out(), /^HTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: keep-alive\r\n(.*\r\n)*\r\ndataHTTP\/1\.1 200 OK\r\n(.*\r\n)*connection: close\r\n(.*\r\n)*\r\nlate done$/i, 'the first answer kept the connection; the pipelined one was answered, with Connection: close')
})

/** Reads one response with a Content-Length from a raw socket; what came before a close if it closes first. */
async function readOne (socket: net.Socket): Promise<string> {
  return await new Promise((resolve) => {
    let out = ''
    const onData = (c: Buffer): void => {
      out += c.toString()
      const head = out.indexOf('\r\n\r\n')
      const length = /content-length: (\d+)/i.exec(out)
      if (head !== -1 && length !== null && out.length >= head + 4 + Number(length[1])) {
        done()
        resolve(out)
      }
    }
    const onClose = (): void => {
      done()
      resolve(out)
    }
    const done = (): void => {
      socket.off('data', onData)
      socket.off('close', onClose)
    }
    socket.on('data', onData)
    socket.on('close', onClose)
  })
}

t.test('requests held past the delay: the forced path, a log line saying how many were cut, exit 1', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const gw = await gateway(t, (await gatedUpstream(t, gate)).url, { delay: 300 })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 10 })
  t.teardown(() => agent.destroy())
  const held = Array.from({ length: 5 }, async (_, i) => await get(gw.port, `/r${i}`, agent).catch((err: Error) => err))
  await gate.waitingFor(5)
  gw.child.kill('SIGTERM')
  const [code] = await gw.exit
  t.equal(code, 1, 'exit 1')
  const line = await gw.logged(/requests cut/)
  t.match(line, { level: 50, cut: 5, msg: 'graceful close took longer than 300 ms: 5 requests cut' })
  for (const r of await Promise.all(held)) t.type(r, Error, 'the cut requests see their connection end')
})

t.test('a second signal exits at once', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const gw = await gateway(t, (await gatedUpstream(t, gate)).url, { delay: 10_000 })
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  get(gw.port, '/held', agent).catch(() => {})
  await gate.waitingFor(1)
  gw.child.kill('SIGTERM')
  await gw.logged(/closing on signal/)
  gw.child.kill('SIGINT')
  const [code] = await gw.exit
  t.equal(code, 1)
  t.ok(gw.logs.some((l) => /second signal/.test(String(l.msg))), 'logged')
})

t.test('an uncaught error takes the same path and is logged', { skip }, async (t) => {
  const gate = new Gate()
  gate.open()
  const gw = await gateway(t, (await gatedUpstream(t, gate)).url, { delay: 10_000, flags: 'throw' })
  const agent = new http.Agent()
  t.teardown(() => agent.destroy())
  await get(gw.port, '/boom', agent).catch(() => {})
  const line = await gw.logged(/closing after an uncaught error/)
  t.match(line, { level: 50, err: { message: 'uncaught boom' } })
  const [code] = await gw.exit
  t.equal(code, 1, 'exit 1 after an error')
})

t.test('preStop: after the signal the app keeps serving with closing true (readiness fails), then closes', { skip }, async (t) => {
  const gate = new Gate()
  gate.open()
  const gw = await gateway(t, (await gatedUpstream(t, gate)).url, { delay: 5000, preStop: 1500 })
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  t.equal((await get(gw.port, '/ready', agent)).status, 200)
  gw.child.kill('SIGTERM')
  await gw.logged(/closing on signal/)
  t.equal((await get(gw.port, '/ready', agent)).status, 503, 'readiness fails at once')
  t.equal((await get(gw.port, '/still', agent)).status, 200, 'traffic still served while the load balancer deregisters it')
  agent.destroy()
  const [code] = await gw.exit
  t.equal(code, 0)
})

t.test('50 apps registered and closed in one process: no MaxListenersExceeded warning, no listener left', async (t) => {
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))
  const before = process.listenerCount('SIGTERM')
  const apps = []
  for (let i = 0; i < 50; i++) {
    const app = Fastify()
    await app.register(sssonectorPool, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } } })
    await app.ready()
    apps.push(app)
  }
  t.equal(process.listenerCount('SIGTERM'), before + 1, 'one listener for all 50')
  await Promise.all(apps.map(async (a) => await a.close()))
  for (let i = 0; i < 50; i++) {
    const app = Fastify()
    await app.register(sssonectorPool, { upstreams: { a: { targets: ['http://127.0.0.1:1'] } } })
    await app.ready()
    await app.close()
  }
  await new Promise((resolve) => setImmediate(resolve))
  t.same(warnings.filter((w) => w.name === 'MaxListenersExceededWarning'), [])
  t.equal(process.listenerCount('SIGTERM'), before, 'none left')
})

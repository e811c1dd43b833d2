import t from 'tap'
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import sssonectorPool from '../lib/index.js'
import { Gate, eventually, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

const fixture = fileURLToPath(new URL('./fixtures/graceful-gateway.mjs', import.meta.url))
const built = existsSync(new URL('../dist/lib/index.js', import.meta.url))
const skip = built ? false : 'dist/ not built: run npm run build'

interface Child { child: ChildProcess, port: number, logs: Array<Record<string, unknown>>, logged: (msg: RegExp) => Promise<Record<string, unknown>>, exit: Promise<[number | null, string | null]> }

async function gateway (t: Teardown, target: string, delay: number, preStop = 0, extra = ''): Promise<Child> {
  const child = fork(fixture, [target, String(delay), String(preStop), extra], {
    execArgv: [],
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    stdio: ['ignore', 'pipe', 'inherit', 'ipc']
  })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const exit = once(child, 'exit') as Promise<[number | null, string | null]>
  const logs: Array<Record<string, unknown>> = []
  const waiters: Array<{ re: RegExp, resolve: (l: Record<string, unknown>) => void }> = []
  let buf = ''
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString()
    let i: number
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, i)
      buf = buf.slice(i + 1)
      try {
        const obj = JSON.parse(line) as Record<string, unknown>
        logs.push(obj)
        for (const w of waiters.filter((x) => x.re.test(String(obj.msg)))) {
          waiters.splice(waiters.indexOf(w), 1)
          w.resolve(obj)
        }
      } catch {}
    }
  })
  const [msg] = await once(child, 'message') as [{ port: number }]
  const logged = async (re: RegExp): Promise<Record<string, unknown>> => {
    const found = logs.find((l) => re.test(String(l.msg)))
    if (found !== undefined) return found
    return await new Promise((resolve) => waiters.push({ re, resolve }))
  }
  return { child, port: msg.port, logs, logged, exit }
}

function get (port: number, path: string, agent: http.Agent): Promise<{ status: number, body: string, connection: string | undefined }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode!, body, connection: res.headers.connection }))
    }).on('error', reject)
  })
}

async function gatedUpstream (t: Teardown, gate: Gate): Promise<string> {
  const up = await startUpstream(t, async (req, res) => {
    if (req.url === '/health') { res.end('ok'); return }
    await gate.wait()
    res.end('done')
  })
  return up.url
}

t.test('SIGTERM with 200 requests in flight: all 200 complete with 200 OK, the process exits 0', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const gw = await gateway(t, await gatedUpstream(t, gate), 10_000)
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
  t.notMatch(rawOut, /HTTP\/1\.1 [0-9]{3}[\s\S]*HTTP\/1\.1/, 'the one pipelined behind it was not taken: the connection closed, so its client sends it elsewhere')
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

t.test('requests held past the delay: the forced path, a log line saying how many were cut, exit 1', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const gw = await gateway(t, await gatedUpstream(t, gate), 300)
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
  const gw = await gateway(t, await gatedUpstream(t, gate), 10_000)
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
  const gw = await gateway(t, await gatedUpstream(t, gate), 10_000, 0, 'throw')
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
  const gw = await gateway(t, await gatedUpstream(t, gate), 5000, 1500)
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

import t from 'tap'
import net from 'node:net'
import { fork } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { once } from 'node:events'
import { request } from 'undici'
import { startGateway, startUpstream } from './helpers/servers.js'

/** A client that sends its headers, then its body a byte every `every` ms, until stopped. */
function trickler (port: number, length: number, every: number): { stop: () => void, answered: Promise<string> } {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  let out = ''
  socket.on('data', (c: Buffer) => { out += c.toString('latin1') })
  let timer: NodeJS.Timeout | null = null
  socket.once('connect', () => {
    socket.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`)
    timer = setInterval(() => { socket.write('u') }, every)
  })
  const answered = once(socket, 'close').then(() => out)
  return {
    stop: () => {
      if (timer !== null) clearInterval(timer)
      socket.destroy()
    },
    answered
  }
}

t.test('slow uploaders hold no connection while they trickle: three times maxActive of them, and every GET is still served', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxActive: 10 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const port = Number(new URL(gw.url).port)
  // 30 uploads of 1,000 bytes at a byte every 50 ms: 50 s each if nothing stops them.
  const slow = Array.from({ length: 30 }, () => trickler(port, 1000, 50))
  t.teardown(() => { for (const s of slow) s.stop() })
  const statuses = await Promise.all(Array.from({ length: 50 }, async (_, i) => {
    const res = await request(`${gw.url}/get/${i}`, { dispatcher: gw.agent })
    await res.body.dump()
    return res.statusCode
  }))
  t.equal(statuses.filter((s) => s === 200).length, 50, 'every GET served while 30 uploads trickle')
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.active, 0, 'the uploads hold no slot')
  t.equal(up.seen.filter((r) => r.url === '/upload').length, 0, 'nothing of them reached the upstream yet')
  t.same(s.rejected, {}, 'nothing refused')
})

t.test('an upload that sent more than retry.bufferBody, then stalls: 408 after timeouts.clientBody, its slot back, not the target\'s fault', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxActive: 1 }, timeouts: { clientBody: '200ms' } } },
    routes: [{ prefix: '/', upstream: 'a', bodyLimit: 1024 * 1024 }]
  })
  const socket = net.connect(Number(new URL(gw.url).port), '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  let out = ''
  socket.on('data', (c: Buffer) => { out += c.toString('latin1') })
  const closed = once(socket, 'close')
  // 100 KiB of 500: past the 64 KiB read before admission, so it holds the one connection, then nothing.
  socket.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${500 * 1024}\r\n\r\n`)
  socket.write(Buffer.alloc(100 * 1024, 'u'))
  await closed
  t.match(out, /^HTTP\/1\.1 408 /, '408: it sent nothing for 200 ms')
  t.match(out, /FST_SSSONECTOR_CLIENT_BODY_TIMEOUT/)
  await gw.closedCount(1)
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.active, 0, 'its slot is back')
  t.same(s.targets[0].errors, {}, 'not the target\'s fault')
  t.equal(s.targets[0].breaker?.failed, 0)
  const res = await request(`${gw.url}/after`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200, 'the one connection serves the next request')
  await res.body.dump()
})

t.test('a gap the upstream causes (it reads nothing for 5 times timeouts.clientBody) is not the client\'s: the whole body arrives', async (t) => {
  const { createHash } = await import('node:crypto')
  let release: () => void = () => {}
  const reading = new Promise<void>((resolve) => { release = resolve })
  let began: () => void = () => {}
  const arrived = new Promise<void>((resolve) => { began = resolve })
  const up = await startUpstream(t, async (req, res) => {
    // It takes the request, then reads nothing until told to.
    req.pause()
    began()
    await reading
    const hash = createHash('sha1')
    let length = 0
    for await (const chunk of req) { hash.update(chunk as Buffer); length += (chunk as Buffer).length }
    res.end(`${length} ${hash.digest('hex')}`)
  }, { readBody: false })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], timeouts: { clientBody: '100ms' } } },
    routes: [{ prefix: '/', upstream: 'a', bodyLimit: 64 * 1024 * 1024 }]
  })
  // 16 MiB, sent as fast as the gateway takes it: far more than the socket buffers between it and the upstream.
  const body = Buffer.alloc(16 * 1024 * 1024, 'b')
  const sent = request(`${gw.url}/upload`, { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' }, dispatcher: gw.agent })
  await arrived
  // Five gap timeouts with the upstream reading nothing, the client ready to send.
  await new Promise<void>((resolve) => { setTimeout(resolve, 500) })
  release()
  const res = await sent
  t.equal(res.statusCode, 200, 'no 408: the client sent as fast as it was let')
  t.equal(await res.body.text(), `${body.length} ${createHash('sha1').update(body).digest('hex')}`, 'the whole body, unchanged')
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(s.clientErrors, {}, 'no client error counted')
  t.same(s.targets[0].errors, {})
})

const memoryFixture = fileURLToPath(new URL('./fixtures/memory-gateway.mjs', import.meta.url))

t.test('a body nobody will read is let go with its answer: 100 uploads of 256 KiB to a dead target leave no buffer behind', { skip: existsSync(new URL('../dist/lib/index.js', import.meta.url)) ? false : 'dist/ not built: run npm run build' }, async (t) => {
  // a port nothing listens on: every upload gets its 502 or 503 before a byte is sent on
  const dead = await startUpstream(t)
  const deadUrl = dead.url
  await dead.close()
  const child = fork(memoryFixture, [deadUrl], { execArgv: ['--expose-gc'], cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  t.teardown(() => { child.kill() })
  const [ready] = await once(child, 'message') as [{ port: number, arrayBuffers: number }]
  const body = Buffer.alloc(256 * 1024, 7)
  const statuses = new Map<number, number>()
  for (let i = 0; i < 100; i++) {
    const res = await request(`http://127.0.0.1:${ready.port}/up/${i}`, { method: 'POST', body, headers: { 'content-length': String(body.length) } }).catch(() => null)
    const status = res === null ? 0 : res.statusCode
    if (res !== null) await res.body.dump()
    statuses.set(status, (statuses.get(status) ?? 0) + 1)
  }
  t.ok([...statuses.keys()].every((s) => s === 502 || s === 503 || s === 0), `answered 502/503 (or closed): ${JSON.stringify(Object.fromEntries(statuses))}`)
  child.send('mem')
  const [after] = await once(child, 'message') as [{ arrayBuffers: number }]
  const kept = after.arrayBuffers - ready.arrayBuffers
  // each body's start (64 KiB) and what its guard had read: over 6 MiB if kept
  t.ok(kept < 2 * 1024 * 1024, `ArrayBuffers after gc grew ${(kept / 1024).toFixed(0)} KiB over 100 uploads (kept, each would hold 64 KiB or more)`)
  child.send('close')
  await once(child, 'exit')
})

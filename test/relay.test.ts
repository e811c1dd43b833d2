// The proxy route's own forwarding (lib/relay.ts): the answer written to the
// client without reply-from, with the app's hooks, headers and paths as
// through @fastify/http-proxy.
import t from 'tap'
import http from 'node:http'
import net from 'node:net'
import { EventEmitter, once } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import type { AddressInfo } from 'node:net'
import type { IncomingHttpHeaders } from 'node:http'
import { refusedPort, startGateway, startPlainProxy, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

interface Seen { onSend: number, onSendStream: number, onResponse: number[] }

/** The hooks an app puts around its routes: headers from onRequest and preHandler, a count of onResponse (and onSend when asked). */
function hooks (seen: Seen, withOnSend: boolean): (app: FastifyInstance) => void {
  return (app) => {
    app.addHook('onRequest', async (_request, reply) => {
      reply.header('x-app', 'on-request')
      reply.header('set-cookie', 'app=1')
    })
    app.addHook('preHandler', async (_request, reply) => { reply.header('x-pre', 'pre-handler') })
    app.addHook('onResponse', async (_request, reply) => { seen.onResponse.push(reply.statusCode) })
    if (withOnSend) {
      app.addHook('onSend', async (_request, reply, payload) => {
        seen.onSend++
        if (typeof (payload as { pipe?: unknown } | null)?.pipe === 'function') seen.onSendStream++
        reply.header('x-on-send', 'on-send')
        return payload
      })
    }
  }
}

const BIG = 1024 * 1024 + 17

for (const withOnSend of [false, true]) {
  t.test(`the app's hooks run around a proxy route ${withOnSend ? 'with an onSend hook (the answer goes through reply.send)' : 'with no onSend hook (the answer goes to the response directly)'}`, async (t) => {
    const big = Buffer.alloc(BIG, 'b')
    const up = await startUpstream(t, (req, res) => {
      res.setHeader('set-cookie', ['up=1', 'up=2'])
      res.setHeader('x-up', 'upstream')
      res.setHeader('x-app', 'upstream-wins')
      res.end(req.url === '/big' ? big : 'small')
    })
    const dead = await refusedPort()
    const seen: Seen = { onSend: 0, onSendStream: 0, onResponse: [] }
    const gw = await startGateway(t, {
      upstreams: { a: { targets: [up.url] }, dead: { targets: [`http://127.0.0.1:${dead}`], retry: false } },
      routes: [{ prefix: '/a', upstream: 'a' }, { prefix: '/dead', upstream: 'dead' }]
    }, hooks(seen, withOnSend))
    for (const path of ['/a/small', '/a/big']) {
      const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
      const body = Buffer.from(await res.body.arrayBuffer())
      t.equal(res.statusCode, 200)
      t.equal(body.length, path === '/a/big' ? BIG : 5, `${path}: the whole body`)
      t.equal(res.headers['x-up'], 'upstream', `${path}: the upstream's own header`)
      t.equal(res.headers['x-pre'], 'pre-handler', `${path}: a header the app's preHandler set`)
      t.equal(res.headers['x-app'], 'upstream-wins', `${path}: where both set one, the upstream's (as reply-from copies it over the app's)`)
      t.same(res.headers['set-cookie'], ['app=1', 'up=1', 'up=2'], `${path}: Set-Cookie of the app and of the upstream, each kept`)
      if (withOnSend) t.equal(res.headers['x-on-send'], 'on-send', `${path}: a header the app's onSend hook set`)
    }
    const failed = await request(`${gw.url}/dead/x`, { dispatcher: gw.agent })
    const error = await failed.body.json() as { code: string }
    t.equal(failed.statusCode, 502, 'a refused target: 502')
    t.equal(error.code, 'FST_SSSONECTOR_UPSTREAM_CONNECT', 'as JSON with its code')
    t.equal(failed.headers['x-app'], 'on-request', 'the app\'s headers on the error too')
    await gw.closedCount(3)
    t.same(seen.onResponse, [200, 200, 502], 'onResponse ran once per request, with its status')
    if (withOnSend) {
      t.equal(seen.onSend, 3, 'onSend ran once per request, the error included')
      t.equal(seen.onSendStream, 2, 'and saw each answer as a stream')
    } else {
      t.equal(seen.onSend, 0)
    }
    t.equal(gw.app.sssonector.upstream('a').stats().active, 0, 'every slot given back')
  })
}

t.test('paths and query strings reach the upstream as plain @fastify/http-proxy sends them', async (t) => {
  const up = await startUpstream(t)
  const plain = await startPlainProxy(t, { upstream: up.url, prefix: '/p', rewritePrefix: '/q' })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/p', upstream: 'a', rewritePrefix: '/q' }]
  })
  const paths = [
    '/p/plain/path', '/p/a/./b', '/p/a/%2e/b', '/p/a%20b', '/p/caf%C3%A9', '/p/a;b=c,d', '/p/%7Euser', '/p/x?', '/p/x?a=1&b=%20&c&d=%zz',
    '/p/x?q=caf%C3%A9#frag', '/p/sp"ace', '/p/a{b}', '/p/a|b', '/p/a^b', '/p/a`b', '/p/x/', '/p', '/p/'
  ]
  for (const path of paths) {
    const before = up.seen.length
    const viaPlain = await request(`${plain}${path}`)
    await viaPlain.body.dump()
    const plainSaw = up.seen[before]?.url
    const viaPool = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
    await viaPool.body.dump()
    t.equal(viaPool.statusCode, viaPlain.statusCode, `${path}: the same status (${viaPlain.statusCode})`)
    t.equal(up.seen[before + 1]?.url, plainSaw, `${path}: the upstream saw ${String(plainSaw)} both ways`)
  }
})

/** An upstream that writes its answer's head as given, byte for byte. */
async function rawUpstream (t: Teardown, head: string): Promise<string> {
  const server = net.createServer((socket) => {
    socket.once('data', () => { socket.end(head) })
    socket.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { await new Promise((resolve) => server.close(resolve)) })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('a head Node would refuse to write: a control character the app\'s rewriteHeaders put in is cleaned, a status past 599 is a 502', async (t) => {
  const up = await startUpstream(t)
  const weird = await rawUpstream(t, 'HTTP/1.1 700 Weird\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok')
  const rewriteHeaders = (headers: IncomingHttpHeaders): IncomingHttpHeaders => ({ ...headers, 'x-dirty': 'a\x01b' })
  const plainDirty = await startPlainProxy(t, { upstream: up.url, prefix: '/d', replyOptions: { rewriteHeaders } })
  const plainWeird = await startPlainProxy(t, { upstream: weird, prefix: '/w' })
  const gw = await startGateway(t, {
    upstreams: { up: { targets: [up.url] }, weird: { targets: [weird], retry: false } },
    routes: [{ prefix: '/d', upstream: 'up', replyOptions: { rewriteHeaders } }, { prefix: '/w', upstream: 'weird' }]
  })
  const plainRes = await request(`${plainDirty}/d/x`)
  await plainRes.body.dump()
  const res = await request(`${gw.url}/d/x`, { dispatcher: gw.agent })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(res.headers['x-dirty'], 'ab', 'the control character dropped')
  t.equal(res.headers['x-dirty'], plainRes.headers['x-dirty'], 'as plain http-proxy drops it')
  const plainW = await request(`${plainWeird}/w/x`)
  await plainW.body.dump()
  const w = await request(`${gw.url}/w/x`, { dispatcher: gw.agent })
  const body = await w.body.json() as { code: string }
  t.equal(w.statusCode, plainW.statusCode, `status 700: ${plainW.statusCode} as through plain http-proxy`)
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_PROTOCOL', 'a malformed answer, with its code')
})

t.test('with an onSend hook, a paused client still stalls the upstream, and every byte arrives', async (t) => {
  const SIZE = 32 * 1024 * 1024
  const CHUNK = Buffer.alloc(64 * 1024, 'x')
  let written = 0
  let blocked = false
  const stalls = new EventEmitter()
  const up = await startUpstream(t, async (_req, res) => {
    res.writeHead(200, { 'content-length': String(SIZE) })
    const closed = once(res, 'close').catch(() => {})
    while (written < SIZE && !res.destroyed) {
      written += CHUNK.length
      if (!res.write(CHUNK)) {
        blocked = true
        stalls.emit('blocked')
        await Promise.race([once(res, 'drain'), closed])
        blocked = false
      }
    }
    res.end()
  }, { readBody: false })
  const seen: Seen = { onSend: 0, onSendStream: 0, onResponse: [] }
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/a', upstream: 'a' }] }, hooks(seen, true))
  const req = http.get(`${gw.url}/a/file`)
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  let n = 0
  let writtenWhilePaused = -1
  for await (const chunk of res) {
    n += (chunk as Buffer).length
    if (writtenWhilePaused === -1 && n >= 1024 * 1024) {
      res.pause()
      // Waiting for something not to happen needs a bounded wait: the upstream blocks, then 300 ms.
      if (!blocked) await once(stalls, 'blocked')
      await delay(300)
      writtenWhilePaused = written
      res.resume()
    }
  }
  t.equal(n, SIZE, 'the whole body arrived once the client read on')
  t.ok(writtenWhilePaused < 16 * 1024 * 1024, `the upstream stalled at ${(writtenWhilePaused / 1048576).toFixed(1)} MiB of 32 while the client was paused`)
  t.equal(seen.onSendStream, 1, 'through the onSend hook')
})

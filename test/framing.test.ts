import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { rawRequest, startGateway, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

/** A raw upstream on 127.0.0.1: `answer` writes whatever bytes it wants for each request head it reads. */
async function rawUpstream (t: Teardown, answer: (socket: net.Socket, head: string, n: number) => void): Promise<{ url: string, requests: () => number, sockets: () => number }> {
  let requests = 0
  let sockets = 0
  const server = net.createServer((socket) => {
    sockets++
    // As node:http does: without it, the kernel holds a second small write until the next request's ACK.
    socket.setNoDelay(true)
    let buf = ''
    socket.on('error', () => {})
    socket.on('data', (c: Buffer) => {
      buf += c.toString('latin1')
      let i: number
      while ((i = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, i)
        buf = buf.slice(i + 4)
        answer(socket, head, ++requests)
      }
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  t.teardown(() => { server.unref() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests, sockets: () => sockets }
}

function idOf (head: string): string {
  return /x-id: (\S+)/i.exec(head)?.[1] ?? '?'
}

t.test('304 and 204 with Content-Length, and answers to HEAD, are complete with their headers (RFC 9110 8.6), not failures', async (t) => {
  const up = await rawUpstream(t, (socket, head) => {
    if (head.startsWith('HEAD')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n')
    else if (head.includes('/not-modified')) socket.write('HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 1234\r\n\r\n')
    else socket.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n')
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const nm = await request(`${gw.url}/not-modified`, { dispatcher: gw.agent, headers: { 'if-none-match': '"abc"' } })
  t.equal(nm.statusCode, 304)
  t.equal(nm.headers.etag, '"abc"')
  await nm.body.dump()
  const head = await request(`${gw.url}/file`, { dispatcher: gw.agent, method: 'HEAD' })
  t.equal(head.statusCode, 200)
  t.equal(head.headers['content-length'], '1234', 'a HEAD answer keeps the length of what GET would send')
  await head.body.dump()
  const none = await request(`${gw.url}/gone`, { dispatcher: gw.agent, method: 'DELETE' })
  t.equal(none.statusCode, 204)
  t.equal(await none.body.text(), '')
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(s.targets[0].errors, {}, 'none counted against the target')
  t.equal(s.targets[0].breaker?.failed, 0)
  t.equal(up.requests(), 3, 'each reached the upstream once')
})

t.test('1xx: 103 Early Hints are dropped and the final answer passed on; an unsolicited 100 is a malformed answer (502, once)', async (t) => {
  const up = await rawUpstream(t, (socket, head) => {
    if (head.includes('/hints')) {
      socket.write('HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n')
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
    } else {
      socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
    }
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const hints = await request(`${gw.url}/hints`, { dispatcher: gw.agent })
  t.equal(hints.statusCode, 200)
  t.equal(await hints.body.text(), 'ok')
  t.equal(hints.headers.link, undefined, 'the hint\'s headers are not the answer\'s')
  const before = up.requests()
  const cont = await request(`${gw.url}/continue`, { dispatcher: gw.agent })
  t.equal(cont.statusCode, 502)
  t.equal((await cont.body.json() as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_PROTOCOL', 'undici cannot read a 100 it did not ask for')
  t.equal(up.requests() - before, 1, 'not retried: the upstream answered, in a way no retry changes')
  t.equal(gw.app.sssonector.upstream('a').stats().targets[0].errors.protocol, 1)
})

t.test('a 100 KB response header is a malformed answer: 502 UPSTREAM_PROTOCOL, category protocol', async (t) => {
  const up = await rawUpstream(t, (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nX-Big: ${'x'.repeat(100 * 1024)}\r\nContent-Length: 2\r\n\r\nok`)
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const res = await request(`${gw.url}/big-header`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_PROTOCOL')
  t.same(gw.app.sssonector.upstream('a').stats().targets[0].errors, { protocol: 1 })
})

t.test('headers a Connection header names are dropped both ways', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    res.setHeader('connection', 'close, x-secret')
    res.setHeader('x-secret', 'upstream internals')
    res.setHeader('x-kept', 'yes')
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(req.headers))
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a' }] })
  // A raw request: undici, as a client, refuses a Connection header that names others.
  const raw = await rawRequest(Number(new URL(gw.url).port), 'GET /c HTTP/1.1\r\nHost: x\r\nConnection: close, x-hop\r\nX-Hop: client internals\r\nX-End: kept\r\n\r\n')
  const [head, body] = raw.split('\r\n\r\n')
  t.notMatch(head, /x-secret/i, 'the upstream\'s Connection-listed header is not passed on')
  t.match(head, /x-kept: yes/i)
  const seen = JSON.parse(body) as Record<string, string>
  t.equal(seen['x-hop'], undefined, 'the client\'s Connection-listed header is not forwarded')
  t.equal(seen['x-end'], 'kept')
})

/**
 * An upstream that sometimes answers twice: each answer carries the request's
 * id. A client that received an answer whose id is not its own received
 * another request's answer.
 */
async function shifts (t: Teardown, stray: (socket: net.Socket, id: string) => void, pause = 0, clients = 8, each = 50): Promise<{ shifted: number, ok: number, failed: number, protocol: number, sockets: number }> {
  const up = await rawUpstream(t, (socket, head, n) => {
    const id = idOf(head)
    const body = `{"id":"${id}"}`
    const answer = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    if (n % 5 === 0) stray(socket, id)
    else socket.write(answer)
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], circuitBreaker: false } }, routes: [{ prefix: '/', upstream: 'a' }] })
  let shifted = 0
  let ok = 0
  let failed = 0
  await Promise.all(Array.from({ length: clients }, async (_, w) => {
    for (let i = 0; i < each; i++) {
      const id = `w${w}-${i}`
      const res = await request(`${gw.url}/x`, { dispatcher: gw.agent, headers: { 'x-id': id } })
      const text = await res.body.text()
      if (res.statusCode !== 200) {
        failed++
        continue
      }
      if ((JSON.parse(text) as { id: string }).id === id) ok++
      else shifted++
      // Paced: each client's next request comes after its connection sat idle a while.
      if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause))
    }
  }))
  const s = gw.app.sssonector.upstream('a').stats()
  return { shifted, ok, failed, protocol: s.targets[0].errors.protocol ?? 0, sockets: up.sockets() }
}

t.test('an answer written twice in one write: the second is seen on the idle connection, which is closed; no client gets another\'s answer', async (t) => {
  const r = await shifts(t, (socket, id) => {
    const body = `{"id":"${id}"}`
    const answer = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    socket.write(answer + answer)
  })
  t.equal(r.shifted, 0, '0 answers reached the wrong client')
  t.equal(r.ok + r.failed, 400)
  t.ok(r.protocol >= 1, `the anomalies were counted against the target as protocol (${r.protocol})`)
  t.ok(r.sockets > 8, `the connections that showed them were not reused (${r.sockets} opened for 8 clients)`)
})

t.test('bytes after a 204, a moment later but before the connection is reused: closed, no shift', async (t) => {
  const r = await shifts(t, (socket, id) => {
    socket.write('HTTP/1.1 204 No Content\r\n\r\n')
    setImmediate(() => { socket.write(`{"id":"${id}"} stray bytes`) })
  })
  t.equal(r.shifted, 0, '0 answers reached the wrong client')
  t.ok(r.protocol >= 1, `counted as protocol (${r.protocol})`)
})

t.test('an answer written again a moment later, on a connection idle when it arrives: closed before reuse, no shift; the case no HTTP/1.1 proxy can rule out is counted apart', async (t) => {
  const again = (socket: net.Socket, id: string): void => {
    const body = `{"id":"${id}"}`
    const answer = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    socket.write(answer)
    setImmediate(() => { socket.write(answer) })
  }
  // One client that waits 20 ms before its next request: the second copy arrives while the connection is idle.
  const paced = await shifts(t, again, 20, 1, 100)
  t.equal(paced.shifted, 0, '0 answers reached the wrong client')
  t.equal(paced.ok, 100, 'every request got its own answer')
  t.ok(paced.protocol >= 1, `each anomaly counted as protocol (${paced.protocol})`)
  // Back to back, the copy may arrive after the next request went out on that
  // connection (and with Nagle's algorithm on the upstream's socket, the
  // kernel holds it until that request's ACK): it is then the next request's
  // answer, as for any HTTP/1.1 client or proxy (the README says so). Measured, not asserted.
  const racing = await shifts(t, again)
  t.comment(`back to back: ${racing.shifted} of 400 answers reached the wrong client, ${racing.protocol} anomalies seen before reuse`)
})

t.test('pool.maxRequestsPerConnection: a connection that carried that many requests is closed, not reused', async (t) => {
  const perSocket = new Map<unknown, number>()
  const up = await startUpstream(t, (req, res) => {
    perSocket.set(req.socket, (perSocket.get(req.socket) ?? 0) + 1)
    res.end('ok')
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], pool: { maxRequestsPerConnection: 3 } } }, routes: [{ prefix: '/', upstream: 'a' }] })
  for (let i = 0; i < 10; i++) {
    const res = await request(`${gw.url}/r${i}`, { dispatcher: gw.agent })
    await res.body.dump()
  }
  t.same([...perSocket.values()], [3, 3, 3, 1], 'three requests a connection')
})

t.test('pool.maxConnectionAge: a connection older than that is closed when it goes idle', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url], pool: { maxConnectionAge: '150ms' } } }, routes: [{ prefix: '/', upstream: 'a' }] })
  const first = await request(`${gw.url}/a`, { dispatcher: gw.agent })
  await first.body.dump()
  t.equal(up.accepted, 1)
  // The sweep closes it at its age; the upstream sees its socket close.
  await up.socketsAtMost(0)
  t.equal(gw.app.sssonector.upstream('a').stats().connections, 0, 'closed at 150 ms of age')
  const second = await request(`${gw.url}/b`, { dispatcher: gw.agent })
  await second.body.dump()
  t.equal(up.accepted, 2, 'the next request opened a new one')
})

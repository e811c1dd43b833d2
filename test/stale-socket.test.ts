import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { request } from 'undici'
import { eventually, startGateway } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

type OnRequest = (socket: net.Socket, n: number) => void

/** A bare HTTP/1.1 server: it calls `onRequest` for each request head it reads; no Keep-Alive hint is ever sent. */
async function rawServer (t: Teardown, onRequest: OnRequest): Promise<{ url: string, connections: number, requests: number }> {
  const state = { url: '', connections: 0, requests: 0 }
  const server = net.createServer((socket) => {
    state.connections++
    let buf = ''
    socket.on('data', (c: Buffer) => {
      buf += c.toString('latin1')
      while (buf.includes('\r\n\r\n')) {
        buf = buf.slice(buf.indexOf('\r\n\r\n') + 4)
        state.requests++
        onRequest(socket, state.requests)
      }
    })
    socket.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  state.url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  return state
}

t.test('an upstream that closes an idle socket without a hint: the socket leaves the pool on its close, the next request gets a fresh one', async (t) => {
  const server = await rawServer(t, (socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', () => {
      // Idle now, from the gateway's view: close it, as a server with a short idle timeout would.
      setImmediate(() => socket.end())
    })
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [server.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  const r1 = await request(`${gw.url}/1`, { dispatcher: gw.agent })
  t.equal(await r1.body.text(), 'ok')
  await eventually(() => a.stats().connections === 0)
  t.equal(a.stats().targets[0].closed, 1, 'dropped on the close event, nothing written to test it')
  const r2 = await request(`${gw.url}/2`, { dispatcher: gw.agent })
  t.equal(r2.statusCode, 200)
  t.equal(await r2.body.text(), 'ok')
  t.equal(server.connections, 2, 'the second request went on a fresh socket')
  t.same(a.stats().targets[0].errors, {})
})

t.test('a socket reset while a request is on it: 502 FST_SSSONECTOR_UPSTREAM_RESET, category reset', async (t) => {
  const server = await rawServer(t, (socket) => { socket.resetAndDestroy() })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [server.url] } },
    routes: [{ prefix: '/', upstream: 'a' }],
    retry: false
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 502)
  t.equal((await res.body.json() as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_RESET')
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(s.targets[0].errors, { reset: 1 })
  t.equal(s.active, 0)
  t.equal(s.connections, 0, 'the broken connection is not kept')
})

t.test('malformed HTTP from the upstream: 502 FST_SSSONECTOR_UPSTREAM_PROTOCOL', async (t) => {
  const server = await rawServer(t, (socket) => { socket.end('HTTP/1.1 2OO NOT OK\r\n\r\n') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [server.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 502, JSON.stringify(body))
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_PROTOCOL')
})

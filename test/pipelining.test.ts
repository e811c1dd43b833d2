import t from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import { startGateway, startUpstream } from './helpers/servers.js'

t.test('a pipelined request queued behind an answer that closes the connection gives its slot back when the socket closes', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a', replyOptions: { rewriteHeaders: (h) => ({ ...h, connection: 'close' }) } }]
  })
  const accepted = once(gw.app.server, 'connection') as Promise<[net.Socket]>
  const socket = net.connect(Number(new URL(gw.url).port), '127.0.0.1')
  await once(socket, 'connect')
  const [serverSide] = await accepted
  const serverClosed = once(serverSide, 'close')
  socket.on('data', () => {})
  socket.on('error', () => {})
  const closed = once(socket, 'close')
  // Two requests in one write: the first one's answer ends the connection.
  socket.write('GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n')
  await closed
  // Every listener of the gateway's socket ran by the time this resolves.
  await serverClosed
  const a = gw.app.sssonector.upstream('a')
  t.equal(a.stats().active, 0, 'no slot held by the request whose answer could never be written')
  t.equal(a.stats().pending, 0)
})

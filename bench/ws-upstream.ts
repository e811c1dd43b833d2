// A WebSocket echo server for `npm run bench:ws`, run in its own process by
// ws.ts: the `ws` package on node:http, 127.0.0.1, answering every message
// with the same bytes (text as text, binary as binary), on any path. No
// permessage-deflate (the `ws` server's default). It counts the connections it
// accepted, the ones open now and the messages it echoed.
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { WebSocketServer } from 'ws'
import { childMain } from './protocol.js'

export interface WsUpstreamConfig {
  /** the port to listen on (0: any free one) */
  port: number
}

childMain<WsUpstreamConfig>(async (config) => {
  const server = http.createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain', connection: 'close' })
    res.end('a WebSocket echo server')
  })
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 })
  let accepted = 0
  let open = 0
  let echoed = 0
  wss.on('connection', (ws) => {
    accepted++
    open++
    ws.on('message', (data, isBinary) => {
      echoed++
      ws.send(data as Buffer, { binary: isBinary })
    })
    ws.on('error', () => {})
    ws.once('close', () => { open-- })
  })
  server.listen(config.port, '127.0.0.1', 4096)
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    port,
    connections: () => accepted,
    requests: () => echoed,
    open: () => open,
    close: async () => {
      for (const ws of wss.clients) ws.terminate()
      wss.close()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
})

// An upstream server for the benchmark, run in its own process by run.ts:
// plain node:http on 127.0.0.1, keep-alive on, behaving as its config says.
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { childMain } from './protocol.js'
import type { UpstreamBehaviour, UpstreamConfig } from './scenarios.js'

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

function handlerFor (behaviour: UpstreamBehaviour): Handler {
  switch (behaviour.kind) {
    case 'ok': {
      const body = Buffer.from('{"ok":true,"pad":"'.padEnd(behaviour.bodyBytes - 2, 'x') + '"}')
      const headers = { 'content-type': 'application/json', 'content-length': String(body.length) }
      return (req, res) => {
        // read (and drop) any request body before answering
        req.resume()
        req.once('end', () => {
          res.writeHead(200, headers)
          res.end(body)
        })
      }
    }
  }
}

childMain<UpstreamConfig>(async (config) => {
  const server = http.createServer(handlerFor(config.behaviour))
  server.keepAliveTimeout = config.keepAliveTimeout
  server.headersTimeout = config.keepAliveTimeout + 1000
  let accepted = 0
  server.on('connection', () => { accepted++ })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    port,
    connections: () => accepted,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
})

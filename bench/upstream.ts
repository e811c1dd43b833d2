// An upstream server for the benchmark, run in its own process by run.ts:
// plain node:http on 127.0.0.1, keep-alive on, behaving as its config says.
// Started in standby, it waits for the parent's word before listening, so a
// restart on the same port takes milliseconds, not a process start.
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { childMain, standby } from './protocol.js'
import type { UpstreamBehaviour, UpstreamConfig } from './scenarios.js'

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void

function answer (bodyBytes: number, status = 200): (res: http.ServerResponse) => void {
  const body = Buffer.from('{"ok":true,"pad":"'.padEnd(Math.max(bodyBytes - 2, 18), 'x') + '"}')
  const headers = { 'content-type': 'application/json', 'content-length': String(body.length) }
  return (res) => {
    res.writeHead(status, headers)
    res.end(body)
  }
}

/** Reads (and drops) any request body, then answers. */
function afterBody (req: http.IncomingMessage, then: () => void): void {
  req.resume()
  req.once('end', then)
}

function handlerFor (behaviour: UpstreamBehaviour): Handler {
  switch (behaviour.kind) {
    case 'ok': {
      const send = answer(behaviour.bodyBytes)
      return (req, res) => { afterBody(req, () => send(res)) }
    }
    case 'slow': {
      const send = answer(behaviour.bodyBytes)
      return (req, res) => {
        afterBody(req, () => {
          const timer = setTimeout(() => { if (!res.destroyed) send(res) }, behaviour.delayMs)
          res.once('close', () => { clearTimeout(timer) })
        })
      }
    }
    case 'stalls': {
      const send = answer(behaviour.bodyBytes)
      let n = 0
      return (req, res) => {
        const late = ++n % behaviour.every === 0
        afterBody(req, () => {
          if (!late) {
            send(res)
            return
          }
          const timer = setTimeout(() => { if (!res.destroyed) send(res) }, behaviour.delayMs)
          res.once('close', () => { clearTimeout(timer) })
        })
      }
    }
    case 'flaky': {
      const good = answer(behaviour.bodyBytes)
      const bad = answer(32, behaviour.status)
      let n = 0
      return (req, res) => {
        const fail = ++n % behaviour.every === 0
        afterBody(req, () => { if (fail) bad(res); else good(res) })
      }
    }
    case 'capacity': {
      const send = answer(behaviour.bodyBytes)
      const { capacity, serviceMs, spreadMs } = behaviour
      const waiting: Array<() => void> = []
      let serving = 0
      const next = (): void => {
        while (serving < capacity && waiting.length > 0) {
          serving++
          waiting.shift()!()
        }
      }
      return (req, res) => {
        afterBody(req, () => {
          waiting.push(() => {
            // one whose client left while it waited (a load generator's timeout) is dropped, not served: it would hold a place the next run's requests need
            if (res.destroyed) {
              serving--
              return
            }
            setTimeout(() => {
              serving--
              next()
              if (!res.destroyed) send(res)
            }, serviceMs - spreadMs + Math.random() * 2 * spreadMs)
          })
          next()
        })
      }
    }
  }
}

childMain<UpstreamConfig>(async (config) => {
  if (config.standby === true) await standby()
  const handler = handlerFor(config.behaviour)
  let received = 0
  const server = http.createServer((req, res) => {
    received++
    handler(req, res)
  })
  server.keepAliveTimeout = config.keepAliveTimeout
  server.headersTimeout = config.keepAliveTimeout + 1000
  let accepted = 0
  server.on('connection', () => { accepted++ })
  server.listen(config.port, '127.0.0.1')
  // rejects on 'error' (EADDRINUSE when a restart finds its port taken)
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    port,
    connections: () => accepted,
    requests: () => received,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
})

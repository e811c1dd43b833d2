// An upstream for `npm run bench:h2`, run in its own process by h2.ts, on
// 127.0.0.1:
// - `http1`: node:http, keep-alive (idle connections kept `keepAliveTimeout`
//   ms), every request answered 200 with a body of `bodyBytes` bytes;
// - `http2`: node:http2 without TLS (h2c, prior knowledge), every stream
//   answered the same way;
// - `grpc`: @grpc/grpc-js serving the Echo service of
//   test/fixtures/echo.proto (its Unary call answers `{ text, count: 1, from }`
//   at once, as test/fixtures/grpc-server.mjs does, without that fixture's
//   timer hop).
// It counts the connections it accepted (TCP; for grpc-js: none, it does not
// say), the ones open now and the requests (streams, calls) it answered.
import http from 'node:http'
import http2 from 'node:http2'
import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { childMain } from './protocol.js'

export interface H2UpstreamConfig {
  kind: 'http1' | 'http2' | 'grpc'
  /** the body of every HTTP answer, bytes */
  bodyBytes: number
  /** http1: how long an idle keep-alive connection is kept, ms */
  keepAliveTimeout: number
  /** grpc: its name in answers */
  name?: string
}

/** The Echo service's proto file, where this file's source tree keeps it. */
const ECHO_PROTO = fileURLToPath(new URL('../../test/fixtures/echo.proto', import.meta.url))

function bodyOf (bytes: number): Buffer {
  return Buffer.from('{"ok":true,"pad":"'.padEnd(Math.max(bytes - 2, 18), 'x') + '"}')
}

interface Counts {
  accepted: number
  open: number
  answered: number
}

function countConnections (server: http.Server | http2.Http2Server, counts: Counts): Set<Socket> {
  const sockets = new Set<Socket>()
  server.on('connection', (socket: Socket) => {
    counts.accepted++
    counts.open++
    sockets.add(socket)
    socket.once('close', () => {
      counts.open--
      sockets.delete(socket)
    })
  })
  return sockets
}

async function listen (server: http.Server | http2.Http2Server): Promise<number> {
  server.listen(0, '127.0.0.1', 1024)
  // rejects on 'error'
  await once(server, 'listening')
  return (server.address() as AddressInfo).port
}

async function closeServer (server: http.Server | http2.Http2Server, sockets: Set<Socket>): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()))
  for (const socket of sockets) socket.destroy()
  await closed
}

async function startHttp1 (config: H2UpstreamConfig, counts: Counts): Promise<{ port: number, close: () => Promise<void> }> {
  const body = bodyOf(config.bodyBytes)
  const headers = { 'content-type': 'application/json', 'content-length': String(body.length) }
  const server = http.createServer((req, res) => {
    counts.answered++
    req.resume()
    req.once('end', () => {
      res.writeHead(200, headers)
      res.end(body)
    })
  })
  server.keepAliveTimeout = config.keepAliveTimeout
  server.headersTimeout = config.keepAliveTimeout + 1000
  const sockets = countConnections(server, counts)
  const port = await listen(server)
  return { port, close: async () => { await closeServer(server, sockets) } }
}

async function startHttp2 (config: H2UpstreamConfig, counts: Counts): Promise<{ port: number, close: () => Promise<void> }> {
  const body = bodyOf(config.bodyBytes)
  const headers = { ':status': 200, 'content-type': 'application/json', 'content-length': String(body.length) }
  const server = http2.createServer()
  server.on('stream', (stream) => {
    counts.answered++
    stream.on('error', () => {})
    // a body, if any, is read and dropped; the answer goes when it ended
    stream.resume()
    const send = (): void => {
      if (stream.destroyed || stream.closed) return
      stream.respond(headers)
      stream.end(body)
    }
    if (stream.readableEnded) send()
    else stream.once('end', send)
  })
  server.on('sessionError', () => {})
  const sockets = countConnections(server, counts)
  const port = await listen(server)
  return { port, close: async () => { await closeServer(server, sockets) } }
}

async function startGrpc (config: H2UpstreamConfig, counts: Counts): Promise<{ port: number, close: () => Promise<void> }> {
  const { default: grpc } = await import('@grpc/grpc-js')
  const { default: protoLoader } = await import('@grpc/proto-loader')
  const def = protoLoader.loadSync([ECHO_PROTO], { keepCase: true, defaults: true })
  const proto = grpc.loadPackageDefinition(def) as unknown as { echo: { Echo: { service: import('@grpc/grpc-js').ServiceDefinition } } }
  const name = config.name ?? 'server'
  const server = new grpc.Server()
  server.addService(proto.echo.Echo.service, {
    Unary (call: { request: { text: string } }, cb: (err: null, res: { text: string, count: number, from: string }) => void) {
      counts.answered++
      cb(null, { text: call.request.text, count: 1, from: name })
    }
  })
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (err !== null) reject(err)
      else resolve(p)
    })
  })
  return {
    port,
    close: async () => {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown()
          resolve()
        }, 1000)
        server.tryShutdown(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }
}

childMain<H2UpstreamConfig>(async (config) => {
  const counts: Counts = { accepted: 0, open: 0, answered: 0 }
  const start = config.kind === 'http1' ? startHttp1 : config.kind === 'http2' ? startHttp2 : config.kind === 'grpc' ? startGrpc : null
  if (start === null) throw new Error(`unknown upstream kind ${JSON.stringify(config.kind)}`)
  const started = await start(config, counts)
  const counted = config.kind !== 'grpc'
  return {
    port: started.port,
    close: started.close,
    requests: () => counts.answered,
    ...(counted ? { connections: () => counts.accepted, open: () => counts.open } : {})
  }
})

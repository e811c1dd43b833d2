// An upstream server of the chaos run, in its own process (forked by chaos.ts):
// node:http on 127.0.0.1, one server per configured port, keep-alive on.
//
// Every request carries `x-chaos-id`; the answer echoes it in the header
// `x-chaos-echo` and in its JSON body, with the length and SHA-1 of the request
// body it read. Paths (after the gateway's prefix): `/echo` (200 JSON),
// `/empty` (204), `/big?size=N` (N bytes, written in 16 KiB pieces) and
// `/health` (200, for the gateway's probes).
//
// One line per request event goes to stdout, written synchronously (stdout is a
// pipe: synchronous on Linux), so the parent knows what reached this process
// even when it dies by SIGKILL the next instant:
//   R <id> [POST]  request received (its method, when a POST)
//   A <id>         answer written in full
//   C <id>         closed before its answer was written (the gateway hung up)
//   X <id>         socket destroyed by the reset fault
//   S <id> <mode>  stray bytes written after the answer to <id>
//
// Fault modes come over IPC (`{ type: 'modes' }`, acknowledged once applied).
// SIGTERM: the listeners close, idle connections close, the requests in flight
// finish (with `Connection: close`), then the process exits.
import http from 'node:http'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import type { AddressInfo, Socket } from 'node:net'
import { epoch, failed, mulberry32, noModes, send } from './chaos-protocol.js'
import type { ToUpstream, UpstreamConfig, UpstreamModes } from './chaos-protocol.js'

const config = JSON.parse(process.argv[2] ?? '{}') as UpstreamConfig
const random = mulberry32(config.seed)
let modes: UpstreamModes = noModes
let ports = config.ports.slice()
/** the servers listening now, by port */
const listening = new Map<number, http.Server>()
/** every server made, listening or not: their connections live on after a close */
const servers = new Set<http.Server>()
/** the requests in flight, for SIGTERM; and the answers cut by the reset fault */
const inFlight = new Set<http.ServerResponse>()
const resets = new WeakSet<http.ServerResponse>()
let closing = false

function log (line: string): void {
  process.stdout.write(line + '\n')
}

function header (req: http.IncomingMessage, name: string): string {
  const v = req.headers[name]
  return Array.isArray(v) ? (v[0] ?? '') : (v ?? '')
}

/** The raw bytes of a 200 answer, as a server would write them: the stray copy. */
function rawAnswer (id: string, body: Buffer): Buffer {
  const head = `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-chaos-echo: ${id}\r\ncontent-length: ${body.length}\r\n\r\n`
  return Buffer.concat([Buffer.from(head, 'latin1'), body])
}

type WriteEntry = { chunk: Buffer | string, encoding: BufferEncoding | 'buffer' }
type Entries = WriteEntry[] & { allBuffers?: boolean }
interface StreamInternals {
  _writev: (chunks: Entries, cb: (err?: Error | null) => void) => void
  _write: (chunk: Buffer | string, encoding: BufferEncoding | 'buffer', cb: (err?: Error | null) => void) => void
}

/**
 * Makes the socket's next write carry `stray` too, in one writev: the
 * answer and the stray bytes leave in one system call. (Corking is not
 * enough: `res.end()` uncorks the socket fully, and the stray bytes would
 * be a second write, which may reach the gateway in a later read.)
 */
function appendToNextWrite (socket: Socket, stray: Buffer): void {
  const own = socket as unknown as StreamInternals
  const proto = Object.getPrototypeOf(socket) as StreamInternals
  const restore = (): void => {
    delete (own as Partial<StreamInternals>)._writev
    delete (own as Partial<StreamInternals>)._write
  }
  const writev = (chunks: Entries, cb: (err?: Error | null) => void): void => {
    restore()
    const all: Entries = [...chunks, { chunk: stray, encoding: 'buffer' }]
    all.allBuffers = chunks.allBuffers === true || chunks.every((c) => Buffer.isBuffer(c.chunk))
    proto._writev.call(socket, all, cb)
  }
  own._writev = writev
  own._write = (chunk, encoding, cb) => { writev([{ chunk, encoding }], cb) }
}

/** Writes the answer, then stray bytes: in the same write (one writev), or a moment later. */
function endWithStray (res: http.ServerResponse, id: string, body: Buffer | null, stray: Buffer, mode: 'same' | 'late', label: string): void {
  const socket = res.socket as Socket | null
  if (socket === null) {
    if (body === null) res.end(); else res.end(body)
    return
  }
  if (mode === 'same') {
    log(`S ${id} ${label}-same`)
    socket.cork()
    appendToNextWrite(socket, stray)
    if (body === null) res.end(); else res.end(body)
    return
  }
  if (body === null) res.end(); else res.end(body)
  setTimeout(() => {
    if (socket.destroyed || !socket.writable) return
    log(`S ${id} ${label}-late`)
    socket.write(stray)
  }, 2 + Math.floor(random() * 38))
}

function answer (res: http.ServerResponse, path: string, query: URLSearchParams, id: string, len: number, digest: string): void {
  const m = modes
  if (res.destroyed) return
  if (m.reset !== null) {
    const socket = res.socket as Socket | null
    resets.add(res)
    if (path !== '/health') log(`X ${id}`)
    if (socket === null) return
    if (m.reset === 'head') {
      socket.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-chaos-echo: ${id}\r\ncontent-len`)
      socket.destroy()
    } else {
      const body = Buffer.from(JSON.stringify({ id, len, hash: digest }))
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length), 'x-chaos-echo': id })
      res.write(body.subarray(0, body.length >> 1))
      setImmediate(() => { socket.destroy() })
    }
    return
  }
  if (m.burst503) {
    const body = Buffer.from(JSON.stringify({ id, error: 'burst' }))
    res.writeHead(503, { 'content-type': 'application/json', 'content-length': String(body.length), 'x-chaos-echo': id })
    res.end(body)
    return
  }
  if (path === '/health') {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' })
    res.end('ok')
    return
  }
  if (path === '/big') {
    const size = Math.min(Number(query.get('size') ?? 65536), 16 * 1024 * 1024)
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size), 'x-chaos-echo': id })
    const piece = Buffer.alloc(16 * 1024, 0x61)
    let left = size
    const next = (): void => {
      if (res.destroyed) return
      const n = Math.min(left, piece.length)
      left -= n
      if (left === 0) { res.end(piece.subarray(0, n)); return }
      res.write(piece.subarray(0, n))
      setTimeout(next, 5)
    }
    next()
    return
  }
  if (path === '/empty') {
    res.writeHead(204, { 'x-chaos-echo': id })
    if (m.stray === null) { res.end(); return }
    endWithStray(res, id, null, Buffer.from(JSON.stringify({ id, stray: true })), m.stray, '204')
    return
  }
  const body = Buffer.from(JSON.stringify({ id, len, hash: digest }))
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length), 'x-chaos-echo': id })
  if (m.stray === null) { res.end(body); return }
  endWithStray(res, id, body, rawAnswer(id, body), m.stray, 'dup')
}

function onRequest (req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  const query = new URLSearchParams(q === -1 ? '' : url.slice(q + 1))
  const id = header(req, 'x-chaos-id')
  const logged = path !== '/health' && id !== ''
  if (logged) log(req.method === 'POST' ? `R ${id} POST` : `R ${id}`)
  inFlight.add(res)
  if (closing) res.setHeader('connection', 'close')
  res.once('finish', () => { if (logged) log(`A ${id}`) })
  res.once('close', () => {
    if (logged && !res.writableFinished && !resets.has(res)) log(`C ${id}`)
    inFlight.delete(res)
    exitWhenDone()
  })
  const hash = createHash('sha1')
  let len = 0
  req.on('data', (chunk: Buffer) => { hash.update(chunk); len += chunk.length })
  req.on('error', () => {})
  req.on('end', () => {
    const digest = hash.digest('hex')
    const slow = modes.slow
    if (slow === null) { answer(res, path, query, id, len, digest); return }
    const delay = slow[0] + Math.floor(random() * (slow[1] - slow[0]))
    const timer = setTimeout(() => { answer(res, path, query, id, len, digest) }, delay)
    res.once('close', () => { clearTimeout(timer) })
  })
}

async function listen (port: number, attempt = 0): Promise<number> {
  const server = http.createServer({ keepAliveTimeout: config.keepAliveTimeout }, onRequest)
  server.headersTimeout = config.keepAliveTimeout + 1000
  server.listen(port, '127.0.0.1')
  try {
    await once(server, 'listening')
  } catch (err) {
    // the process before this one may not be quite gone from the port: a few
    // more tries, each on the next turn of the event loop (20 at most)
    if ((err as { code?: string }).code !== 'EADDRINUSE' || port === 0 || attempt >= 20) throw err
    await new Promise((resolve) => setImmediate(resolve))
    return await listen(port, attempt + 1)
  }
  servers.add(server)
  server.once('close', () => { servers.delete(server) })
  const actual = (server.address() as AddressInfo).port
  listening.set(actual, server)
  return actual
}

function closeListeners (): void {
  for (const server of listening.values()) {
    server.close()
    server.closeIdleConnections()
  }
  listening.clear()
}

function exitWhenDone (): void {
  if (closing && inFlight.size === 0) process.exit(0)
}

// Messages are handled one after another: a listener closed and opened again
// in quick succession stays in order.
let chain: Promise<void> = Promise.resolve()
process.on('message', (message: ToUpstream) => {
  if (message.type !== 'modes') return
  chain = chain.then(async () => {
    const was = modes.refuse
    modes = message.modes
    if (!closing && message.modes.refuse && !was) closeListeners()
    else if (!closing && !message.modes.refuse && was) {
      for (const port of ports) await listen(port)
    }
    send({ type: 'ack', seq: message.seq })
  }).catch(failed)
})

process.on('disconnect', () => { process.exit(0) })
process.on('SIGTERM', () => {
  if (closing) return
  closing = true
  closeListeners()
  for (const server of servers) server.closeIdleConnections()
  for (const res of inFlight) if (!res.headersSent) res.setHeader('connection', 'close')
  setTimeout(() => { process.exit(0) }, 5000).unref()
  // the parent hears of the free port before this process may exit
  if (process.send !== undefined && process.connected) process.send({ type: 'closed', at: epoch() }, () => { exitWhenDone() })
  else exitWhenDone()
})

async function main (): Promise<void> {
  if (config.standby) {
    const listenMessage = await new Promise<ToUpstream>((resolve) => {
      const onMessage = (message: ToUpstream): void => {
        if (message.type !== 'listen') return
        process.off('message', onMessage)
        resolve(message)
      }
      process.on('message', onMessage)
      send({ type: 'standby' })
    })
    if (listenMessage.type === 'listen' && listenMessage.ports !== undefined) ports = listenMessage.ports
  }
  const actual: number[] = []
  for (const port of ports) actual.push(await listen(port))
  ports = actual
  send({ type: 'ready', ports: actual, at: epoch() })
}

main().catch(failed)

import http from 'node:http'
import type net from 'node:net'
import { once } from 'node:events'
import { WebSocket, WebSocketServer } from 'ws'
import type { ServerOptions, ClientOptions } from 'ws'
import type { Teardown } from './servers.js'

/** A `ws` server on 127.0.0.1 (echo by default), with what each upgrade carried and every socket it holds. */
export interface WsUpstream {
  url: string
  port: number
  name: string
  server: http.Server
  wss: WebSocketServer
  /** The upgrade requests it accepted or refused, in order. */
  upgrades: http.IncomingMessage[]
  /** Every TCP connection it accepted. */
  sockets: Set<net.Socket>
  /** Closes it, destroying every connection (a crash, as the clients see it). */
  kill: () => Promise<void>
}

export async function startWsUpstream (t: Teardown, name = 'up', options: ServerOptions = {}, onConnection?: (ws: WebSocket, req: http.IncomingMessage) => void): Promise<WsUpstream> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ name, url: req.url }))
  })
  const sockets = new Set<net.Socket>()
  server.on('connection', (s) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  const upgrades: http.IncomingMessage[] = []
  server.on('upgrade', (req) => { upgrades.push(req) })
  const wss = new WebSocketServer({ server, ...options })
  wss.on('connection', (ws, req) => {
    if (onConnection !== undefined) {
      onConnection(ws, req)
      return
    }
    ws.on('message', (data, isBinary) => { ws.send(data, { binary: isBinary }) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  let killed = false
  const kill = async (): Promise<void> => {
    if (killed) return
    killed = true
    for (const s of sockets) s.destroy()
    for (const c of wss.clients) c.terminate()
    wss.close()
    await new Promise<void>((resolve) => server.close(() => { resolve() }))
  }
  t.teardown(kill)
  return { url: `http://127.0.0.1:${port}`, port, name, server, wss, upgrades, sockets, kill }
}

/** Opens a WebSocket and waits for it to be open; rejects with the answer's status on another answer. */
export async function openWs (url: string, protocols?: string | string[], options: ClientOptions = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, protocols, options)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => { resolve() })
    ws.once('unexpected-response', (_req, res) => {
      const err = Object.assign(new Error(`unexpected response ${String(res.statusCode)}`), { statusCode: res.statusCode, headers: res.headers, body: '' })
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        err.body = Buffer.concat(chunks).toString()
        ws.terminate()
        reject(err)
      })
    })
    ws.once('error', reject)
  })
  return ws
}

/** The next message on a WebSocket. */
export async function nextMessage (ws: WebSocket): Promise<{ data: Buffer, isBinary: boolean }> {
  const [data, isBinary] = await once(ws, 'message') as [Buffer | Buffer[] | ArrayBuffer, boolean]
  return { data: Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data), isBinary }
}

/** Waits for a WebSocket's close, with its code and reason. */
export async function closed (ws: WebSocket): Promise<{ code: number, reason: string }> {
  if (ws.readyState === WebSocket.CLOSED) return { code: -1, reason: 'closed already' }
  const [code, reason] = await once(ws, 'close') as [number, Buffer]
  return { code, reason: reason.toString() }
}

import { ServerResponse } from 'node:http'
import type { IncomingMessage, Server } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { markUpgrade } from './tunnel.js'

type UpgradeListener = (this: Server, req: IncomingMessage, socket: Duplex, head: Buffer) => void

function noop (): void {}

/**
 * Whether a path is under one of the prefixes (as @fastify/http-proxy
 * matches them): the prefix itself or below it; a `:param` segment matches
 * any one segment; the root matches every path.
 */
export function underPrefixes (url: string, prefixes: readonly string[]): boolean {
  const path = url.split('?', 1)[0]
  const segments = path.split('/')
  for (const prefix of prefixes) {
    const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix
    if (base === '') return true
    const want = base.split('/')
    if (segments.length < want.length) continue
    let ok = true
    for (let i = 0; i < want.length && ok; i++) ok = want[i].startsWith(':') ? segments[i] !== '' : want[i] === segments[i]
    if (ok) return true
  }
  return false
}

/**
 * Routes HTTP Upgrade requests through Fastify (as @fastify/websocket does),
 * so the app's hooks run on them first: the request, marked as an upgrade,
 * goes to `fastify.routing()` with a ServerResponse on its socket; a route
 * with `websocket: true` opens a tunnel, anything else answers over HTTP
 * (Fastify's 404, a hook's 401...) and the socket ends with that answer.
 * Installed when the app is ready, over the server's other `upgrade`
 * listeners (@fastify/websocket, an http-proxy of the app's own): upgrades
 * under the WebSocket routes' prefixes are ours, the rest go to them; with
 * no other listener, every upgrade is routed (a path with no route gets 404).
 */
export function routeUpgrades (fastify: FastifyInstance, prefixes: readonly string[]): void {
  fastify.addHook('onReady', async () => {
    const server = fastify.server as Server
    const others = server.listeners('upgrade') as UpgradeListener[]
    server.removeAllListeners('upgrade')
    server.on('upgrade', function (this: Server, req: IncomingMessage, socket: Duplex, head: Buffer) {
      if (others.length > 0 && !underPrefixes(req.url ?? '/', prefixes)) {
        for (const l of others) l.call(this, req, socket, head)
        return
      }
      // The server no longer watches the socket: an error on it (a reset client) must not throw.
      socket.on('error', noop)
      markUpgrade(req, { socket, head })
      const res = new ServerResponse(req)
      res.assignSocket(socket as import('node:net').Socket)
      // An answer other than a 101 ends the connection: the server's parser is gone from this socket.
      res.once('finish', () => { socket.end() })
      fastify.routing(req, res)
    })
  })
}

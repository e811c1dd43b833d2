import http from 'node:http'
import net from 'node:net'
import { EventEmitter, once } from 'node:events'
import { Agent } from 'undici'
import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import type { Test } from 'tap'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import sssonectorPool from '../../lib/index.js'
import type { SssonectorOptions } from '../../types/index.js'

/** The part of tap's Test these helpers use. */
export interface Teardown {
  teardown (fn: () => unknown): void
}

/** A gate: requests wait on it until the test opens it. */
export class Gate {
  #open = false
  #waiters: Array<() => void> = []
  waiting = 0
  #onWait: Array<{ n: number, resolve: () => void }> = []

  get isOpen (): boolean {
    return this.#open
  }

  async wait (): Promise<void> {
    if (this.#open) return
    this.waiting++
    for (const w of this.#onWait.filter((w) => this.waiting >= w.n)) {
      this.#onWait.splice(this.#onWait.indexOf(w), 1)
      w.resolve()
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve))
  }

  /** Resolves once n requests are waiting. */
  async waitingFor (n: number): Promise<void> {
    if (this.waiting >= n) return
    await new Promise<void>((resolve) => this.#onWait.push({ n, resolve }))
  }

  open (): void {
    this.#open = true
    const ws = this.#waiters
    this.#waiters = []
    for (const w of ws) w()
  }
}

export interface Upstream {
  server: http.Server
  url: string
  port: number
  /** Requests seen, in order. */
  seen: Array<{ method: string, url: string, headers: http.IncomingHttpHeaders, body: Buffer }>
  /** Sockets open now. */
  sockets: Set<net.Socket>
  /** Requests inside the handler now, and the most there ever were. */
  inflight: number
  maxInflight: number
  /** Connections accepted since start. */
  accepted: number
  /** Emits 'socket-closed' when a socket closes, 'request' when a request arrives. */
  events: EventEmitter
  /** Resolves once at most n sockets are open (awaiting their close events). */
  socketsAtMost (n: number): Promise<void>
  close (): Promise<void>
}

export type UpstreamHandler = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void | Promise<void>

/** A real upstream on 127.0.0.1:0; by default it answers 200 with JSON saying who it is and what it saw. */
export async function startUpstream (t: Teardown, handler?: UpstreamHandler, options: { readBody?: boolean, host?: string, port?: number } = {}): Promise<Upstream> {
  const sockets = new Set<net.Socket>()
  const up: Upstream = {
    server: undefined as unknown as http.Server,
    url: '',
    port: 0,
    seen: [],
    sockets,
    inflight: 0,
    maxInflight: 0,
    accepted: 0,
    events: new EventEmitter(),
    async socketsAtMost (n: number) {
      await until(up.events, 'socket-closed', () => sockets.size <= n)
    },
    async close () {
      if (!up.server.listening) return
      up.server.closeAllConnections()
      await new Promise<void>((resolve) => up.server.close(() => resolve()))
    }
  }
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    up.inflight++
    up.maxInflight = Math.max(up.maxInflight, up.inflight)
    res.on('close', () => { up.inflight-- })
    const run = (body: Buffer): void => {
      up.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body })
      up.events.emit('request')
      if (handler !== undefined) {
        Promise.resolve(handler(req, res, body)).catch((err) => { res.destroy(err) })
        return
      }
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ port: up.port, method: req.method, url: req.url, headers: req.headers, body: body.toString('utf8') }))
    }
    if (options.readBody === false) {
      run(Buffer.alloc(0))
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => run(Buffer.concat(chunks)))
  })
  server.on('connection', (s: net.Socket) => {
    sockets.add(s)
    up.accepted++
    s.on('close', () => {
      sockets.delete(s)
      up.events.emit('socket-closed')
    })
  })
  const host = options.host ?? '127.0.0.1'
  server.listen(options.port ?? 0, host)
  await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => { throw err })])
  up.server = server
  up.port = (server.address() as net.AddressInfo).port
  up.url = `http://${host}:${up.port}`
  t.teardown(() => up.close())
  return up
}

/** A loopback port where nothing listens: connecting to it is refused. */
export async function refusedPort (): Promise<number> {
  const s = net.createServer()
  s.listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

export interface Gateway {
  app: FastifyInstance
  url: string
  /** A client of the gateway (its own connections, closed at teardown). */
  agent: Agent
  /** Emits 'closed' each time a response of the gateway has closed (after the plugin's own handlers ran). */
  events: EventEmitter
  /** Responses closed so far. */
  closed: number
  /** Resolves once n responses in all have closed. */
  closedCount (n: number): Promise<void>
}

/** A Fastify app with the plugin, listening on 127.0.0.1:0, closed at teardown. */
export async function startGateway (
  t: Teardown,
  options: SssonectorOptions,
  setup?: (app: FastifyInstance) => void | Promise<void>,
  fastifyOptions: FastifyServerOptions = {}
): Promise<Gateway> {
  const app = Fastify({ logger: false, ...fastifyOptions })
  const events = new EventEmitter()
  const gw = { closed: 0 }
  app.addHook('onRequest', (_req, reply, done) => {
    reply.raw.on('close', () => {
      gw.closed++
      events.emit('closed')
    })
    done()
  })
  if (setup !== undefined) await setup(app)
  await app.register(sssonectorPool, { gracefulClose: false, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new Agent({ keepAliveTimeout: 10, keepAliveMaxTimeout: 10 })
  t.teardown(async () => {
    await agent.close()
    await app.close()
  })
  const port = (app.server.address() as net.AddressInfo).port
  return Object.assign(gw, {
    app,
    url: `http://127.0.0.1:${port}`,
    agent,
    events,
    closedCount: async (n: number) => { await until(events, 'closed', () => gw.closed >= n) }
  })
}

/** Resolves when the predicate holds, checked on each of the emitter's events (no polling by time). */
export async function until (emitter: NodeJS.EventEmitter, event: string, predicate: () => boolean): Promise<void> {
  while (!predicate()) await once(emitter, event)
}

/** Sends raw bytes to host:port and returns everything read until the peer closes (or `until` matches). */
export async function rawRequest (port: number, data: string | Buffer, until?: RegExp): Promise<string> {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(data)
  let out = ''
  return await new Promise<string>((resolve, reject) => {
    socket.on('data', (c: Buffer) => {
      out += c.toString('latin1')
      if (until !== undefined && until.test(out)) {
        socket.destroy()
        resolve(out)
      }
    })
    socket.on('error', reject)
    socket.on('close', () => resolve(out))
  })
}

/**
 * Resolves once the predicate holds, checked once per turn of the event loop: for state
 * that changes on another component's event the test cannot subscribe to. No timer:
 * tap's own timeout bounds it.
 */
export async function eventually (predicate: () => boolean, within = 15_000, what = 'the condition'): Promise<void> {
  const deadline = Date.now() + within
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what} did not hold within ${within} ms`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** Plain @fastify/http-proxy with the given options on 127.0.0.1, for side-by-side checks; its URL. */
export async function startPlainProxy (t: Teardown, opts: Record<string, unknown>): Promise<string> {
  const app = Fastify()
  await app.register(httpProxy, opts as never)
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  return `http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}`
}

/** Registers the plugin with `options` and expects it to fail with FST_SSSONECTOR_OPTIONS and `message`. */
export async function registerFails (t: Test, options: unknown, message: RegExp | string): Promise<void> {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  const err = await app.register(sssonectorPool, options as SssonectorOptions).then(() => null, (e: Error & { code?: string }) => e)
  t.ok(err, 'register fails')
  t.equal(err?.code, 'FST_SSSONECTOR_OPTIONS')
  t.match(err?.message, message)
}

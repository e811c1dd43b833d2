import closeWithGrace from 'close-with-grace'
import fs from 'node:fs'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'

/** One app the process closes on a signal, with how long it may take. */
interface Closable {
  app: FastifyInstance
  delay: number
  /** Time after the signal before the app stops taking connections (a load balancer deregisters it meanwhile). */
  preStop: number
  /** Requests still in flight, for the log line when the delay runs out. */
  inFlight: () => number
  onSignal: () => void
}

/**
 * close-with-grace, once per process whatever the number of apps (50 apps in
 * one process add 50 listeners nowhere): on SIGTERM or SIGINT, every
 * registered app drains its connections and is closed; past the longest
 * delay, the requests still in flight are counted in a log line and the
 * process exits 1; a second signal exits at once; an uncaught error takes the
 * same path and is logged.
 */
const apps = new Set<Closable>()
let installed: { uninstall: () => void } | null = null

export function closeOnSignal (entry: Closable): () => void {
  apps.add(entry)
  if (installed === null) install()
  return () => {
    apps.delete(entry)
    if (apps.size === 0 && installed !== null) {
      installed.uninstall()
      installed = null
    }
  }
}

function install (): void {
  const first = [...apps][0]
  const delay = Math.max(...[...apps].map((a) => a.delay))
  installed = closeWithGrace({
    delay,
    logger: { error: (msg: unknown) => { first.app.log.error(msg as object) } },
    onTimeout: (ms: number) => {
      for (const a of apps) {
        a.app.log.error({ cut: a.inFlight(), delay: ms }, `graceful close took longer than ${ms} ms: ${a.inFlight()} requests cut`)
      }
    },
    onSecondSignal: (signal: string) => { first.app.log.error({ signal }, 'second signal: exiting at once') }
  }, async ({ signal, err }) => {
    const start = Date.now()
    const closing = [...apps]
    for (const a of closing) {
      if (err !== undefined) a.app.log.error({ err }, 'closing after an uncaught error')
      else a.app.log.info({ signal }, 'closing on signal')
      a.onSignal()
      beginClose(a.app)
    }
    await Promise.all(closing.map(async (a) => {
      if (a.preStop > 0) await new Promise((resolve) => setTimeout(resolve, a.preStop))
      await drain(a.app, start + a.delay - closeMargin(a.delay) - Date.now())
      await a.app.close()
    }))
  })
}

type RequestListener = (this: Server, req: IncomingMessage, res: ServerResponse) => void

/** Servers whose requests go through `admit` (the app is closing). */
const gated = new WeakSet<Server>()
/** Connections whose last answer is decided: one already says `Connection: close`. */
const ending = new WeakSet<Socket>()

/**
 * The app begins to close (on the signal, or in `app.close()`): from now on
 * every response carries `Connection: close`, so each keep-alive connection
 * ends right after its next answer, the one moment when no request of its
 * client can be on the way; and the logger's exit flush is bounded, so a
 * broken log destination cannot hold the process. Safe to call twice.
 */
export function beginClose (app: FastifyInstance): void {
  gate(app.server)
  boundExitFlush(app.log)
}

/** Puts `admit` in front of the server's request listeners (Fastify's among them). */
function gate (server: Server): void {
  if (gated.has(server)) return
  gated.add(server)
  const listeners = server.listeners('request') as RequestListener[]
  server.removeAllListeners('request')
  server.on('request', function (this: Server, req: IncomingMessage, res: ServerResponse) {
    if (!admit(req, res)) return
    for (const l of listeners) l.call(this, req, res)
  })
}

/**
 * While closing, whether a request is handled. Its answer says
 * `Connection: close`. A request pipelined behind an answer that will end
 * the connection is not handled at all (RFC 9112 9.6: the client sends it
 * again on another connection): handled, it would reach the upstream and
 * its answer would have no connection left to go out on.
 */
function admit (req: IncomingMessage, res: ServerResponse): boolean {
  const socket = req.socket
  const current = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage
  if (current === undefined || current === null || current === res) {
    res.shouldKeepAlive = false
    ending.add(socket)
    return true
  }
  // Pipelined behind `current`, still on its way.
  if (!ending.has(socket)) {
    if (!current.headersSent) {
      current.shouldKeepAlive = false
    } else if (current.shouldKeepAlive && !/close/i.test(String(current.getHeader('connection') ?? ''))) {
      // `current` went out keeping the connection: this one is its last answer.
      res.shouldKeepAlive = false
      ending.add(socket)
      return true
    }
    ending.add(socket)
  }
  // Should the connection stay open after all (a handler's own `Connection: keep-alive`), it is answered.
  res.once('socket', () => {
    res.writeHead(503, { connection: 'close', 'content-length': '0' })
    res.end()
  })
  return false
}

/** Time kept at the end of `gracefulClose.delay` for `app.close()` and the exit, after the drain: a quarter of it, at most 1 s. */
export function closeMargin (delay: number): number {
  return Math.min(1000, Math.floor(delay / 4))
}

/** Stands in for `server.closeIdleConnections` during the drain. */
function keepIdle (): void {}

/**
 * Stops accepting connections and waits, for at most `ms`, until the server
 * has none left. Node's `server.close()` first closes every idle keep-alive
 * connection at once (Node >= 19), racing a request its client may have sent
 * on it already: for the drain, the server keeps them. Each one then ends
 * after its next response (`Connection: close`) or when it has been idle for
 * the server's `keepAliveTimeout`, as in ordinary operation. Connections still
 * open when `ms` runs out are left to `app.close()`, which closes the idle
 * ones and waits for the busy ones.
 */
async function drain (app: FastifyInstance, ms: number): Promise<void> {
  const server: Server = app.server
  // HTTP/2 has its own goodbye (GOAWAY, sent by Fastify's close); this is HTTP/1.1's.
  if (ms <= 0 || !server.listening || typeof server.closeIdleConnections !== 'function') return
  const start = Date.now()
  const own = Object.getOwnPropertyDescriptor(server, 'closeIdleConnections')
  server.closeIdleConnections = keepIdle
  let drained = false
  try {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms)
      timer.unref()
      server.close(() => {
        drained = true
        clearTimeout(timer)
        resolve()
      })
    })
  } finally {
    if (own === undefined) delete (server as Partial<Server>).closeIdleConnections
    else Object.defineProperty(server, 'closeIdleConnections', own)
  }
  if (drained) {
    app.log.info({ ms: Date.now() - start }, 'connections drained')
    return
  }
  const open = await new Promise<number>((resolve) => { server.getConnections((_err, n) => { resolve(n) }) })
  app.log.warn({ open, ms: Date.now() - start }, `${open} connections still open at the end of the drain: closing the idle ones`)
}

/** How long the exit flush of the log may retry a write the destination is not ready for. */
const EXIT_FLUSH_BOUND = 100
const bounded = Symbol('sssonector.boundedExitFlush')

interface ExitFlushing {
  flushSync: () => void
  [bounded]?: true
}

/**
 * pino's default destination (sonic-boom) is flushed at process exit by
 * pino's 'exit' handler (on-exit-leak-free) with `flushSync()`, and
 * sonic-boom 4's `flushSync()` retries a failed write forever, 100 ms apart,
 * whatever the error: on a pipe whose reader is gone (EPIPE) the process never
 * exits, not at the delay, not on a second signal. pino stops writing after
 * an EPIPE the stream reports, but only if that write's callback ran before
 * the exit; lines logged just before `process.exit()` are left to
 * `flushSync()`. Here `flushSync()` keeps its work, but a write that fails
 * ends it: the lines not written are dropped (EAGAIN/EBUSY are retried for
 * at most EXIT_FLUSH_BOUND ms first). It is bounded by making `fs.writeSync`
 * report the failure as written for the duration of that one synchronous
 * call, so sonic-boom's own loop ends; nothing else runs meanwhile.
 */
function boundExitFlush (log: object): void {
  const stream = destination(log)
  if (stream === undefined || stream[bounded] === true) return
  const flushSync = stream.flushSync
  stream.flushSync = () => { boundedWrites(() => { flushSync.call(stream) }) }
  stream[bounded] = true
}

/** pino keeps its destination under a symbol of its own (`pino.symbols.streamSym`), found by its description. */
function destination (log: object): ExitFlushing | undefined {
  for (let o: object | null = log; o !== null; o = Object.getPrototypeOf(o) as object | null) {
    const sym = Object.getOwnPropertySymbols(o).find((s) => s.description === 'pino.stream')
    if (sym === undefined) continue
    const stream = (log as Record<symbol, unknown>)[sym] as Partial<ExitFlushing> | null | undefined
    return typeof stream?.flushSync === 'function' ? stream as ExitFlushing : undefined
  }
  return undefined
}

type WriteSync = (fd: number, data: string | NodeJS.ArrayBufferView, ...rest: unknown[]) => number

function boundedWrites (flush: () => void): void {
  const target = fs as unknown as { writeSync: WriteSync }
  const writeSync = target.writeSync
  const until = Date.now() + EXIT_FLUSH_BOUND
  let failed = false
  target.writeSync = (fd, data, ...rest) => {
    if (!failed) {
      try {
        return Reflect.apply(writeSync, fs, [fd, data, ...rest]) as number
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if ((code === 'EAGAIN' || code === 'EBUSY') && Date.now() < until) throw err
        failed = true
      }
    }
    return length(data, rest)
  }
  try {
    flush()
  } catch {
    // An exit flush that throws (a destroyed or unopened destination) has nothing left to write.
  } finally {
    target.writeSync = writeSync
  }
}

/** The bytes a `fs.writeSync` call was asked to write. */
function length (data: string | NodeJS.ArrayBufferView, rest: unknown[]): number {
  if (typeof data === 'string') return Buffer.byteLength(data)
  const [offset, len] = rest
  if (typeof len === 'number') return len
  return data.byteLength - (typeof offset === 'number' ? offset : 0)
}

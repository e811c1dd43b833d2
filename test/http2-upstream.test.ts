import t from 'tap'
import type { Test } from 'tap'
import http2 from 'node:http2'
import https from 'node:https'
import { spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import net from 'node:net'
import { Client, request } from 'undici'
import type { Dispatcher } from 'undici'
import { Gate, registerFails, startGateway, startUpstream, until } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'
import { scrape, value } from './helpers/scrape.js'
import type { TargetStats } from '../types/index.js'
import type { FastifyServerOptions } from 'fastify'
import { H2Client } from '../lib/h2-client.js'
import type { ConnectionSettings } from '../lib/connection-pool.js'

const cert = readFileSync(new URL('./fixtures/cert.pem', import.meta.url))
const key = readFileSync(new URL('./fixtures/key.pem', import.meta.url))
const fixture = fileURLToPath(new URL('./fixtures/h2-upstream.mjs', import.meta.url))
const { NGHTTP2_REFUSED_STREAM, NGHTTP2_NO_ERROR } = http2.constants
/** Each server session's place among its server's sessions (0: the first accepted). */
const sessionIndex = new WeakMap<http2.Http2Session, number>()

type H2Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, body: Buffer) => void | Promise<void>

interface H2Upstream {
  server: http2.Http2Server | http2.Http2SecureServer
  url: string
  port: number
  /** Sessions (connections) accepted since start, in order, and those open now. */
  accepted: http2.ServerHttp2Session[]
  sessions: Set<http2.ServerHttp2Session>
  /** Streams opened on the server now, and the most there ever were at once. */
  inflight: number
  maxInflight: number
  /** Requests read whole, in order, with the index of the session each came on. */
  seen: Array<{ method: string, path: string, headers: http2.IncomingHttpHeaders, body: Buffer, session: number, id: number }>
  /** PINGs received, across its sessions. */
  pings: number
  /** Streams opened on each session, by its index. */
  opened: number[]
  /** 'session' on each new session, 'session-closed', 'request' on each request read whole, 'ping' on each PING. */
  events: EventEmitter
  close (): Promise<void>
}

interface H2Options {
  settings?: http2.Settings
  /** Ms between a connection's accept and the server's first bytes (its SETTINGS): a peer a long round trip away. */
  settingsDelay?: number
  /** Serves the stream itself, before anything is read (true: handled). */
  onStream?: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean
  /** TLS (ALPN h2): a secure server. */
  tls?: boolean
}

/** An HTTP/2 upstream on 127.0.0.1:0 (h2c, or h2 over TLS); by default it answers 200 with JSON of what it saw. */
async function startH2 (t: Teardown, handler?: H2Handler, options: H2Options = {}): Promise<H2Upstream> {
  const server = options.tls === true
    ? http2.createSecureServer({ key, cert, allowHTTP1: false, settings: options.settings ?? {} })
    : http2.createServer({ settings: options.settings ?? {} })
  const up: H2Upstream = {
    server,
    url: '',
    port: 0,
    accepted: [],
    sessions: new Set(),
    inflight: 0,
    maxInflight: 0,
    seen: [],
    pings: 0,
    opened: [],
    events: new EventEmitter(),
    async close () {
      for (const s of up.sessions) s.destroy()
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
  server.on('session', (session) => {
    sessionIndex.set(session, up.accepted.length)
    up.accepted.push(session)
    session.on('ping', () => {
      up.pings++
      up.events.emit('ping')
    })
    up.sessions.add(session)
    session.on('error', () => {})
    session.on('close', () => {
      up.sessions.delete(session)
      up.events.emit('session-closed')
    })
    up.events.emit('session')
  })
  server.on('stream', (stream, headers) => {
    const index = sessionIndex.get(stream.session!) ?? -1
    up.opened[index] = (up.opened[index] ?? 0) + 1
    stream.on('error', () => {})
    if (options.onStream?.(stream, headers) === true) return
    up.inflight++
    up.maxInflight = Math.max(up.maxInflight, up.inflight)
    stream.on('close', () => { up.inflight-- })
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () => {
      const body = Buffer.concat(chunks)
      const session = sessionIndex.get(stream.session!) ?? -1
      up.seen.push({ method: String(headers[':method']), path: String(headers[':path']), headers, body, session, id: stream.id! })
      up.events.emit('request')
      if (handler !== undefined) {
        Promise.resolve(handler(stream, headers, body)).catch((err) => { stream.destroy(err) })
        return
      }
      if (stream.destroyed) return
      stream.respond({ ':status': 200, 'content-type': 'application/json' })
      stream.end(JSON.stringify({ port: up.port, session, method: headers[':method'], path: headers[':path'], headers, body: body.toString('utf8') }))
    })
  })
  const delay = options.settingsDelay
  if (delay === undefined) {
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    up.port = (server.address() as net.AddressInfo).port
  } else {
    // The TCP side accepts at once; the HTTP/2 server gets the connection (what came meanwhile is kept for it) and sends its SETTINGS later.
    const sockets = new Set<net.Socket>()
    const front = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('close', () => { sockets.delete(socket) })
      setTimeout(() => { if (!socket.destroyed) server.emit('connection', socket) }, delay)
    })
    front.listen(0, '127.0.0.1')
    await once(front, 'listening')
    up.port = (front.address() as net.AddressInfo).port
    t.teardown(() => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy()
      front.close(() => resolve())
    }))
  }
  up.url = `${options.tls === true ? 'https' : 'http'}://127.0.0.1:${up.port}`
  t.teardown(() => up.close())
  return up
}

interface Reply { status: number, body: string, headers: Record<string, unknown> }

async function send (gw: Gateway, path: string, opts: { method?: string, body?: Buffer | string, headers?: Record<string, string> } = {}): Promise<Reply> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent, method: (opts.method ?? 'GET') as Dispatcher.HttpMethod, body: opts.body, headers: opts.headers })
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
}

/** An answer (`<method> <path> <body length>`) held until `gate` opens, for the paths `hold` says. */
function heldBy (gate: Gate, hold: (path: string) => boolean = () => true): H2Handler {
  return async (stream, headers, body) => {
    const path = String(headers[':path'])
    if (hold(path)) await gate.wait()
    if (stream.destroyed) return
    stream.respond({ ':status': 200, 'x-session': String(sessionIndex.get(stream.session!)) })
    stream.end(`${String(headers[':method'])} ${path} ${body.length}`)
  }
}

/** `promise`, or a failure naming `what` after `ms`: nothing the test awaits hangs until tap's own timeout. */
async function inTime<T> (ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`not within ${ms} ms: ${what}`)) }, ms) })
  try {
    return await Promise.race([promise, late])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * `width` loops, each sending one request after another until `stop()` holds
 * (or `max` each, so none runs away); every reply, in the order they ended.
 */
async function loops (width: number, max: number, stop: () => boolean, fn: (i: number) => Promise<Reply>): Promise<Reply[]> {
  const out: Reply[] = []
  let n = 0
  await Promise.all(Array.from({ length: width }, async () => {
    for (let i = 0; i < max && !stop(); i++) out.push(await fn(n++))
  }))
  return out
}

/** Resolves once the predicate holds, checked once per turn of the event loop, for at most `ms`; false when it never did. */
async function within (ms: number, predicate: () => boolean): Promise<boolean> {
  const end = performance.now() + ms
  while (!predicate()) {
    if (performance.now() > end) return false
    await new Promise((resolve) => setImmediate(resolve))
  }
  return true
}

interface H2Process { pid: number, port: number, url: string, exited: Promise<unknown> }

/** fixtures/h2-upstream.mjs in a process of its own (on `port`, 0 for any); killed at teardown, woken first if stopped. */
async function h2Process (t: Teardown, port = 0): Promise<H2Process> {
  const child = spawn(process.execPath, [fixture, String(port)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    await exited
  })
  let out = ''
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8')
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')))
    })
    child.once('exit', (code, signal) => { reject(new Error(`h2-upstream exited (${code ?? signal}) before listening`)) })
  })
  const listening = JSON.parse(line) as { port: number }
  return { pid: child.pid!, port: listening.port, url: `http://127.0.0.1:${listening.port}`, exited }
}

t.test('connections: 64 concurrent requests pack onto as few HTTP/2 connections as the stream limits allow; over HTTP/1.1 one each', async (t) => {
  interface Case { name: string, protocol: 'http1' | 'http2', http2?: { maxStreams: number }, settings?: http2.Settings, settingsDelay?: number, warm?: boolean, want: number }
  const cases: Case[] = [
    { name: 'http2, defaults (100 streams)', protocol: 'http2', want: 1 },
    { name: 'http2, http2.maxStreams 10', protocol: 'http2', http2: { maxStreams: 10 }, want: 7 },
    // A first request's connection learns the server's limit first (a burst in the first round trip of the
    // very first connection is packed to maxStreams: nothing told the gateway otherwise yet).
    { name: 'http2, the server\'s SETTINGS_MAX_CONCURRENT_STREAMS 16', protocol: 'http2', settings: { maxConcurrentStreams: 16 }, warm: true, want: 4 },
    // Each new connection's SETTINGS come 50 ms after its connect: meanwhile it is packed to the limit the first one learned.
    { name: 'http2, max 16, the SETTINGS of new connections 50 ms late', protocol: 'http2', settings: { maxConcurrentStreams: 16 }, settingsDelay: 50, warm: true, want: 4 },
    { name: 'http1', protocol: 'http1', want: 64 }
  ]
  const body = Buffer.alloc(40_000, 'b')
  for (const c of cases) {
    const gate = new Gate()
    const held = (path: string): boolean => path.startsWith('/r')
    let url: string
    let accepted: () => number
    let maxInflight: () => number
    if (c.protocol === 'http2') {
      const up = await startH2(t, heldBy(gate, held), { settings: c.settings, settingsDelay: c.settingsDelay })
      url = up.url
      accepted = () => up.accepted.length
      maxInflight = () => up.maxInflight
    } else {
      const up = await startUpstream(t, async (req, res, b) => {
        await gate.wait()
        res.end(`${String(req.method)} ${String(req.url)} ${b.length}`)
      })
      url = up.url
      accepted = () => up.accepted
      maxInflight = () => up.maxInflight
    }
    const gw = await startGateway(t, {
      upstreams: { a: { targets: [url], protocol: c.protocol, ...(c.http2 !== undefined ? { http2: c.http2 } : {}) } },
      routes: [{ prefix: '/', upstream: 'a' }]
    })
    if (c.warm === true) t.equal((await send(gw, '/warm')).status, 200, `${c.name}: a first request`)
    // Half GETs, half POSTs of 40 KB (past HTTP/2's 64 KiB window across several streams).
    const all = Promise.all(Array.from({ length: 64 }, async (_, i) => await send(gw, `/r${i}`, i % 2 === 0 ? {} : { method: 'POST', body })))
    // Every request is held at the server until all 64 are there: they are in flight together.
    await inTime(5000, gate.waitingFor(64), `${c.name}: 64 requests at the server together (${gate.waiting} are)`)
    t.equal(maxInflight(), 64, `${c.name}: all 64 at the server at once`)
    gate.open()
    const res = await all
    const wrong = res.filter((r, i) => r.status !== 200 || r.body !== (i % 2 === 0 ? `GET /r${i} 0` : `POST /r${i} ${body.length}`))
    t.same(wrong, [], `${c.name}: every answer 200 with its own body, every POST body whole`)
    t.equal(accepted(), c.want, `${c.name}: ${accepted()} connections at the server (want ${c.want})`)
    t.equal(gw.app.sssonector.upstream('a').stats().targets[0].opened, c.want, `${c.name}: the pool opened as many`)
    // A stream past the server's limit is refused by it (and retried): none was sent past it.
    const refused = value(await scrape(`${gw.url}/metrics`, gw.agent), 'sssonector_request_retries_total', { upstream: 'a', reason: 'refused' })
    t.equal(refused, 0, `${c.name}: no stream refused and retried (${refused})`)
  }
})

t.test('pool.maxActivePerTarget 8: the target sees at most 8 streams at once; the rest wait in the queue and succeed', async (t) => {
  const gate = new Gate()
  const up = await startH2(t, heldBy(gate))
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], protocol: 'http2', pool: { maxActivePerTarget: 8 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const a = gw.app.sssonector.upstream('a')
  const all = Promise.all(Array.from({ length: 64 }, async (_, i) => await send(gw, `/q${i}`)))
  await inTime(5000, gate.waitingFor(8), '8 streams at the server')
  t.ok(await within(5000, () => a.stats().pending === 56), `the other 56 wait in the queue (${a.stats().pending})`)
  t.equal(up.inflight, 8, 'the server has 8 streams open, no more')
  t.equal(a.stats().targets[0].active, 8, 'the pool counts 8 in flight')
  t.equal(a.stats().targets[0].busy, 1, 'on 1 busy connection')
  t.equal(a.stats().protocol, 'http2', 'stats say how the targets are spoken to')
  gate.open()
  const res = await all
  t.same(res.filter((r, i) => r.status !== 200 || r.body !== `GET /q${i} 0`), [], 'all 64 answered 200 with their own bodies')
  t.equal(up.maxInflight, 8, `never more than 8 at the server (${up.maxInflight})`)
  t.equal(up.accepted.length, 1, 'on one connection')
})

/** The target's standing: no cause out of rotation, no failure counted, its breaker closed with none failed. */
function inRotation (t: Test, s: TargetStats, name: string): void {
  t.same(s.health, [], `${name}: no cause keeps it out of rotation`)
  t.equal(s.down, null, `${name}: not skipped`)
  t.same(Object.keys(s.errors).filter((k) => k !== 'refused'), [], `${name}: no failure counted against it (refusals are counted apart: ${s.errors.refused ?? 0})`)
  t.equal(s.breaker?.state, 'closed', `${name}: its breaker closed`)
  t.equal(s.breaker?.failed, 0, `${name}: no failure in its breaker's window`)
}

t.test('GOAWAY under steady load', async (t) => {
  t.test('one target: no request fails; the streams in flight finish on the old connection, new ones go on one new connection; the target stays in', async (t) => {
    const gate = new Gate()
    const up = await startH2(t, heldBy(gate, (path) => path.startsWith('/hold')))
    const gw = await startGateway(t, {
      upstreams: { a: { targets: [up.url], protocol: 'http2' } },
      routes: [{ prefix: '/', upstream: 'a' }]
    })
    let stop = false
    const load = loops(6, 5000, () => stop, async (i) => await send(gw, `/fast/${i}`))
    await inTime(5000, until(up.events, 'request', () => up.seen.length >= 50), 'load under way')
    const held = [0, 1, 2].map(async (i) => await send(gw, `/hold/${i}`))
    await inTime(5000, gate.waitingFor(3), 'three streams held at the server')
    const old = up.accepted[0]
    // Graceful: the last stream it will finish is the last it took.
    old.goaway(NGHTTP2_NO_ERROR)
    const mark = up.seen.length
    const openedOnOld = up.opened[0]
    await inTime(5000, until(up.events, 'request', () => up.seen.slice(mark).filter((s) => s.session === 1).length >= 100), '100 requests on a new connection')
    gate.open()
    const heldRes = await Promise.all(held)
    stop = true
    const res = await load
    t.equal(res.filter((r) => r.status === 200).length, res.length, `every one of ${res.length} requests under load answered 200`)
    t.same(heldRes.map((r) => [r.status, r.body, r.headers['x-session']]), [0, 1, 2].map((i) => [200, `GET /hold/${i} 0`, '0']), 'the streams held across the GOAWAY finished, on the old connection')
    t.equal(up.accepted.length, 2, 'one new connection took the requests after it')
    t.equal(up.opened[0], openedOnOld, 'no stream opened on the old connection after it')
    await inTime(5000, until(up.events, 'session-closed', () => !up.sessions.has(old)), 'the old connection closed')
    t.pass('the gateway closed the old connection once its streams were done')
    const s = gw.app.sssonector.upstream('a').stats()
    inRotation(t, s.targets[0], 'the target')
    t.equal(s.targets[0].connections, 1, 'one connection open')
    const refused = value(await scrape(`${gw.url}/metrics`, gw.agent), 'sssonector_request_retries_total', { upstream: 'a', reason: 'refused' })
    t.comment(`${res.length} requests under load; ${refused} crossed the GOAWAY and were retried on the new connection`)
  })

  t.test('two targets: the GOAWAY of one fails nothing; it gets a new connection and stays in rotation', async (t) => {
    const gate = new Gate()
    const a = await startH2(t, heldBy(gate, (path) => path.startsWith('/hold')))
    const b = await startH2(t)
    // Consistent hashing on x-key: the load spreads over both, the held requests go where their key says.
    const gw = await startGateway(t, {
      upstreams: { u: { targets: [a.url, b.url], protocol: 'http2', balance: 'consistent-hash', hashKey: (request) => String(request.headers['x-key']) } },
      routes: [{ prefix: '/', upstream: 'u' }]
    })
    let toA: string | null = null
    for (let i = 0; i < 64 && toA === null; i++) {
      const probe = await send(gw, '/fast/probe', { headers: { 'x-key': `key ${i}` } })
      // (A answers through heldBy, with x-session; B with JSON)
      if (probe.headers['x-session'] !== undefined) toA = `key ${i}`
    }
    t.ok(toA !== null, `a key that goes to A (${String(toA)})`)
    let stop = false
    const load = loops(6, 5000, () => stop, async (i) => await send(gw, `/fast/${i}`, { headers: { 'x-key': `load ${i}` } }))
    await inTime(5000, until(a.events, 'request', () => a.seen.length >= 30), 'load under way')
    await inTime(5000, until(b.events, 'request', () => b.seen.length >= 30), 'load under way on B too')
    const held = [0, 1, 2].map(async (i) => await send(gw, `/hold/${i}`, { headers: { 'x-key': String(toA) } }))
    await inTime(5000, gate.waitingFor(3), 'three streams held at A')
    const old = a.accepted[0]
    old.goaway(NGHTTP2_NO_ERROR)
    const mark = a.seen.length
    await inTime(5000, until(a.events, 'request', () => a.seen.slice(mark).filter((s) => s.session === 1).length >= 50), '50 requests on A\'s new connection')
    gate.open()
    const heldRes = await Promise.all(held)
    stop = true
    const res = await load
    t.equal(res.filter((r) => r.status === 200).length, res.length, `every one of ${res.length} requests under load answered 200`)
    t.same(heldRes.map((r) => [r.status, r.body, r.headers['x-session']]), [0, 1, 2].map((i) => [200, `GET /hold/${i} 0`, '0']), 'the streams held at A across its GOAWAY finished, on its old connection')
    t.equal(a.accepted.length, 2, 'A: one new connection')
    t.equal(b.accepted.length, 1, 'B: its one connection')
    await inTime(5000, until(a.events, 'session-closed', () => !a.sessions.has(old)), 'A\'s old connection closed')
    const s = gw.app.sssonector.upstream('u').stats()
    inRotation(t, s.targets[0], 'A')
    inRotation(t, s.targets[1], 'B')
  })

  t.test('streams past the GOAWAY\'s last stream id: retried on a new connection, POSTs included; those up to it finish on the old one', async (t) => {
    const gate = new Gate()
    const up = await startH2(t, heldBy(gate))
    const gw = await startGateway(t, {
      upstreams: { a: { targets: [up.url], protocol: 'http2' } },
      routes: [{ prefix: '/', upstream: 'a' }]
    })
    const posts = [0, 1, 2, 3].map(async (i) => await send(gw, `/p${i}`, { method: 'POST', body: `body of p${i}` }))
    await inTime(5000, gate.waitingFor(4), 'four POSTs held at the server')
    const ids = up.seen.map((s) => s.id).sort((x, y) => x - y)
    const old = up.accepted[0]
    // Only the first two will be finished: the gateway must take the other two elsewhere.
    old.goaway(NGHTTP2_NO_ERROR, ids[1])
    await inTime(5000, gate.waitingFor(6), 'the two past the last stream id sent again')
    gate.open()
    const res = await Promise.all(posts)
    t.same(res.map((r) => r.status), [200, 200, 200, 200], 'all four answered 200')
    t.same(res.map((r, i) => r.body === `POST /p${i} ${`body of p${i}`.length}`), [true, true, true, true], 'each with its own body')
    const on = (session: number): number[] => up.seen.filter((s) => s.session === session).map((s) => s.id).sort((x, y) => x - y)
    t.same(on(0), ids, 'the old connection saw the four once')
    t.equal(on(1).length, 2, 'the new connection took the two past the GOAWAY')
    t.same(res.map((r) => r.headers['x-session']).sort(), ['0', '0', '1', '1'], 'two answered on the old connection, two on the new')
    const s = gw.app.sssonector.upstream('a').stats()
    inRotation(t, s.targets[0], 'the target')
    t.equal(value(await scrape(`${gw.url}/metrics`, gw.agent), 'sssonector_request_retries_total', { upstream: 'a', reason: 'refused' }), 2, 'two retries, counted as refused')
  })
})

t.test('REFUSED_STREAM: a POST with a small body is sent again and answered; the target\'s standing does not move', async (t) => {
  let refused = 0
  const up = await startH2(t, undefined, {
    onStream (stream) {
      if (refused >= 2) return false
      refused++
      // Before reading anything: the stream was not processed.
      stream.close(NGHTTP2_REFUSED_STREAM)
      return true
    }
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], protocol: 'http2' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await send(gw, '/create', { method: 'POST', body: 'a small body', headers: { 'content-type': 'text/plain' } })
  t.equal(res.status, 200, res.body)
  t.equal((JSON.parse(res.body) as { body: string }).body, 'a small body', 'the body arrived whole')
  t.equal(refused, 2, 'refused twice first')
  t.equal(up.seen.length, 1, 'processed once')
  const s = gw.app.sssonector.upstream('a').stats()
  inRotation(t, s.targets[0], 'the target')
  t.equal(s.targets[0].breaker?.ok, 1, 'its breaker saw the one answer')
  t.equal(s.targets[0].window.connectionErrors, 0, 'no connection error in its window')
  t.equal(s.targets[0].connections, 1, 'on its one connection (a refused stream leaves it open)')
  t.equal(value(await scrape(`${gw.url}/metrics`, gw.agent), 'sssonector_request_retries_total', { upstream: 'a', reason: 'refused' }), 2, 'two retries, counted as refused')
})

t.test('PING: a target process stopped (SIGSTOP) while the gateway holds an idle connection to it: the connection is closed within pingInterval + pingTimeout; requests go on succeeding', async (t) => {
  const stopped = await h2Process(t)
  const other = await startH2(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [stopped.url, other.url], protocol: 'http2', balance: 'round-robin', http2: { pingInterval: 200, pingTimeout: 300 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const u = gw.app.sssonector.upstream('a')
  const first = await Promise.all([send(gw, '/1'), send(gw, '/2')])
  t.same(first.map((r) => r.status), [200, 200])
  t.same(first.map((r) => (JSON.parse(r.body) as { port: number }).port).sort(), [stopped.port, other.port].sort(), 'one request to each target')
  // Answered PINGs keep a connection: three reach the in-process target, its connection stays.
  await inTime(3000, until(other.events, 'ping', () => other.pings >= 3), 'three PINGs')
  let s = u.stats()
  t.same(s.targets.map((x) => [x.connections, x.idle, x.closed]), [[1, 1, 0], [1, 1, 0]], 'an idle connection to each, none closed')
  process.kill(stopped.pid, 'SIGSTOP')
  const at = performance.now()
  const closed = await within(3000, () => u.stats().targets[0].closed === 1)
  const elapsed = performance.now() - at
  t.ok(closed, `the connection to the stopped process was closed (${Math.round(elapsed)} ms after SIGSTOP)`)
  t.ok(elapsed >= 280, `not before its PING had 300 ms to be answered (${Math.round(elapsed)} ms)`)
  t.ok(elapsed <= 500 + 400, `within pingInterval + pingTimeout (500 ms), give or take the timers (${Math.round(elapsed)} ms)`)
  s = u.stats()
  t.equal(s.targets[1].closed, 0, 'the other target\'s connection, answering its PINGs, stays')
  const metrics = await scrape(`${gw.url}/metrics`, gw.agent)
  t.equal(value(metrics, 'sssonector_pool_connection_age_seconds_count', { upstream: 'a', target: stopped.url }), 1, 'the metrics count the closed connection')
  // Requests meanwhile: a new connection to the stopped process connects (the kernel accepts) and hangs, until its PING fails; GETs are retried on the other.
  const began = performance.now()
  const during = await inTime(10_000, Promise.all(Array.from({ length: 6 }, async (_, i) => await send(gw, `/during/${i}`))), 'six answers while it is stopped')
  t.same(during.map((r) => r.status), [200, 200, 200, 200, 200, 200], `requests while it is stopped succeed (in ${Math.round(performance.now() - began)} ms)`)
  t.ok(during.every((r) => (JSON.parse(r.body) as { port: number }).port === other.port), 'answered by the other target')
  process.kill(stopped.pid, 'SIGCONT')
})

t.test('the breaker over HTTP/2: a target answering 503 to everything opens its breaker under load; GETs are retried on the other; its connection stays', async (t) => {
  const failing = await startH2(t, (stream) => {
    stream.respond({ ':status': 503, 'content-length': '4' })
    stream.end('down')
  })
  const good = await startH2(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [failing.url, good.url], protocol: 'http2', balance: 'round-robin', circuitBreaker: { consecutiveFailures: 3 }, outlierDetection: false, pool: { retryInterval: 60_000, maxRetryInterval: 60_000 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const u = gw.app.sssonector.upstream('a')
  const answers = await Promise.all(Array.from({ length: 4 }, async (_, loop) => {
    const out: number[] = []
    for (let i = 0; i < 10; i++) out.push((await send(gw, `/l${loop}/${i}`)).status)
    return out
  }))
  t.same(answers.flat().filter((x) => x !== 200), [], 'every GET was answered 200: a 503 was retried on the good target')
  const s = u.stats().targets.find((x) => x.url === failing.url)!
  t.equal(s.breaker?.state, 'open', 'the failing target\'s breaker opened')
  t.ok(s.health.some((h) => h.cause === 'circuit_open'), `it is out of rotation (${s.health.map((h) => h.cause).join(',')})`)
  const seen = failing.seen.length
  await Promise.all(Array.from({ length: 10 }, async (_, i) => await send(gw, `/after/${i}`)))
  t.equal(failing.seen.length, seen, 'once open, no request reaches it')
  t.equal(failing.accepted.length, 1, 'all on one HTTP/2 connection: a 503 does not cost the connection')
})

t.test('a target process stopped (SIGSTOP) before the gateway connects: no SETTINGS within timeouts.connect is a failed connect; POSTs go to the other target; it leaves rotation', async (t) => {
  const stopped = await h2Process(t)
  const other = await startH2(t)
  process.kill(stopped.pid, 'SIGSTOP')
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [stopped.url, other.url], protocol: 'http2', balance: 'round-robin', timeouts: { connect: 300 }, http2: { pingInterval: 0 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const u = gw.app.sssonector.upstream('a')
  // The kernel accepts the connection of a stopped process: only its missing connection preface tells.
  const began = performance.now()
  const posts = await inTime(10_000, Promise.all(Array.from({ length: 4 }, async (_, i) => await send(gw, `/p${i}`, { method: 'POST', body: Buffer.alloc(1000, 'p') }))), 'four POST answers')
  t.same(posts.map((r) => r.status), [200, 200, 200, 200], `every POST succeeded (in ${Math.round(performance.now() - began)} ms)`)
  t.ok(posts.every((r) => (JSON.parse(r.body) as { port: number }).port === other.port), 'on the other target: retried, as nothing went out to the stopped one')
  const s = u.stats().targets[0]
  t.ok(s.health.some((h) => h.cause === 'connect_failed'), `the stopped target is out of rotation: connect_failed (${s.health.map((h) => h.cause).join(',')})`)
  t.ok((s.errors.connect_timeout ?? 0) >= 1, `counted as connect timeouts (${s.errors.connect_timeout ?? 0}: each attempt that waited on that connection)`)
  t.notOk(Object.keys(s.errors).some((k) => k !== 'connect_timeout'), 'and nothing else: no request went out on it')
  process.kill(stopped.pid, 'SIGCONT')
})

t.test('a target process killed under load and restarted on its port: requests keep succeeding; it leaves rotation (connect_failed) and comes back', async (t) => {
  const a = await h2Process(t)
  const b = await h2Process(t)
  const gw = await startGateway(t, {
    upstreams: { u: { targets: [a.url, b.url], protocol: 'http2', balance: 'round-robin', pool: { retryInterval: '100ms', maxRetryInterval: '200ms' } } },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  const pids = new Map<number, number>()
  const get = async (i: number): Promise<Reply> => {
    const r = await send(gw, `/g${i}`)
    if (r.status === 200) {
      const pid = (JSON.parse(r.body) as { pid: number }).pid
      pids.set(pid, (pids.get(pid) ?? 0) + 1)
    }
    return r
  }
  const failed = (res: Reply[]): Array<[number, string]> => res.filter((r) => r.status !== 200).map((r) => [r.status, r.body])

  // GETs under load while it is killed: those in flight on it are retried.
  let stop = false
  let load = loops(4, 5000, () => stop, get)
  t.ok(await within(5000, () => (pids.get(a.pid) ?? 0) >= 20 && (pids.get(b.pid) ?? 0) >= 20), 'load on both')
  const killedAt = performance.now()
  process.kill(a.pid, 'SIGKILL')
  await a.exited
  const out = await within(5000, () => u.stats().targets[0].health.some((h) => h.cause === 'connect_failed'))
  t.ok(out, `the killed target left rotation in ${Math.round(performance.now() - killedAt)} ms: ${JSON.stringify(u.stats().targets[0].health)}`)
  stop = true
  let res = await load
  t.same(failed(res), [], `every one of ${res.length} GETs under load answered 200 (errors on the killed target: ${JSON.stringify(u.stats().targets[0].errors)})`)

  // POSTs while it is dead, one at a time, until one took its trial: a failed connect is retried whatever the method.
  const refusedBefore = u.stats().targets[0].errors.connect_refused ?? 0
  const posts: Reply[] = []
  for (let i = 0; i < 500 && (u.stats().targets[0].errors.connect_refused ?? 0) === refusedBefore; i++) {
    posts.push(await send(gw, `/p${i}`, { method: 'POST', body: 'x'.repeat(1000) }))
  }
  t.ok((u.stats().targets[0].errors.connect_refused ?? 0) > refusedBefore, `a POST (of ${posts.length}) met its failed connect`)
  t.same(posts.filter((r) => r.status !== 200 || (JSON.parse(r.body) as { length: number }).length !== 1000), [], 'every POST answered 200, its body whole')

  // Restarted on its port: a trial finds it, it takes its share again.
  const restarted = await h2Process(t, a.port)
  const restartedAt = performance.now()
  stop = false
  load = loops(4, 5000, () => stop, get)
  const back = await within(5000, () => (pids.get(restarted.pid) ?? 0) >= 20)
  t.ok(back, `back in rotation: the restarted process answered ${pids.get(restarted.pid) ?? 0} requests within ${Math.round(performance.now() - restartedAt)} ms of its start`)
  stop = true
  res = await load
  t.same(failed(res), [], `every one of ${res.length} GETs answered 200`)
  const s = u.stats()
  t.same(s.targets[0].health, [], 'no cause left')
  t.comment(`${pids.get(a.pid)} answers from the first process, ${pids.get(restarted.pid)} from the restarted one, ${pids.get(b.pid)} from the other; errors ${JSON.stringify(s.targets[0].errors)}`)
})

t.test('protocol \'auto\' over TLS: HTTP/2 with a target whose ALPN says h2, HTTP/1.1 with one that speaks only that', async (t) => {
  const h2 = await startH2(t, undefined, { tls: true })
  /** An https (HTTP/1.1) server: it answers with the version and ALPN protocol of the request; its TLS connections are counted. */
  const h1Server = async (keyPem: Buffer, certPem: Buffer): Promise<{ port: number, versions: string[], connections: () => number }> => {
    const versions: string[] = []
    let connections = 0
    const server = https.createServer({ key: keyPem, cert: certPem }, (req, res) => {
      versions.push(req.httpVersion)
      res.end(JSON.stringify({ httpVersion: req.httpVersion, alpn: (req.socket as { alpnProtocol?: unknown }).alpnProtocol }))
    })
    server.on('secureConnection', () => { connections++ })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    }))
    return { port: (server.address() as net.AddressInfo).port, versions, connections: () => connections }
  }
  const h1 = await h1Server(key, cert)
  // A target reached by address whose certificate names only `users.internal`: its `host` is the TLS name.
  const internalCert = readFileSync(new URL('./fixtures/users-internal-cert.pem', import.meta.url))
  const named = await h1Server(readFileSync(new URL('./fixtures/users-internal-key.pem', import.meta.url)), internalCert)
  const gw = await startGateway(t, {
    upstreams: {
      two: { targets: [h2.url], protocol: 'auto', tls: { ca: cert } },
      one: { targets: [`https://127.0.0.1:${h1.port}`], protocol: 'auto', tls: { ca: cert } },
      named: { targets: [{ url: `https://127.0.0.1:${named.port}`, host: 'users.internal' }], protocol: 'auto', tls: { ca: internalCert } }
    },

    routes: [{ prefix: '/two', upstream: 'two' }, { prefix: '/one', upstream: 'one' }, { prefix: '/named', upstream: 'named' }]
  })
  // Until ALPN has spoken, a connection may turn out HTTP/1.1 and carries one request: the first one's answer first.
  t.equal((await inTime(5000, send(gw, '/two/first'), 'an answer from the h2 target')).status, 200, 'the h2 target answers')
  const two = await inTime(5000, Promise.all(Array.from({ length: 5 }, async (_, i) => await send(gw, `/two/${i}`))), 'five answers from the h2 target')
  t.same(two.map((r) => r.status), [200, 200, 200, 200, 200], 'five at once')
  t.equal(h2.seen.length, 6, 'over HTTP/2: its streams carried the six')
  t.equal(h2.accepted.length, 1, 'on one connection')
  const one = await inTime(5000, Promise.all(Array.from({ length: 5 }, async (_, i) => await send(gw, `/one/${i}`))), 'five answers from the HTTP/1.1 target')
  t.same(one.map((r) => [r.status, r.body]), Array(5).fill([200, JSON.stringify({ httpVersion: '1.1', alpn: 'http/1.1' })]), 'the HTTP/1.1 target answers five at once, over HTTP/1.1 (ALPN\'s choice)')
  t.equal(h1.versions.length, 5, 'it saw the five')
  t.equal(gw.app.sssonector.upstream('one').stats().targets[0].opened, 5, 'one connection each, as HTTP/1.1 takes')
  const byName = await inTime(5000, Promise.all([send(gw, '/named/a'), send(gw, '/named/b')]), 'two answers from the target known by name')
  t.same(byName.map((r) => r.status), [200, 200], `the target known by name answers (${byName.map((r) => r.body).join(', ')})`)
  t.comment(`TLS connections: h2 target ${h2.accepted.length}, HTTP/1.1 target ${h1.connections()}, named target ${named.connections()} for 2 requests`)
})

t.test('protocol \'auto\', HTTP/1.1 chosen: a reconnect on that connection keeps the TLS options (a client certificate)', async (t) => {
  const internalCert = readFileSync(new URL('./fixtures/users-internal-cert.pem', import.meta.url))
  const internalKey = readFileSync(new URL('./fixtures/users-internal-key.pem', import.meta.url))
  let connections = 0
  // Client certificates required; each answer closes its connection, so the second request needs a new one.
  const server = https.createServer({ key, cert, requestCert: true, rejectUnauthorized: true, ca: internalCert }, (req, res) => {
    res.setHeader('connection', 'close')
    res.end(`${String(req.url)} from ${String((req.socket as unknown as { getPeerCertificate: () => { subject: { CN: string } } }).getPeerCertificate().subject.CN)}`)
  })
  server.on('secureConnection', () => { connections++ })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  }))
  const origin = `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  const settings = { pool: { idleTimeout: 60_000 }, timeouts: { connect: 2000, headers: 2000, body: 2000 }, tls: { ca: cert, cert: internalCert, key: internalKey } } as unknown as ConnectionSettings
  const client = new H2Client(origin, settings, { maxStreams: 100, pingInterval: 0, pingTimeout: 1000 }, true)
  t.teardown(() => client.destroy())
  const call = async (path: string): Promise<string> => await new Promise((resolve) => {
    let status = 0
    const chunks: Buffer[] = []
    client.dispatch({ origin, path, method: 'GET', headers: { host: new URL(origin).host } }, {
      onRequestStart () {},
      onResponseStart (_c, code) { status = code },
      onResponseData (_c, chunk) { chunks.push(chunk) },
      onResponseEnd () { resolve(`${status} ${Buffer.concat(chunks).toString()}`) },
      onResponseError (_c, err) { resolve(`error ${err.message}`) }
    })
  })
  t.same(await inTime(5000, Promise.all([call('/a'), call('/b')]), 'two answers'), ['200 /a from users.internal', '200 /b from users.internal'], 'both answered, each with the client certificate')
  t.equal(client.protocol, 'http/1.1', 'ALPN chose HTTP/1.1')
  t.equal(connections, 2, 'the second on a connection of its own')
})

t.test('an HTTP/2 client of the gateway (h2c, and h2 over TLS): answers from HTTP/1.1 and HTTP/2 upstreams, the HTTP/2 upstream\'s trailers, no pseudo-header sent on as a header', async (t) => {
  const h1 = await startUpstream(t)
  const h2 = await startH2(t, (stream, headers) => {
    if (String(headers[':path']).startsWith('/trailers')) {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' }, { waitForTrailers: true })
      stream.on('wantTrailers', () => { stream.sendTrailers({ 'x-checksum': 'c0ffee', 'x-count': '2' }) })
      stream.end('body then trailers')
      return
    }
    stream.respond({ ':status': 200, 'content-type': 'application/json' })
    stream.end(JSON.stringify({ path: headers[':path'], headers }))
  })
  for (const secure of [false, true]) {
    const name = secure ? 'h2 over TLS' : 'h2c'
    const versions: string[] = []
    const gw = await startGateway(t, {
      upstreams: { one: { targets: [h1.url] }, two: { targets: [h2.url], protocol: 'http2' } },
      routes: [{ prefix: '/one', upstream: 'one' }, { prefix: '/two', upstream: 'two' }]
    }, (app) => {
      app.addHook('onRequest', async (request) => { versions.push(request.raw.httpVersion) })
    }, (secure ? { http2: true, https: { key, cert } } : { http2: true }) as unknown as FastifyServerOptions)
    const origin = gw.url.replace('http:', secure ? 'https:' : 'http:')

    // Node's HTTP/2 client.
    const session = http2.connect(origin, secure ? { ca: cert } : {})
    session.on('error', () => {})
    t.teardown(() => { session.destroy() })
    const get = async (path: string): Promise<{ status: number, body: string, trailers: http2.IncomingHttpHeaders | null }> => {
      const stream = session.request({ ':path': path, 'x-test': name })
      let status = 0
      let trailers: http2.IncomingHttpHeaders | null = null
      stream.on('response', (h) => { status = Number(h[':status']) })
      stream.on('trailers', (tr) => { trailers = tr })
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      await once(stream, 'end')
      return { status, body: Buffer.concat(chunks).toString(), trailers }
    }
    const fromOne = await get('/one/x')
    t.equal(fromOne.status, 200, `${name}, node's client: the HTTP/1.1 upstream answers`)
    const seen = h1.seen[h1.seen.length - 1].headers
    t.same(Object.keys(seen).filter((k) => k.startsWith(':')), [], `${name}: no pseudo-header reached the HTTP/1.1 upstream as a header`)
    t.equal(seen['x-test'], name, `${name}: the client's own header did`)
    const fromTwo = await get('/two/x')
    t.equal(fromTwo.status, 200, `${name}, node's client: the HTTP/2 upstream answers`)
    t.equal((JSON.parse(fromTwo.body) as { headers: Record<string, string> }).headers['x-test'], name, `${name}: with the client's header`)
    const withTrailers = await get('/two/trailers')
    t.equal(withTrailers.body, 'body then trailers', `${name}: the body`)
    t.match(withTrailers.trailers, { 'x-checksum': 'c0ffee', 'x-count': '2' }, `${name}, node's client: the upstream's trailers`)

    if (secure) {
      // undici's HTTP/2 client (ALPN over TLS).
      const client = new Client(origin, { allowH2: true, connect: { ca: cert } })
      t.teardown(() => client.close())
      const a = await client.request({ path: '/one/y', method: 'GET' })
      t.equal(a.statusCode, 200, 'undici\'s client: the HTTP/1.1 upstream answers')
      t.equal((JSON.parse(await a.body.text()) as { url: string }).url, '/y', 'undici\'s client: its path')
      const b = await client.request({ path: '/two/trailers', method: 'GET' })
      t.equal(b.statusCode, 200, 'undici\'s client: the HTTP/2 upstream answers')
      t.equal(await b.body.text(), 'body then trailers', 'undici\'s client: the body')
      // (undici's HTTP/2 client drops every response's trailers, straight from a node:http2 server too: node's client checks them above)
      t.comment(`undici's client saw trailers ${JSON.stringify(b.trailers)}`)
    }
    t.ok(versions.length >= 3 && versions.every((v) => v === '2.0'), `${name}: every request reached the gateway over HTTP/2 (${versions.join(', ')})`)
  }
})

t.test('options: protocol and http2 checked at register, naming the option and the value', async (t) => {
  const targets = ['http://127.0.0.1:1']
  await registerFails(t, { upstreams: { a: { targets, protocol: 'h3' } } }, /^upstreams\.a\.protocol: "h3" is not one of "http1", "http2", "auto"/)
  await registerFails(t, { upstreams: { a: { targets } }, protocol: 'HTTP2' }, /^protocol: "HTTP2" is not one of "http1", "http2", "auto"/)
  await registerFails(t, { upstreams: { a: { targets, protocol: 'http2', http2: { maxStreams: 0 } } } }, /^upstreams\.a\.http2\.maxStreams: 0 is not between 1 and 2147483647/)
  await registerFails(t, { upstreams: { a: { targets, protocol: 'http2', http2: { maxStream: 10 } } } }, /^upstreams\.a\.http2\.maxStream: unknown option \(allowed: maxStreams, pingInterval, pingTimeout\)/)
  await registerFails(t, { upstreams: { a: { targets, protocol: 'http2', http2: { pingTimeout: 0 } } } }, /^upstreams\.a\.http2\.pingTimeout: 0 must be longer than 0/)
  await registerFails(t, { upstreams: { a: { targets, healthCheck: { grpc: '' } } } }, /^upstreams\.a\.healthCheck\.grpc: "" needs protocol "http2" or "auto"/)
  await registerFails(t, { upstreams: { a: { targets, protocol: 'http1', healthCheck: { grpc: 'echo.Echo' } } } }, /^upstreams\.a\.healthCheck\.grpc: "echo\.Echo" needs protocol "http2" or "auto"/)
})

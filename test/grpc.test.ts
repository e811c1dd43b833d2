// gRPC through a proxy route: a Fastify app with `http2: true` in front of
// @grpc/grpc-js servers, each in a process of its own, over HTTP/2 upstreams
// (`protocol: 'http2'`), called by @grpc/grpc-js clients and by Node's http2
// client where the bytes on the wire matter (a trailers-only answer, a
// grpc-timeout the client library would enforce itself).
import { test } from 'tap'
import http2 from 'node:http2'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import grpc from '@grpc/grpc-js'
import type { SssonectorOptions } from '../types/index.js'
import { eventually, refusedPort, startGateway } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'
import { echoClient, serverStream, startGrpcServer, unary } from './helpers/grpc.js'
import type { EchoMsg } from './helpers/grpc.js'
import { value } from './helpers/scrape.js'

const cert = readFileSync(new URL('./fixtures/cert.pem', import.meta.url))
const key = readFileSync(new URL('./fixtures/key.pem', import.meta.url))

const ROUTE = { prefix: '/echo.Echo', rewritePrefix: '/echo.Echo', upstream: 'g' }

async function grpcGateway (t: Teardown, upstream: Record<string, unknown>, extra: Partial<SssonectorOptions> = {}, tls = false): Promise<Gateway & { address: string }> {
  const gw = await startGateway(t, {
    upstreams: { g: { protocol: 'http2', ...upstream } as never },
    routes: [ROUTE],
    ...extra
  }, undefined, (tls ? { http2: true, https: { key, cert } } : { http2: true }) as never)
  return Object.assign(gw, { address: gw.url.replace(/^http:\/\//, '') })
}

/** A raw HTTP/2 call of the gateway: the answer's head, data and trailers as they came on the wire. */
async function rawCall (address: string, path: string, headers: Record<string, string>, body: Buffer): Promise<{ head: http2.IncomingHttpHeaders, endedWithHead: boolean, data: Buffer, trailers: http2.IncomingHttpHeaders | null, ms: number }> {
  const session = http2.connect(`http://${address}`)
  try {
    const started = Date.now()
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers })
    stream.end(body)
    const [head, flags] = await once(stream, 'response') as [http2.IncomingHttpHeaders, number]
    let trailers: http2.IncomingHttpHeaders | null = null
    stream.on('trailers', (t) => { trailers = t })
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    await once(stream, 'close')
    return { head, endedWithHead: (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0, data: Buffer.concat(chunks), trailers, ms: Date.now() - started }
  } finally {
    session.close()
  }
}

/** A GET of the h2c gateway (its /metrics): Node's http2 client, as undici speaks HTTP/1.1 in clear text. */
async function h2get (base: string, path: string): Promise<string> {
  const session = http2.connect(base)
  try {
    const stream = session.request({ ':path': path })
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    await once(stream, 'end')
    return Buffer.concat(chunks).toString()
  } finally {
    session.close()
  }
}

/** An Echo request framed as one gRPC message: `Msg { text }`. */
function frame (text: string): Buffer {
  const t = Buffer.from(text)
  const msg = Buffer.concat([Buffer.from([0x0a, t.length]), t])
  const head = Buffer.alloc(5)
  head.writeUInt32BE(msg.length, 1)
  return Buffer.concat([head, msg])
}

test('unary, server-streaming, client-streaming and bidirectional calls pass through, with their trailers', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const b = await startGrpcServer(t, 'b')
  const gw = await grpcGateway(t, { targets: [a.url, b.url] })
  const client = echoClient(t, gw.address)

  const calls = await Promise.all(Array.from({ length: 20 }, async (_, i) => await unary(client, { text: `hi ${i}` })))
  t.same(calls.filter((c) => c.err !== null).map((c) => c.err?.message), [], 'every unary call succeeded')
  t.ok(calls.every((c, i) => c.res?.text === `hi ${i}`), 'each got its own answer')
  t.ok(calls.every((c) => c.trailers?.get('x-served-by')[0] === c.res?.from), 'the trailing metadata came from the server that answered')
  t.same(new Set(calls.map((c) => c.res?.from)), new Set(['a', 'b']), 'the calls were balanced over both targets')

  const stream = await serverStream(client, { count: 200 })
  t.equal(stream.status.code, grpc.status.OK, 'server stream ended OK')
  t.equal(stream.messages.length, 200, 'with every message')
  t.same(stream.messages.map((m) => m.count), Array.from({ length: 200 }, (_, i) => i), 'in order')
  t.equal(stream.status.metadata.get('x-served-by')[0], stream.messages[0].from, 'its trailers intact')

  const summed = await new Promise<{ err: grpc.ServiceError | null, res?: EchoMsg }>((resolve) => {
    const call = client.ClientStream(new grpc.Metadata(), {}, (err, res) => { resolve({ err, res }) })
    for (let i = 1; i <= 50; i++) call.write({ count: i })
    call.end()
  })
  t.equal(summed.err, null, 'client stream ended OK')
  t.same([summed.res?.text, summed.res?.count], ['50', 1275], 'the server read all 50 messages')

  // Ping-pong: each message waits for the echo of the one before. A gateway that
  // read the request body ahead before forwarding would hang it: the deadline would end it.
  const rounds = await new Promise<{ n: number, code: number }>((resolve) => {
    const call = client.Bidi(new grpc.Metadata(), { deadline: Date.now() + 5000 })
    let n = 0
    call.on('data', (m: EchoMsg) => {
      if (m.count !== n * 2) call.cancel()
      if (++n < 30) call.write({ text: 'x', count: n })
      else call.end()
    })
    call.on('error', () => {})
    call.on('status', (s: grpc.StatusObject) => { resolve({ n, code: s.code }) })
    call.write({ text: 'x', count: 0 })
  })
  t.same(rounds, { n: 30, code: grpc.status.OK }, '30 round trips on one bidirectional call, each answered before the next was sent')
})

test('an upstream\'s own gRPC error reaches the client as it sent it', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const gw = await grpcGateway(t, { targets: [a.url] })
  const client = echoClient(t, gw.address)
  const r = await unary(client, { text: 'fail' })
  t.equal(r.err?.code, grpc.status.INVALID_ARGUMENT)
  t.equal(r.err?.details, 'bad text from a')
  const raw = await rawCall(gw.address, '/echo.Echo/Unary', {}, frame('fail'))
  t.equal(raw.head['grpc-status'], '3', 'a trailers-only answer of the upstream passes in its head')
  t.ok(raw.endedWithHead, 'and ends with it, in one frame, as the upstream sent it')
  const stats = gw.app.sssonector.upstream('g').stats().targets[0]
  t.ok(stats.available && stats.health.length === 0, 'an application error is not the target\'s failure')
  t.same(stats.breaker?.failed, 0, 'nor counted by its breaker')
})

test('when the gateway fails a call, the client reads a gRPC status in a trailers-only answer', async (t) => {
  const dead = await refusedPort()
  const gw = await grpcGateway(t, { targets: [`http://127.0.0.1:${dead}`], pool: { maxRetries: 1 } })
  const client = echoClient(t, gw.address)
  const r = await unary(client, { text: 'hi' })
  t.equal(r.err?.code, grpc.status.UNAVAILABLE, 'a target that refuses connections: UNAVAILABLE')
  t.match(r.err?.details, /connect/i, 'with the gateway\'s reason')
  const raw = await rawCall(gw.address, '/echo.Echo/Unary', {}, frame('hi'))
  t.equal(raw.head[':status'], 200, 'HTTP 200, as gRPC answers carry their status apart')
  t.equal(raw.head['content-type'], 'application/grpc')
  t.equal(raw.head['grpc-status'], '14')
  t.ok(raw.endedWithHead, 'trailers-only: the head ends the stream')
  t.match(raw.head['x-sssonector-error'], /^FST_SSSONECTOR_(UPSTREAM_CONNECT|NO_TARGET)$/, `the gateway's error code rides along (${String(raw.head['grpc-message'])})`)

  const empty = await grpcGateway(t, { targets: [] })
  const none = await unary(echoClient(t, empty.address), { text: 'hi' })
  t.equal(none.err?.code, grpc.status.UNAVAILABLE, 'no target at all: UNAVAILABLE')

  const slow = await startGrpcServer(t, 'slow')
  const timed = await grpcGateway(t, { targets: [slow.url], timeouts: { headers: 150 } })
  const started = Date.now()
  const late = await unary(echoClient(t, timed.address), { text: 'slow1500' })
  t.equal(late.err?.code, grpc.status.DEADLINE_EXCEEDED, 'the gateway\'s own headers timeout: DEADLINE_EXCEEDED')
  t.ok(Date.now() - started < 1200, `ended by the gateway in ${Date.now() - started} ms, before the server's 1500`)

  const full = await grpcGateway(t, { targets: [slow.url], pool: { maxActive: 1, maxQueue: 0 } })
  const fullClient = echoClient(t, full.address)
  const holding = unary(fullClient, { text: 'slow400' })
  await eventually(() => full.app.sssonector.upstream('g').stats().active >= 1)
  const shed = await unary(fullClient, { text: 'hi' })
  t.equal(shed.err?.code, grpc.status.UNAVAILABLE, 'shed at capacity: UNAVAILABLE')
  t.equal((await holding).err, null, 'the call in flight went on')
})

test('grpc-timeout bounds the call at the gateway: DEADLINE_EXCEEDED, and the target is not blamed', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const gw = await grpcGateway(t, { targets: [a.url] })
  // Node's client sends the header and waits: only the gateway enforces it.
  const raw = await rawCall(gw.address, '/echo.Echo/Unary', { 'grpc-timeout': '200m' }, frame('slow2000'))
  t.equal(raw.head['grpc-status'], '4', 'DEADLINE_EXCEEDED')
  t.ok(raw.ms >= 180 && raw.ms < 1500, `after ${raw.ms} ms (grpc-timeout 200m, the server would take 2000)`)
  t.equal(raw.head['x-sssonector-error'], 'FST_SSSONECTOR_DEADLINE')
  const target = gw.app.sssonector.upstream('g').stats().targets[0]
  t.ok(target.available && target.health.length === 0, 'the client\'s own deadline is not the target\'s failure')
  t.same(target.breaker?.failed, 0, 'nor counted by its breaker')

  const fast = await rawCall(gw.address, '/echo.Echo/Unary', { 'grpc-timeout': '5S' }, frame('quick'))
  t.equal(fast.trailers?.['grpc-status'], '0', 'a call within its grpc-timeout ends OK')
  t.ok(fast.data.length > 5, 'with its message')

  // The client library's own deadline travels as grpc-timeout too.
  const client = echoClient(t, gw.address)
  const r = await unary(client, { text: 'slow2000' }, { deadline: Date.now() + 300 })
  t.equal(r.err?.code, grpc.status.DEADLINE_EXCEEDED)
})

test('a target killed under streaming calls: its calls end UNAVAILABLE, not retried; the others finish; new calls fail over', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const b = await startGrpcServer(t, 'b')
  // least-request: it sends the next calls to a at once, so a's failed connects take it out and
  // its restart is tried within retryInterval. Peak EWMA (the default) does not pick a again until
  // the failure penalty of its reset calls has decayed, seconds later (test/peak-ewma-gateway.test.ts).
  const gw = await grpcGateway(t, { targets: [a.url, b.url], balance: 'least-request', pool: { retryInterval: 100, maxRetryInterval: 200 } })
  const client = echoClient(t, gw.address)
  // 16 calls of 40 messages 25 ms apart (1 s each); a is killed once each call has 3 messages.
  let ready = 0
  let killed = false
  const calls = Array.from({ length: 16 }, async () => await serverStream(client, { count: 40, text: '25' }, {}, (_m, n) => {
    if (n === 3 && ++ready === 16 && !killed) {
      killed = true
      a.signal('SIGKILL')
    }
  }))
  const results = await Promise.all(calls)
  await a.exited
  const onA = results.filter((r) => r.messages[0]?.from === 'a')
  const onB = results.filter((r) => r.messages[0]?.from === 'b')
  t.ok(onA.length > 0 && onB.length > 0, `calls ran on both (a: ${onA.length}, b: ${onB.length})`)
  t.ok(onB.every((r) => r.status.code === grpc.status.OK && r.messages.length === 40), 'every call on b finished whole')
  t.ok(onA.every((r) => r.status.code === grpc.status.UNAVAILABLE), `every call on a ended UNAVAILABLE (got ${[...new Set(onA.map((r) => `${r.status.code} ${r.status.details}`))].join('; ')})`)
  t.ok(onA.every((r) => r.messages.length >= 3 && r.messages.length < 40 && r.messages.every((m) => m.from === 'a')), 'with the messages a sent before it died, and none from elsewhere: not retried')

  const after = await Promise.all(Array.from({ length: 20 }, async () => await unary(client, { text: 'after' })))
  t.same(after.filter((c) => c.err !== null).map((c) => c.err?.details), [], 'every call after the kill succeeded')
  t.ok(after.every((c) => c.res?.from === 'b'), 'on b')
  const stats = gw.app.sssonector.upstream('g').stats().targets.find((x) => x.url === a.url)!
  t.notOk(stats.available, `a is out of rotation (${stats.health.map((h) => h.cause).join(',')})`)

  // a comes back on its port: its trial succeeds and it takes calls again.
  await startGrpcServer(t, 'a2', { port: a.port })
  const back = await (async () => {
    for (let i = 0; i < 200; i++) {
      const r = await unary(client, { text: 'back' })
      if (r.res?.from === 'a2') return i
    }
    return -1
  })()
  t.ok(back >= 0, `a restarted took calls again after ${back} calls`)
})

test('a target shut down gracefully (GOAWAY) finishes its calls; new ones go elsewhere', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const b = await startGrpcServer(t, 'b')
  const gw = await grpcGateway(t, { targets: [a.url, b.url] })
  const client = echoClient(t, gw.address)
  let ready = 0
  let stopped = false
  const calls = Array.from({ length: 12 }, async () => await serverStream(client, { count: 30, text: '20' }, {}, (_m, n) => {
    if (n === 2 && ++ready === 12 && !stopped) {
      stopped = true
      a.signal('SIGTERM')
    }
  }))
  // Meanwhile, unary calls keep coming.
  const unaryFailed: string[] = []
  let unaryDone = 0
  const loops = Array.from({ length: 4 }, async () => {
    for (let i = 0; i < 40; i++) {
      const r = await unary(client, { text: 'u' })
      if (r.err !== null) unaryFailed.push(`${r.err.code} ${r.err.details}`)
      unaryDone++
    }
  })
  const results = await Promise.all(calls)
  await Promise.all(loops)
  t.ok(results.some((r) => r.messages[0]?.from === 'a'), 'some streams ran on a')
  t.same(results.filter((r) => r.status.code !== grpc.status.OK || r.messages.length !== 30).map((r) => `${r.messages[0]?.from}:${r.status.code}:${r.messages.length}`), [], 'every stream finished whole, those on a included')
  t.same(unaryFailed, [], `none of ${unaryDone} unary calls failed while a went away`)
  await a.exited
})

test('gRPC health checks (grpc.health.v1): NOT_SERVING takes a target out, calls go to the others', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const b = await startGrpcServer(t, 'b')
  const gw = await grpcGateway(t, {
    targets: [a.url, b.url],
    healthCheck: { grpc: '', interval: 100, healthyThreshold: 1, unhealthyThreshold: 1, timeout: 500 }
  })
  // (listen() waited for the first round of checks)
  const up = gw.app.sssonector.upstream('g')
  const statsOf = (url: string): { available: boolean, health: Array<{ cause: string }> } => up.stats().targets.find((x) => x.url === url)!
  t.ok(statsOf(a.url).available, 'both SERVING: a in rotation')
  const healthy = await h2get(gw.url, '/metrics')
  t.equal(value(healthy, 'sssonector_target_healthy', { upstream: 'g', target: a.url }), 1)
  a.signal('SIGUSR2')
  // (the active check's own timer moves it; no event to await: checked each turn, bounded by tap's timeout)
  await eventually(() => statsOf(a.url).health.some((h) => h.cause === 'active_health'))
  t.ok(statsOf(a.url).health.some((h) => h.cause === 'active_health'), 'a answering NOT_SERVING left rotation (active_health)')
  const client = echoClient(t, gw.address)
  const calls = await Promise.all(Array.from({ length: 10 }, async () => await unary(client, { text: 'hi' })))
  t.ok(calls.every((c) => c.err === null && c.res?.from === 'b'), 'every call went to b')
  const metrics = await h2get(gw.url, '/metrics')
  t.equal(value(metrics, 'sssonector_target_healthy', { upstream: 'g', target: a.url }), 0, 'and the metric says so')
})

test('gRPC over TLS end to end: an https http2 gateway, TLS gRPC servers behind it', async (t) => {
  const a = await startGrpcServer(t, 'a', { tls: true })
  const gw = await grpcGateway(t, { targets: [a.url], tls: { ca: cert.toString() } }, {}, true)
  const client = echoClient(t, gw.address, grpc.credentials.createSsl(cert))
  const r = await unary(client, { text: 'secure' })
  t.equal(r.err, null, `the call succeeded (${r.err?.details ?? ''})`)
  t.equal(r.res?.from, 'a')
  const s = await serverStream(client, { count: 10 })
  t.equal(s.status.code, grpc.status.OK)
  t.equal(s.messages.length, 10)
})

test('HTTP/1.1 upstreams cannot carry gRPC: the route says so with a status, not a hang', async (t) => {
  const a = await startGrpcServer(t, 'a')
  const gw = await grpcGateway(t, { targets: [a.url], protocol: 'http1', pool: { maxRetries: 0 } })
  const client = echoClient(t, gw.address)
  const r = await unary(client, { text: 'hi' }, { deadline: Date.now() + 3000 })
  t.not(r.err, null, 'the call failed')
  t.not(r.err?.code, grpc.status.DEADLINE_EXCEEDED, `with a status of the gateway's (${r.err?.code}: ${r.err?.details}), not by the deadline`)
})

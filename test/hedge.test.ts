import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import { EventEmitter } from 'node:events'
import type http from 'node:http'
import { request } from 'undici'
import sssonectorPool from '../lib/index.js'
import { resolveOptions } from '../lib/options/index.js'
import { Hedging, HEDGE_MIN_SAMPLES, HEDGE_RESERVE } from '../lib/hedge-policy.js'
import type { HedgeWaiter } from '../lib/hedge-policy.js'
import { RollingWindow } from '../lib/rolling-window.js'
import type { SssonectorOptions, UpstreamStats } from '../types/index.js'
import { startGateway, startUpstream, until } from './helpers/servers.js'
import type { Gateway, Upstream } from './helpers/servers.js'
import { scrape, value } from './helpers/scrape.js'

/**
 * Two upstreams sharing one log of arrivals by request id (`x-id`): the n-th
 * arrival of a request (1: its first attempt, 2: its hedge) is held `x-hold-n`
 * ms (`forever`: never answered) or its connection reset after `x-reset-n` ms, every arrival at upstream `a` `x-hold-a`
 * ms, and answered `x-status-n` (200 by default), with who answered and what
 * it read.
 */
interface Pair {
  a: Upstream
  b: Upstream
  arrivals: Map<string, number>
  /** Emits 'arrival' on each. */
  events: EventEmitter
  total: () => number
}

async function startPair (t: Test): Promise<Pair> {
  const arrivals = new Map<string, number>()
  const events = new EventEmitter()
  let total = 0
  const handler = (name: string) => (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void => {
    const id = String(req.headers['x-id'])
    const n = (arrivals.get(id) ?? 0) + 1
    arrivals.set(id, n)
    total++
    events.emit('arrival')
    const hold = (req.headers[`x-hold-${n}`] ?? req.headers[`x-hold-${name}`]) as string | undefined
    const status = Number(req.headers[`x-status-${n}`] ?? 200)
    const send = (): void => {
      if (res.destroyed) return
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ from: name, n, body: body.toString() }))
    }
    const reset = req.headers[`x-reset-${n}`] as string | undefined
    if (reset !== undefined) {
      setTimeout(() => { req.socket.destroy() }, Number(reset))
      return
    }
    if (hold === 'forever') return
    if (hold === undefined) send()
    else setTimeout(send, Number(hold))
  }
  const a = await startUpstream(t, handler('a'))
  const b = await startUpstream(t, handler('b'))
  return { a, b, arrivals, events, total: () => total }
}

function options (pair: Pair, hedge: unknown, extra: Record<string, unknown> = {}): SssonectorOptions {
  return {
    upstreams: { u: { targets: [pair.a.url, pair.b.url], balance: 'round-robin', hedge, ...extra } as never },
    routes: [{ prefix: '/', upstream: 'u' }]
  }
}

let ids = 0

async function get (gw: Gateway, headers: Record<string, string> = {}, method = 'GET', body?: string): Promise<{ status: number, json: { from: string, n: number, body: string } }> {
  const res = await request(`${gw.url}/x`, { method: method as 'GET', headers: { 'x-id': String(++ids), ...headers }, body, dispatcher: gw.agent })
  const text = await res.body.text()
  return { status: res.statusCode, json: JSON.parse(text) }
}

function statsOf (gw: Gateway): UpstreamStats {
  return gw.app.sssonector.upstream('u').stats()
}

t.test('a stalled first attempt is hedged to another target after the delay; the first answer wins, the loser is cancelled, its connection closed and not reused, its target not blamed', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, { ...options(pair, { delay: 100 }), status: { path: '/status' } })
  // round-robin: the first attempt goes to a, the hedge to the other target, b
  const r = await get(gw, { 'x-hold-1': 'forever' })
  t.equal(r.status, 200)
  t.same(r.json, { from: 'b', n: 2, body: '' }, 'the hedge\'s answer, from the other target')
  await pair.a.socketsAtMost(0)
  t.pass('the loser\'s connection to a was closed')
  const s = statsOf(gw)
  t.same(s.hedges, { sent: 1, won: 1, cancelled: 1, denied: 0 })
  const [ta, tb] = s.targets
  t.same(ta.errors, {}, 'no failure counted against the loser\'s target')
  t.equal(ta.window.attempts, 0, 'nor an attempt in its window')
  t.equal(ta.breaker?.failed, 0)
  t.equal(ta.busy, 0, 'no connection of a still in use')
  t.equal(tb.window.answers['2xx'], 1)

  // The next request goes to a again: on a new connection.
  const next = await get(gw)
  t.equal(next.json.from, 'a')
  t.equal(pair.a.accepted, 2, 'a new connection to a: the cancelled one was not reused')
  const again = await get(gw)
  t.equal(again.json.from, 'b')
  t.equal(pair.b.accepted, 1, 'the winner\'s connection to b went back to the pool and was reused')
  t.same(statsOf(gw).hedges, { sent: 1, won: 1, cancelled: 1, denied: 0 }, 'fast answers are not hedged')

  const metrics = await scrape(`${gw.url}/metrics`, gw.agent)
  for (const [event, n] of [['sent', 1], ['won', 1], ['cancelled', 1], ['denied', 0]] as const) {
    t.equal(value(metrics, 'sssonector_hedges_total', { upstream: 'u', event }), n, `hedges_total{event="${event}"}`)
  }
  const page = await request(`${gw.url}/status`, { headers: { accept: 'text/html' }, dispatcher: gw.agent })
  t.match(await page.body.text(), 'hedges: 1 sent, 1 won, 1 cancelled, 0 denied', 'on the status page')
})

t.test('the loser\'s time so far raises its target\'s peak-EWMA estimate (a bound from below), so the next requests go to the winner\'s; nothing else is counted against it', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 80 }, { balance: 'peak-ewma' }))
  // both targets timed on fast answers first
  for (let i = 0; i < 6; i++) await get(gw)
  const before = statsOf(gw).targets
  t.ok(before.every((x) => x.score !== null && x.score.estimate < 40), `both estimates fast before the stall (${before.map((x) => x.score?.estimate.toFixed(1)).join(', ')} ms)`)
  const r = await get(gw, { 'x-hold-1': 'forever' })
  t.equal(r.json.n, 2, 'the hedge answered')
  const loser = r.json.from === 'a' ? 1 : 0
  const winner = 1 - loser
  const s = statsOf(gw)
  t.same(s.hedges, { sent: 1, won: 1, cancelled: 1, denied: 0 })
  t.ok(s.targets[loser]!.score!.estimate >= 80, `the loser's target is estimated at its attempt's time at least (${s.targets[loser]!.score!.estimate.toFixed(1)} ms, the delay 80)`)
  t.equal(s.targets[loser]!.score!.penalty, 0, 'not a failure: no penalty')
  t.same(s.targets[loser]!.errors, {}, 'no error counted')
  t.equal(s.targets[loser]!.window.attempts, before[loser]!.window.attempts, 'its window holds its answered attempts alone')
  const next = await get(gw)
  t.equal(next.json.from, winner === 0 ? 'a' : 'b', 'the next request goes to the winner\'s target')
})

t.test('the first attempt answering first wins: the hedge is cancelled and its connection closed', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }))
  const r = await get(gw, { 'x-hold-1': '60', 'x-hold-2': 'forever' })
  t.same(r.json, { from: 'a', n: 1, body: '' })
  await pair.b.socketsAtMost(0)
  t.same(statsOf(gw).hedges, { sent: 1, won: 0, cancelled: 1, denied: 0 })
  t.same(statsOf(gw).targets[1].errors, {}, 'the hedge\'s target is not blamed')
})

t.test('a retriable 5xx of the first attempt while the hedge runs is set aside: the hedge answers, no third attempt', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }))
  const r = await get(gw, { 'x-hold-1': '40', 'x-status-1': '503', 'x-hold-2': '120' })
  t.equal(r.status, 200)
  t.same(r.json, { from: 'b', n: 2, body: '' })
  t.equal(pair.total(), 2, 'two attempts')
  const s = statsOf(gw)
  t.same(s.hedges, { sent: 1, won: 1, cancelled: 0, denied: 0 })
  t.equal(s.targets[0].window.answers['5xx'], 1, 'the 503 is its target\'s')
})

t.test('the first attempt failing while the hedge runs: the hedge goes on alone and answers; the failure is its target\'s', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }))
  const r = await get(gw, { 'x-reset-1': '40', 'x-hold-2': '120' })
  t.same(r.json, { from: 'b', n: 2, body: '' })
  t.equal(pair.total(), 2, 'no third attempt')
  const s = statsOf(gw)
  t.same(s.hedges, { sent: 1, won: 1, cancelled: 0, denied: 0 })
  t.same(s.targets[0].errors, { reset: 1 })
})

t.test('with no other target to take it, no hedge', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, { upstreams: { u: { targets: [pair.a.url], hedge: { delay: 5 } } }, routes: [{ prefix: '/', upstream: 'u' }] })
  const r = await get(gw, { 'x-hold-1': '40' })
  t.same([r.json.from, r.json.n], ['a', 1])
  t.same(statsOf(gw).hedges, { sent: 0, won: 0, cancelled: 0, denied: 0 })
})

t.test('the client leaving ends both attempts: both connections closed, neither target blamed, nothing counted cancelled', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }))
  const ac = new AbortController()
  const sent = request(`${gw.url}/x`, { headers: { 'x-id': 'leave', 'x-hold-1': 'forever', 'x-hold-2': 'forever' }, dispatcher: gw.agent, signal: ac.signal })
  await until(pair.events, 'arrival', () => pair.total() >= 2)
  ac.abort()
  await t.rejects(sent)
  await pair.a.socketsAtMost(0)
  await pair.b.socketsAtMost(0)
  await gw.closedCount(1)
  const s = statsOf(gw)
  t.same(s.hedges, { sent: 1, won: 0, cancelled: 0, denied: 0 })
  t.same(s.targets.map((x) => x.errors), [{}, {}])
  t.equal(s.active, 0)
})

t.test('timeouts.request ends both attempts: 504, both connections closed', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }, { timeouts: { request: 150 } }))
  const res = await request(`${gw.url}/x`, { headers: { 'x-id': 'late', 'x-hold-1': 'forever', 'x-hold-2': 'forever' }, dispatcher: gw.agent })
  await res.body.text()
  t.equal(res.statusCode, 504)
  t.equal(pair.total(), 2, 'the first attempt and its hedge')
  await pair.a.socketsAtMost(0)
  await pair.b.socketsAtMost(0)
  t.same(statsOf(gw).hedges, { sent: 1, won: 0, cancelled: 0, denied: 0 })
})

t.test('non-idempotent requests are never hedged', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }))
  const post = await get(gw, { 'x-hold-1': '60' }, 'POST', 'order')
  t.same(post.json, { from: 'a', n: 1, body: 'order' }, 'answered by its one attempt, 60 ms after a 5 ms delay')
  const patch = await get(gw, { 'x-hold-1': '60' }, 'PATCH', 'x')
  t.equal(patch.json.n, 1)
  t.equal(pair.total(), 2, 'no second attempt reached an upstream')
  t.same(statsOf(gw).hedges, { sent: 0, won: 0, cancelled: 0, denied: 0 })
})

t.test('a request body is hedged only when it was buffered (within retry.bufferBody); the hedge sends it whole', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5 }, { retry: { bufferBody: 16 } }))
  const small = await get(gw, { 'x-hold-1': 'forever' }, 'PUT', 'twelve bytes')
  t.same(small.json, { from: 'b', n: 2, body: 'twelve bytes' }, 'hedged, with its body')
  const big = await get(gw, { 'x-hold-1': '60' }, 'PUT', 'x'.repeat(100))
  t.same(big.json, { from: 'a', n: 1, body: 'x'.repeat(100) }, 'a streamed body: its one attempt answered')
  t.same(statsOf(gw).hedges, { sent: 1, won: 1, cancelled: 1, denied: 0 })
})

t.test('the budget caps hedges: one in reserve at start, then budget percent of the requests', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 5, budget: 20 }))
  const n = 20
  for (let i = 0; i < n; i++) {
    const r = await get(gw, { 'x-hold-1': '30' })
    t.equal(r.status, 200)
  }
  const h = statsOf(gw).hedges!
  t.equal(h.sent + h.denied, n, 'each request\'s first attempt outlasted the delay: a hedge sent or denied')
  t.equal(h.sent, 1 + n * 20 / 100, 'one from the reserve, then one per five requests (20%)')
  // (a first attempt cancelled while its connection was still opening never reached its upstream)
  t.ok(pair.total() <= n + h.sent, `the upstreams saw one extra request per hedge at most (${pair.total()} for ${n} requests)`)
})

t.test('a hedge the budget has no room for waits in line while its first attempt runs: the next room goes to it', async (t) => {
  const pair = await startPair(t)
  // 10%: each request adds a tenth of a hedge; one hedge at start.
  const gw = await startGateway(t, options(pair, { delay: 5, budget: 10 }))
  const r1 = await get(gw, { 'x-hold-1': '30' })
  t.equal(r1.json.n, 2, 'the first slow request takes the hedge in reserve (a tenth of one left, and this one\'s tenth)')
  // Stalled for good: its hedge at 5 ms finds two tenths, and waits in line.
  const stuck = request(`${gw.url}/x`, { headers: { 'x-id': String(++ids), 'x-hold-1': 'forever' }, dispatcher: gw.agent, headersTimeout: 5_000 })
  // Started after it, its first attempt answers at 30 ms: by then the stalled one's 5 ms are long over (one process, timers in order).
  const slow = await get(gw, { 'x-hold-1': '30' })
  t.equal(slow.json.n, 1, 'no room for this one either: answered by its first attempt')
  t.same(statsOf(gw).hedges, { sent: 1, won: 1, cancelled: 1, denied: 1 }, 'it ended in line: denied; the stalled one still waits')
  // Seven quick requests make the room for one hedge (3 + 7 tenths): it goes to the oldest in line.
  for (let i = 0; i < 7; i++) t.equal((await get(gw)).json.n, 1)
  const res = await stuck
  const body = JSON.parse(await res.body.text())
  t.equal(body.n, 2, `the stalled request was answered by its hedge (from ${body.from})`)
  t.same(statsOf(gw).hedges, { sent: 2, won: 2, cancelled: 2, denied: 1 })
})

t.test("a percentile delay ('p95') reads the first attempt's target's recent latency", async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, { delay: 'p95' }))
  const r0 = await get(gw, { 'x-hold-1': '40' })
  t.equal(r0.json.n, 1, 'with no latency known yet, no hedge')
  t.equal(r0.json.from, 'a')
  // 41 at once, round-robin: 20 to b (fast), 21 to a, which answers them after 150 ms; the next goes to a.
  const warm = await Promise.all(Array.from({ length: 41 }, () => get(gw, { 'x-hold-a': '150' })))
  t.same(new Set(warm.map((w) => w.json.n)), new Set([1]), 'no hedge while warming up')
  const s = statsOf(gw)
  t.ok(s.targets[0].window.p50! >= 100, `a's latency is high (p50 ${s.targets[0].window.p50} ms)`)
  // To a, held 40 ms: a's p95 is about 150 ms, so no hedge.
  const slowOnA = await get(gw, { 'x-hold-1': '40' })
  t.same([slowOnA.json.from, slowOnA.json.n], ['a', 1], 'not hedged: under a\'s p95')
  // To b, held for good: b's p95 is a few ms, so hedged to a.
  const stuckOnB = await get(gw, { 'x-hold-1': 'forever' })
  t.same([stuckOnB.json.from, stuckOnB.json.n], ['a', 2], 'hedged after b\'s p95')
  t.same(statsOf(gw).hedges, { sent: 1, won: 1, cancelled: 1, denied: 0 })
})

t.test('hedging off: nothing is hedged, stats say null', async (t) => {
  const pair = await startPair(t)
  const gw = await startGateway(t, options(pair, false))
  const r = await get(gw, { 'x-hold-1': '30' })
  t.equal(r.json.n, 1)
  t.equal(statsOf(gw).hedges, null)
  const metrics = await scrape(`${gw.url}/metrics`, gw.agent)
  t.equal(value(metrics, 'sssonector_hedges_total', { upstream: 'u', event: 'sent' }), undefined, 'no series')
})

t.test('the budget and the delay, as pure policy', async (t) => {
  const h = new Hedging({ delay: 7, quantile: null, budget: 50, methods: new Set(['GET']) })
  const latency = { latencyQuantile: () => { throw new Error('not read for a fixed delay') } }
  const served: string[] = []
  /** A request in line: when room comes it sends its hedge (spends), unless it has ended. */
  const waiter = (name: string, ended = false): HedgeWaiter => ({ hedgeFromLine: () => { served.push(name); if (!ended) h.spend() } })
  const turn = async (): Promise<void> => { await Promise.resolve() }
  t.equal(h.delayFor(latency), 7)
  // 100 (reserve at start) + 50
  t.ok(h.allows())
  h.spend()
  t.notOk(h.allows(), '50 hundredths left')
  h.wait(waiter('b'))
  h.wait(waiter('c'))
  t.equal(h.waiting, 2)
  h.delayFor(latency)
  t.same(served, [], 'room made, but not from inside the call that made it')
  await turn()
  t.same(served, ['b'], 'the room went to the oldest in line')
  h.delayFor(latency)
  h.delayFor(latency)
  t.notOk(h.allows(), 'room for one, but c was first')
  h.wait(waiter('d'))
  await turn()
  t.same(served, ['b', 'c'], 'c served, d still waits')
  t.equal(h.waiting, 1)
  h.wait(waiter('e', true))
  const left = h.wait(waiter('f'))
  left.waiter = null // its request ended in line
  for (let i = 0; i < 4; i++) h.delayFor(latency)
  await turn()
  t.same(served, ['b', 'c', 'd', 'e'], 'd served; e no longer wanted it and f had left, so the room is still there')
  t.equal(h.waiting, 0, 'the line is empty')
  for (let i = 0; i < 100; i++) h.delayFor(latency)
  let spent = 0
  while (h.allows()) {
    h.spend()
    spent++
  }
  t.equal(spent, HEDGE_RESERVE, 'a long quiet spell keeps HEDGE_RESERVE hedges at most')
  t.same(h.stats(), { sent: 3 + 1 + HEDGE_RESERVE, won: 0, cancelled: 0, denied: 0 }, 'denied is the request\'s to count, when it ends still in line')
  const p = new Hedging({ delay: 0, quantile: 0.95, budget: 5, methods: new Set(['GET']) })
  t.equal(p.delayFor({ latencyQuantile: (q, min) => q === 0.95 && min === HEDGE_MIN_SAMPLES ? 12 : null }), 12)
})

t.test('the window\'s quantile: null below the minimum, then read once a second', async (t) => {
  let now = 10_000
  const w = new RollingWindow(() => now)
  for (let i = 0; i < 19; i++) w.record(1, false, 2)
  t.equal(w.quantile(0.95, 20), null, '19 attempts: too few')
  w.record(1, false, 100)
  t.equal(w.quantile(0.95, 20), 2, '20 attempts: the 95th is 2 ms (bucket bound)')
  t.equal(w.quantile(0.99, 20), 100, 'the 99th: the slow one')
  for (let i = 0; i < 50; i++) w.record(1, false, 100)
  t.equal(w.quantile(0.99, 20), 100)
  t.equal(w.quantile(0.95, 20), 100, 'another quantile is read anew')
  now += 9_000
  t.equal(w.quantile(0.95, 20), 100, '9 s later the same attempts count')
  now += 1_000
  t.equal(w.quantile(0.95, 20), null, '10 s later they no longer do (the minute\'s snapshot still has them)')
  t.equal(w.snapshot().attempts, 70)
})

t.test('hedge options are validated', async (t) => {
  const base = (hedge: unknown): unknown => ({ upstreams: { u: { targets: ['http://127.0.0.1:1'], hedge } }, gracefulClose: false })
  const bad: Array<[unknown, RegExp]> = [
    [true, /^upstreams\.u\.hedge: true is not an object/],
    [{ delay: 'p100' }, /^upstreams\.u\.hedge\.delay: "p100" is not a percentile between p0 and p100/],
    [{ delay: 'p0' }, /^upstreams\.u\.hedge\.delay: "p0" is not a percentile/],
    [{ delay: 'fast' }, /^upstreams\.u\.hedge\.delay: "fast" is not a duration/],
    [{ delay: 0 }, /^upstreams\.u\.hedge\.delay: 0 must be longer than 0/],
    [{ budget: 0 }, /^upstreams\.u\.hedge\.budget: 0 must be more than 0/],
    [{ budget: 101 }, /^upstreams\.u\.hedge\.budget: 101 is not between 0 and 100/],
    [{ budget: '5' }, /^upstreams\.u\.hedge\.budget: "5" is not a number/],
    [{ dealy: 5 }, /^upstreams\.u\.hedge\.dealy: unknown option \(allowed: delay, budget\)/]
  ]
  for (const [hedge, message] of bad) {
    const app = Fastify({ logger: false })
    const err = await app.register(sssonectorPool, base(hedge) as SssonectorOptions).then(() => null, (e: Error & { code?: string }) => e)
    t.equal(err?.code, 'FST_SSSONECTOR_OPTIONS', `${JSON.stringify(hedge)} fails register`)
    t.match(err?.message, message)
    await app.close()
  }
  const resolved = (hedge: unknown, extra: Record<string, unknown> = {}) => resolveOptions({ upstreams: { u: { targets: [], hedge, ...extra } } }).upstreams[0].hedge
  t.equal(resolved(undefined), null, 'off by default')
  t.equal(resolved(false), null)
  t.match(resolved({}), { delay: 0, quantile: 0.95, budget: 5 }, "defaults: 'p95', 5%")
  t.match(resolved({ delay: '250ms', budget: 1.5 }), { delay: 250, quantile: null, budget: 1.5 })
  t.match(resolved({ delay: 'p99.9' }), { quantile: 0.999 })
  t.same([...resolved({}, { retry: { methods: ['GET'] } })!.methods], ['GET'], 'the retry policy\'s methods')
  t.same([...resolved({}, { retry: false })!.methods], ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'], 'retry off: the idempotent methods')
  t.throws(() => resolveOptions({ upstreams: { u: { targets: [] } }, hedge: {} }), /^hedge: unknown option/, 'per upstream only')
})

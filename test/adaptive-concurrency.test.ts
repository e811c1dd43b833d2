import t from 'tap'
import { EventEmitter, once } from 'node:events'
import { request } from 'undici'
import { resolveOptions } from '../lib/options/index.js'
import { registerFails, startGateway, startUpstream } from './helpers/servers.js'
import { scrape, value } from './helpers/scrape.js'
import type { Teardown, Upstream } from './helpers/servers.js'

// ---------------------------------------------------------------- options

const ok = { upstreams: { users: { targets: ['http://127.0.0.1:1'] } }, gracefulClose: false as const }

const bad: Array<[string, unknown, RegExp]> = [
  ['not an object', { ...ok, adaptiveConcurrency: true }, /^adaptiveConcurrency: true is not an object/],
  ['unknown key', { ...ok, adaptiveConcurrency: { window: '1s' } }, /^adaptiveConcurrency\.window: unknown option \(allowed: sampleWindow, percentile/],
  ['sampleWindow 0', { ...ok, adaptiveConcurrency: { sampleWindow: 0 } }, /^adaptiveConcurrency\.sampleWindow: 0 must be longer than 0/],
  ['minRttInterval not a duration', { ...ok, adaptiveConcurrency: { minRttInterval: 'hourly' } }, /^adaptiveConcurrency\.minRttInterval: "hourly" is not a duration/],
  ['percentile 0', { ...ok, adaptiveConcurrency: { percentile: 0 } }, /^adaptiveConcurrency\.percentile: 0 is not between 1 and 100/],
  ['jitter over 100', { ...ok, adaptiveConcurrency: { jitter: 150 } }, /^adaptiveConcurrency\.jitter: 150 is not between 0 and 100/],
  ['minRttBuffer negative', { ...ok, adaptiveConcurrency: { minRttBuffer: -5 } }, /^adaptiveConcurrency\.minRttBuffer: -5 is not between 0 and 1000/],
  ['minRttRequests 0', { ...ok, adaptiveConcurrency: { minRttRequests: 0 } }, /^adaptiveConcurrency\.minRttRequests: 0 is not between 1 and 100000/],
  ['minLimit not an integer', { ...ok, adaptiveConcurrency: { minLimit: 2.5 } }, /^adaptiveConcurrency\.minLimit: 2\.5 is not an integer/],
  ['in an upstream', { upstreams: { users: { targets: [], adaptiveConcurrency: { maxLimit: 0 } } } }, /^upstreams\.users\.adaptiveConcurrency\.maxLimit: 0 is less than 1/],
  ['maxLimit over pool.maxActive', { ...ok, pool: { maxActive: 50 }, adaptiveConcurrency: { maxLimit: 100 } }, /^upstreams\.users\.adaptiveConcurrency\.maxLimit: 100 is more than pool\.maxActive \(50\)/],
  ['minLimit over maxLimit', { ...ok, adaptiveConcurrency: { minLimit: 20, maxLimit: 10 } }, /^upstreams\.users\.adaptiveConcurrency\.minLimit: 20 is more than adaptiveConcurrency\.maxLimit \(10\)/]
]

for (const [name, options, message] of bad) {
  t.test(`bad adaptiveConcurrency fails register, naming path and value: ${name}`, async (t) => {
    await registerFails(t, options, message)
  })
}

t.test('adaptiveConcurrency: off by default; {} takes the defaults (maxLimit: pool.maxActive); the top level merges under an upstream key by key; false turns it off', async (t) => {
  const r = resolveOptions({
    upstreams: {
      plain: { targets: [], adaptiveConcurrency: false },
      on: { targets: [], pool: { maxActive: 200 } },
      tuned: { targets: [], adaptiveConcurrency: { minLimit: 5, sampleWindow: '250ms' } }
    },
    adaptiveConcurrency: { percentile: 90, jitter: 0 }
  })
  const [plain, on, tuned] = r.upstreams
  t.equal(plain.adaptiveConcurrency, null, 'false at the upstream turns the top level\'s off')
  t.same(on.adaptiveConcurrency, { sampleWindow: 100, percentile: 90, minRttInterval: 60000, minRttRequests: 50, jitter: 0, minRttBuffer: 0, minLimit: 3, maxLimit: 200 })
  t.same(tuned.adaptiveConcurrency, { sampleWindow: 250, percentile: 90, minRttInterval: 60000, minRttRequests: 50, jitter: 0, minRttBuffer: 0, minLimit: 5, maxLimit: 1000 })
  const none = resolveOptions({ upstreams: { a: { targets: [] } } })
  t.equal(none.upstreams[0].adaptiveConcurrency, null, 'off unless given')
  const empty = resolveOptions({ upstreams: { a: { targets: [], adaptiveConcurrency: {} } } })
  t.same(empty.upstreams[0].adaptiveConcurrency, { sampleWindow: 100, percentile: 50, minRttInterval: 60000, minRttRequests: 50, jitter: 15, minRttBuffer: 0, minLimit: 3, maxLimit: 1000 })
})

// ---------------------------------------------------------------- a capacity-limited upstream

// A service time well above the event loop's lag on a busy machine, so the upstream's queue is what the latency shows.
const CAPACITY = 2
const SERVICE_MS = 50
const OFFERED = 8 * CAPACITY
/** Answers each client wants; a client refused sends again once the upstream answers another request, up to MAX_TRIES requests. */
const PER_CLIENT = 4
const MAX_TRIES = 200

/**
 * A node:http upstream of a fixed capacity: it serves CAPACITY requests at a
 * time, each in SERVICE_MS, and queues the rest itself (FIFO), so its latency
 * grows with the requests sent to it. `maxInflight` counts every request it
 * holds, served or queued; `served` emits 'served' as each answer goes.
 */
interface CapacityUpstream extends Upstream {
  served: EventEmitter
  /** Requests it holds and has not answered yet. */
  held: number
}

async function capacityUpstream (t: Teardown): Promise<CapacityUpstream> {
  const served = new EventEmitter()
  served.setMaxListeners(0)
  const state = { held: 0 }
  let serving = 0
  const queue: Array<() => void> = []
  const next = (): void => {
    while (serving < CAPACITY && queue.length > 0) {
      serving++
      queue.shift()!()
    }
  }
  const up = await startUpstream(t, async (_req, res) => {
    state.held++
    await new Promise<void>((resolve) => { queue.push(resolve); next() })
    await new Promise((resolve) => setTimeout(resolve, SERVICE_MS))
    serving--
    next()
    res.end('ok')
    state.held--
    served.emit('served')
  })
  // A live count: Object.assign would copy a getter's value once.
  return Object.defineProperties(up, { served: { value: served }, held: { get: () => state.held } }) as CapacityUpstream
}

/**
 * OFFERED clients, each sending one request after another until PER_CLIENT
 * were served (or MAX_TRIES sent); a client refused sends again once the
 * upstream answers another request. The statuses and error codes they got,
 * and, as each answer was read, the limit in stats() and the requests the
 * upstream held.
 */
async function offer (url: string, agent: import('undici').Dispatcher, up: CapacityUpstream, limit: () => number): Promise<{ statuses: Map<number, number>, codes: Map<string, number>, limits: number[], held: number[] }> {
  const statuses = new Map<number, number>()
  const codes = new Map<string, number>()
  const limits: number[] = []
  const held: number[] = []
  await Promise.all(Array.from({ length: OFFERED }, async (_, c) => {
    for (let i = 0, served = 0; served < PER_CLIENT && i < MAX_TRIES; i++) {
      const res = await request(`${url}/c${c}/${i}`, { dispatcher: agent })
      limits.push(limit())
      held.push(up.held)
      if (res.statusCode === 200) served++
      else if (up.held > 0) await once(up.served, 'served')
      const body = await res.body.text()
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      if (res.statusCode === 503) {
        const code = (JSON.parse(body) as { code: string }).code
        codes.set(code, (codes.get(code) ?? 0) + 1)
      }
    }
  }))
  return { statuses, codes, limits, held }
}

/** The median of the values. */
function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

const ADAPTIVE = { sampleWindow: '100ms', minRttRequests: 10, jitter: 0, minLimit: 2 } as const

t.test(`offered ${OFFERED} at once against a capacity of ${CAPACITY}, with no queue: the limit settles below the offered concurrency and the excess gets a fast 503 POOL_EXHAUSTED`, async (t) => {
  const up = await capacityUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { maxQueue: 0 }, retry: false, adaptiveConcurrency: ADAPTIVE }, b: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  const { statuses, codes, limits, held } = await offer(gw.url, gw.agent, up, () => gw.app.sssonector.upstream('a').stats().adaptiveConcurrency!.limit)
  const s = gw.app.sssonector.upstream('a').stats()
  const refused = statuses.get(503) ?? 0
  const served = statuses.get(200) ?? 0
  t.equal(served, OFFERED * PER_CLIENT, 'every client was served in the end')
  t.ok(refused > 0, `${refused} refused`)
  t.same([...codes.keys()], ['FST_SSSONECTOR_POOL_EXHAUSTED'], 'each 503 is POOL_EXHAUSTED')
  t.equal(s.rejected.pool_exhausted, refused, 'counted as refused at admission')
  t.ok(s.adaptiveConcurrency !== null && s.adaptiveConcurrency.limited >= refused, `each refusal found the limit reached (${s.adaptiveConcurrency?.limited} limited)`)
  // A median, not the most: right after a minimum RTT measurement the limit may let a burst through for a window.
  t.ok(median(held) < OFFERED / 2, `the upstream held less than half the ${OFFERED} offered: median ${median(held)}, at most ${up.maxInflight}`)
  t.ok(median(limits) < OFFERED, `the limit settled below the offered concurrency: median ${median(limits)}, last ${s.adaptiveConcurrency!.limit}`)
  t.ok(s.adaptiveConcurrency!.minRtt !== null && s.adaptiveConcurrency!.measurements >= 1, 'the minimum RTT was measured')

  // Visible: the metrics and the status page read the same stats() (nothing moves between them: no request in flight).
  const a = gw.app.sssonector.upstream('a').stats().adaptiveConcurrency!
  const text = await scrape(`${gw.url}/metrics`, gw.agent)
  t.equal(value(text, 'sssonector_adaptive_concurrency_limit', { upstream: 'a' }), a.limit, 'the limit in the metrics')
  t.equal(value(text, 'sssonector_adaptive_concurrency_limited_total', { upstream: 'a' }), a.limited, 'the requests held back in the metrics')
  t.equal(value(text, 'sssonector_adaptive_concurrency_min_rtt_seconds', { upstream: 'a' }), a.minRtt! / 1000, 'the minimum RTT in the metrics, in seconds')
  t.equal(value(text, 'sssonector_adaptive_concurrency_measuring_min_rtt', { upstream: 'a' }), a.measuringMinRtt ? 1 : 0)
  t.equal(value(text, 'sssonector_adaptive_concurrency_limit', { upstream: 'b' }), undefined, 'no series for an upstream without it')
  t.equal(gw.app.sssonector.upstream('b').stats().adaptiveConcurrency, null)
  const html = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
  const section = (name: string): string => html.slice(html.indexOf(`data-upstream="${name}"`), html.indexOf('</h2>', html.indexOf(`data-upstream="${name}"`)))
  t.match(section('a'), `adaptive limit ${a.limit}`, 'the status page shows the limit in the upstream\'s heading')
  t.match(section('a'), `${a.limited} limited`)
  t.notMatch(section('b'), 'adaptive limit', 'and nothing for an upstream without it')
})

t.test(`offered ${OFFERED} at once against a capacity of ${CAPACITY}, with a queue: the excess waits at the gateway, and every request is served`, async (t) => {
  const up = await capacityUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], pool: { queueTimeout: '30s' }, adaptiveConcurrency: ADAPTIVE } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const { statuses, limits, held } = await offer(gw.url, gw.agent, up, () => gw.app.sssonector.upstream('a').stats().adaptiveConcurrency!.limit)
  const s = gw.app.sssonector.upstream('a').stats()
  t.same([...statuses], [[200, OFFERED * PER_CLIENT]], 'all served')
  t.ok(s.adaptiveConcurrency!.limited > 0, `${s.adaptiveConcurrency!.limited} waited for the limit in the queue`)
  t.equal(s.rejected.pool_exhausted, undefined, 'none refused')
  // A median, not the most: right after a minimum RTT measurement the limit may let a burst through for a window.
  t.ok(median(held) < OFFERED / 2, `the upstream held less than half the ${OFFERED} offered: median ${median(held)}, at most ${up.maxInflight}`)
  t.ok(median(limits) < OFFERED, `the limit settled below the offered concurrency: median ${median(limits)}, last ${s.adaptiveConcurrency!.limit}`)
})

t.test('failures are not sampled: 5xx answers leave the minimum RTT unmeasured, answers then measure it', async (t) => {
  let status = 500
  const up = await startUpstream(t, (_req, res) => { res.statusCode = status; res.end('x') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url], retry: false, circuitBreaker: false, outlierDetection: false, adaptiveConcurrency: { minRttRequests: 5 } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const send = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await (await request(`${gw.url}/x`, { dispatcher: gw.agent })).body.dump()
  }
  await send(10)
  let a = gw.app.sssonector.upstream('a').stats().adaptiveConcurrency!
  t.same([a.measuringMinRtt, a.measurements, a.minRtt], [true, 0, null], 'ten 500s: still measuring, nothing measured')
  status = 200
  await send(5)
  a = gw.app.sssonector.upstream('a').stats().adaptiveConcurrency!
  t.same([a.measuringMinRtt, a.measurements], [false, 1], 'five answers: measured')
  t.ok(a.minRtt !== null && a.minRtt > 0, `min RTT ${a.minRtt} ms`)
})

t.test('without adaptiveConcurrency, the same load reaches the upstream whole (the contrast the limit makes)', async (t) => {
  const up = await capacityUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const { statuses, held } = await offer(gw.url, gw.agent, up, () => 0)
  t.same([...statuses], [[200, OFFERED * PER_CLIENT]], 'all served')
  t.equal(gw.app.sssonector.upstream('a').stats().adaptiveConcurrency, null, 'no limit in stats()')
  t.equal(up.maxInflight, OFFERED, `the upstream held all ${OFFERED} at once`)
  t.ok(median(held) >= OFFERED / 2, `and at least half of them most of the time: median ${median(held)}`)
})

import t from 'tap'
import { ConcurrencyLimit } from '../lib/concurrency-limit.js'
import type { ConcurrencyLimitSettings } from '../lib/concurrency-limit.js'
import { seeded } from './helpers/random.js'

const SETTINGS: ConcurrencyLimitSettings = {
  sampleWindow: 100,
  percentile: 50,
  minRttInterval: 60_000,
  minRttRequests: 50,
  jitter: 15,
  minRttBuffer: 25,
  minLimit: 3,
  maxLimit: 1000
}

/** A fixed draw: the jitter is half its range. */
const half = (): number => 0.5

/**
 * An upstream of a fixed capacity: it serves `capacity` requests at a time,
 * each in `service` ms, and queues the rest itself, so a request's latency is
 * `service * max(1, inFlight / capacity)`. Clients offer `offered` requests at
 * once; the limit lets `min(offered, limit)` in flight. Every 10 ms of the
 * clock, the requests completed in them are recorded.
 */
class Model {
  now = 0
  capacity: number
  readonly service: number
  offered: number
  readonly limit: ConcurrencyLimit
  /** The limit at the end of each 100 ms. */
  readonly limits: number[] = []

  constructor (settings: Partial<ConcurrencyLimitSettings>, capacity: number, service: number, offered: number) {
    this.capacity = capacity
    this.service = service
    this.offered = offered
    this.limit = new ConcurrencyLimit({ ...SETTINGS, ...settings }, 0, half)
  }

  get inFlight (): number {
    return Math.min(this.offered, this.limit.limit)
  }

  get latency (): number {
    return this.service * Math.max(1, this.inFlight / this.capacity)
  }

  /** Runs `ms` of the clock. */
  run (ms: number): void {
    for (let end = this.now + ms; this.now < end;) {
      this.now += 10
      const k = this.inFlight
      // Completions in 10 ms: the in-flight requests over their latency (at least one).
      const done = Math.max(1, Math.round((k * 10) / this.latency))
      const latency = this.latency
      for (let i = 0; i < done; i++) this.limit.record(latency, this.now, k)
      if (this.now % 100 === 0) this.limits.push(this.limit.limit)
    }
  }
}

t.test('offered ten times its capacity, the limit converges down to between the capacity and twice it, where latency stays under 2x the minimum RTT', async (t) => {
  const m = new Model({}, 10, 20, 100)
  m.run(10_000)
  t.equal(m.limit.minRtt, 20, 'the minimum RTT measured at the start (at minLimit) is the unloaded latency')
  const settled = m.limits.slice(20)
  const worst = Math.max(...settled)
  const least = Math.min(...settled)
  t.ok(least >= 10 && worst <= 20, `after 2 s the limit stays within [10, 20] (capacity 10): ${least}..${worst}`)
  t.ok(m.latency < 2 * 20, `latency ${m.latency} ms under twice the unloaded 20 ms`)
  t.ok(m.limit.gradient < 1, `the last gradient ${m.limit.gradient} pushes down against the headroom`)
})

t.test('the limit goes back up when latency falls (the upstream gained capacity), and down again when it rises', async (t) => {
  const m = new Model({}, 10, 20, 1000)
  m.run(5000)
  t.ok(m.limit.limit <= 20, `limit ${m.limit.limit} near the capacity 10`)
  m.capacity = 200
  m.run(5000)
  t.ok(m.limit.limit >= 200, `capacity 200: the limit rose to ${m.limit.limit}`)
  t.ok(m.limit.limit <= 400, `and stays under twice it: ${m.limit.limit}`)
  m.capacity = 10
  m.run(5000)
  t.ok(m.limit.limit <= 20, `capacity back to 10: the limit fell to ${m.limit.limit}`)
})

t.test('the limit never goes over maxLimit, even with latency flat', async (t) => {
  const m = new Model({ maxLimit: 50 }, 10_000, 20, 10_000)
  m.run(5000)
  t.equal(Math.max(...m.limits), 50, 'it reaches maxLimit and no more')
  t.equal(m.limit.limit, 50)
})

t.test('the limit never goes under minLimit; stuck there for five windows, the minimum RTT is measured again', async (t) => {
  const m = new Model({ minLimit: 4 }, 10, 20, 100)
  m.run(3000)
  t.equal(m.limit.measurements, 1)
  // The upstream slows down for good: 1 at a time, every request is late against the old minimum RTT.
  m.capacity = 1
  m.run(3000)
  t.equal(Math.min(...m.limits), 4, 'the limit falls to minLimit and no lower')
  t.ok(m.limit.measurements >= 2, `measured again after windows at the floor (${m.limit.measurements} measurements)`)
  t.equal(m.limit.minRtt, 80, 'the new minimum RTT is the latency at minLimit now (4 in flight, 1 at a time, 20 ms each)')
})

t.test('the minimum RTT is measured again every minRttInterval plus jitter, at minLimit, then the limit comes back', async (t) => {
  const l = new ConcurrencyLimit({ ...SETTINGS, minRttInterval: 1000, minRttRequests: 10 }, 0, half)
  t.equal(l.limit, 3, 'it starts at minLimit')
  for (let i = 1; i <= 10; i++) l.record(10, i, l.limit)
  t.equal(l.measuring, false)
  t.equal(l.minRtt, 10)
  // Windows at the minimum RTT: the limit grows.
  let now = 10
  while (now < 900) {
    now += 10
    for (let i = 0; i < 5; i++) l.record(10, now, l.limit)
  }
  // Due at 10 + 1000 + 1000 * 15% * 0.5 = 1085: not at 1080.
  l.record(10, 1080, l.limit)
  t.equal(l.measuring, false, 'not yet due at 1080 ms')
  const grown = l.limit
  t.ok(grown > 50, `the limit grew to ${grown}`)
  l.record(10, 1085, l.limit)
  t.equal(l.measuring, true, 'due at 1085 ms: the measurement starts')
  t.equal(l.limit, 3, 'the limit is minLimit while it lasts')
  // A request that began before the measurement (and is slow) is not counted.
  l.record(500, 1090, l.limit)
  for (let i = 0; i < 9; i++) l.record(12, 1100 + i, l.limit)
  t.equal(l.measuring, true, 'nine samples of the measurement and one from before: not done')
  t.equal(l.record(12, 1110, l.limit), true, 'the tenth ends it, and the limit rose')
  t.equal(l.minRtt, 12, 'the minimum RTT of the samples that began within it')
  t.equal(l.limit, grown, 'the limit is back where it was')
})

t.test('the limit grows only while used: not past what twice the requests in flight would need', async (t) => {
  const m = new Model({}, 1000, 20, 5)
  m.run(5000)
  t.ok(m.limit.limit >= 5, `the limit covers the 5 offered: ${m.limit.limit}`)
  t.ok(m.limit.limit <= 2 * 5 + Math.ceil(Math.sqrt(2 * 5 * 2)) + 2, `and stops soon past twice them, latency flat: ${m.limit.limit}`)
  m.offered = 500
  m.run(3000)
  t.ok(m.limit.limit >= 500, `used, it grows again: ${m.limit.limit}`)
})

t.test('a window with no completed request leaves the limit as it was: quiet time between answers is no step', async (t) => {
  const l = new ConcurrencyLimit({ ...SETTINGS, minRttRequests: 1 }, 0, half)
  l.record(10, 1, 3)
  t.equal(l.minRtt, 10)
  t.equal(l.record(10, 150, 3), true, 'the first window moves it up')
  const limit = l.limit
  t.equal(limit, Math.floor(3 * 1.25 + Math.sqrt(3 * 1.25)))
  t.equal(l.record(10, 10_000, limit), true, 'an answer long after: one window, one step, from the same limit')
  t.equal(l.limit, Math.floor(limit * 1.25 + Math.sqrt(limit * 1.25)))
})

t.test('a window of more answers than it keeps (2048) samples them uniformly: its percentile holds', async (t) => {
  const seed = Number(process.env.SEED ?? Date.now() % 100_000)
  t.comment(`seed ${seed} (SEED=${seed} replays it)`)
  const l = new ConcurrencyLimit({ ...SETTINGS, minRttRequests: 1, percentile: 90 }, 0, seeded(seed))
  l.record(10, 1, 3)
  // 10,000 answers in one window: 85% at 10 ms, then 15% at 50 ms; the p90 is 50 ms only if the late ones are kept in their share.
  for (let i = 0; i < 8500; i++) l.record(10, 50, 3)
  for (let i = 0; i < 1499; i++) l.record(50, 50, 3)
  l.record(50, 150, 3)
  t.equal(l.sampleRtt, 50, 'the p90 of the window, from a uniform sample of it')
})

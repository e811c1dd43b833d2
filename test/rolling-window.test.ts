import t from 'tap'
import fc from 'fast-check'
import { FAILED, RATE_SECONDS, RollingWindow, WINDOW_SECONDS, bucketBound, latencyBucket } from '../lib/rolling-window.js'

/** A window on a clock the test moves (ms). */
function windowAt (start: number): { w: RollingWindow, clock: { now: number } } {
  const clock = { now: start }
  return { w: new RollingWindow(() => clock.now), clock }
}

const S = 1_700_000_000 // a second, as Date.now() / 1000 gives

t.test('counts answers by class, connection errors and retries apart, each second in its place in the series', async (t) => {
  const { w, clock } = windowAt(S * 1000 + 100)
  w.record(1, false, 3) // 200
  w.record(1, false, 4)
  w.record(3, false, 2) // 404
  w.record(4, true, 5) // 503, retried elsewhere
  clock.now += 2000
  w.record(FAILED, true, 1) // refused, retried
  w.record(FAILED, false, 1)
  const s = w.snapshot()
  t.equal(s.seconds, WINDOW_SECONDS)
  t.equal(s.attempts, 6)
  t.same(s.answers, { '1xx': 0, '2xx': 2, '3xx': 0, '4xx': 1, '5xx': 1 })
  t.equal(s.connectionErrors, 2, 'failures with no answer, apart from the 5xx answers')
  t.equal(s.retries, 2)
  t.equal(s.series.requests.length, WINDOW_SECONDS)
  t.same(s.series.requests.slice(-3), [4, 0, 2], 'oldest first, the current second last')
  t.same(s.series.failures.slice(-3), [1, 0, 2], 'failures: 5xx answers and connection errors')
  t.equal(s.series.requests.slice(0, -3).reduce((a, b) => a + b, 0), 0)
})

t.test('what a target did decays out of the window: a minute without attempts leaves nothing', async (t) => {
  const { w, clock } = windowAt(S * 1000)
  for (let i = 0; i < 10; i++) w.record(FAILED, false, 1)
  clock.now = (S + WINDOW_SECONDS - 1) * 1000 + 999
  t.equal(w.snapshot().connectionErrors, 10, 'still in the window 59.999 s later')
  clock.now = (S + WINDOW_SECONDS) * 1000
  const s = w.snapshot()
  t.equal(s.connectionErrors, 0, 'gone 60 s later: the errors do not freeze at their last value')
  t.equal(s.attempts, 0)
  t.equal(s.p50, null, 'no latency without attempts')
  t.equal(s.p99, null)
  t.equal(s.rate, 0)
})

t.test('a slot that comes round again is cleared before it counts the new second', async (t) => {
  const { w, clock } = windowAt(S * 1000)
  for (let i = 0; i < 5; i++) w.record(1, false, 900)
  clock.now += WINDOW_SECONDS * 1000 // the same slot, a minute later
  w.record(4, false, 2)
  const s = w.snapshot()
  t.equal(s.attempts, 1)
  t.same(s.answers, { '1xx': 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 1 })
  t.equal(s.p99, 2, 'the old latencies went with their second')
})

t.test('rate: attempts per second over the last 10 s, the current second counted as far as it went', async (t) => {
  const { w, clock } = windowAt(S * 1000)
  // 10 attempts in each of the last 12 seconds; the snapshot halfway through the 12th.
  for (let k = 0; k < 12; k++) {
    clock.now = (S + k) * 1000 + 500
    for (let i = 0; i < 10; i++) w.record(1, false, 1)
  }
  // Seconds S+2..S+11 hold 100 attempts; they span 9.5 s.
  t.equal(w.snapshot().rate, Math.round(100 / (RATE_SECONDS - 0.5) * 100) / 100)
  t.equal(w.snapshot().attempts, 120)
})

t.test('latency buckets: three per doubling, each value under its bucket\'s bound and above the one before', async (t) => {
  t.equal(latencyBucket(0), 0)
  t.equal(latencyBucket(1), 0)
  t.equal(latencyBucket(Number.NaN), 0)
  t.equal(latencyBucket(2), 3)
  t.equal(latencyBucket(1e12), 63, 'the last bucket is open-ended')
  const wrong: string[] = []
  for (const ms of [1.1, 1.5, 2, 3, 7, 10, 99, 100, 250, 1000, 4321, 30_000, 600_000]) {
    const b = latencyBucket(ms)
    if (!(ms <= bucketBound(b) && ms > bucketBound(b - 1))) wrong.push(`${ms} ms in bucket ${b} (${bucketBound(b - 1)}, ${bucketBound(b)}]`)
  }
  t.same(wrong, [])
})

t.test('p50 and p99 over the minute: at or above the exact value, within a bucket (26%) of it, never above the largest', async (t) => {
  const { w } = windowAt(S * 1000 + 10)
  for (let i = 0; i < 98; i++) w.record(1, false, 2)
  w.record(1, false, 500)
  w.record(1, false, 500)
  const s = w.snapshot()
  t.equal(s.p50, 2)
  t.equal(s.p99, 500, 'the bucket\'s bound (512) capped by the largest latency seen')

  const property = fc.property(
    fc.array(fc.integer({ min: 0, max: 60_000 }), { minLength: 1, maxLength: 300 }),
    fc.integer({ min: 0, max: 59 }),
    (latencies, spread) => {
      const clock = { now: S * 1000 }
      const win = new RollingWindow(() => clock.now)
      latencies.forEach((ms, i) => {
        clock.now = S * 1000 + Math.floor(i * spread * 1000 / latencies.length)
        win.record(1, false, ms)
      })
      const snap = win.snapshot()
      const sorted = [...latencies].sort((a, b) => a - b)
      const max = sorted[sorted.length - 1]
      for (const [q, got] of [[0.5, snap.p50], [0.99, snap.p99]] as const) {
        const exact = sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1]
        if (got === null) return false
        if (got < exact - 0.05 || got > max) return false
        if (got > Math.max(1, exact * 2 ** (1 / 3)) + 0.05) return false
      }
      return snap.attempts === latencies.length
    }
  )
  t.doesNotThrow(() => { fc.assert(property, { seed: 16, numRuns: 200 }) }, '200 random sets of latencies spread over the minute')
})

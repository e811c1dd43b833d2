import t from 'tap'
import { ProbeCounter } from '../lib/health-checker.js'
import { CircuitBreaker } from '../lib/circuit-breaker.js'
import { OutlierDetector } from '../lib/outlier-detector.js'
import { Upstream } from '../lib/upstream.js'
import type { UpstreamLogger } from '../lib/upstream.js'
import { resolveOptions } from '../lib/options/index.js'
import { PROBATION_ATTEMPTS } from '../lib/target.js'
import type { Target } from '../lib/target.js'
import { FakeClient, fakeFactory } from './helpers/fake-client.js'
import { seeded } from './helpers/random.js'
import { admit, send, settled } from './helpers/leases.js'

t.test('active checks: down after exactly unhealthyThreshold failed probes, up after exactly healthyThreshold good ones', async (t) => {
  const c = new ProbeCounter(2, 3)
  t.equal(c.record(true, false), null, 'a first good probe of a target in rotation: nothing to do')
  t.equal(c.record(false, false), null)
  t.equal(c.record(false, false), null)
  t.equal(c.record(true, false), null, 'a good probe resets the count')
  t.equal(c.record(false, false), null)
  t.equal(c.record(false, false), null)
  t.equal(c.record(false, false), 'down', 'the third failure in a row')
  t.equal(c.record(true, true), null)
  t.equal(c.record(false, true), null, 'a failure resets the good count')
  t.equal(c.record(true, true), null)
  t.equal(c.record(true, true), 'up', 'the second success in a row')
  const first = new ProbeCounter(2, 3)
  t.equal(first.record(false, false), 'down', 'the first probe decides at once')
  const pending = new ProbeCounter(2, 3)
  t.equal(pending.record(true, true), 'up', 'a target waiting for its first probe comes in on one good probe')
})

t.test('circuit breaker (injected clock): consecutive failures, or a failure rate over a sliding window with a minimum volume', async (t) => {
  let now = 0
  const b = new CircuitBreaker({ consecutiveFailures: 3, failureRate: 0.5, window: 10_000, minimumRequests: 10, halfOpenRequests: 2 }, () => now)
  t.equal(b.failure(), false)
  t.equal(b.failure(), false)
  t.equal(b.failure(), true, 'three in a row')
  b.reset()
  // 5 failures among 10 (never 3 in a row): the rate trips it at the minimum volume.
  const seq = [false, true, false, true, false, true, false, true, false]
  for (const ok of seq) { if (ok) b.success(); else t.equal(b.failure(), false) }
  t.same(b.counts(), { ok: 4, failed: 5 })
  b.success()
  t.equal(b.failure(), true, '6 of 11 failed, at least 10 requests')
  b.reset()
  for (let i = 0; i < 4; i++) { b.success(); b.failure() }
  now = 20_000 // the window slid past them
  t.same(b.counts(), { ok: 0, failed: 0 })
  t.equal(b.failure(), false, 'old failures aged out')
  t.equal(b.halfOpenRequests, 2)
})

interface Logged { level: string, obj: Record<string, unknown>, msg: string }
function capture (): { log: UpstreamLogger, lines: Logged[] } {
  const lines: Logged[] = []
  const log: UpstreamLogger = {
    info: (obj, msg) => { lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }) },
    warn: (obj, msg) => { lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }) },
    debug: () => {}
  }
  return { log, lines }
}

function upstream (extra: Record<string, unknown>, n = 3, clock = { now: 0 }): { up: Upstream, made: FakeClient[], lines: Logged[] } {
  const made: FakeClient[] = []
  const { log, lines } = capture()
  const targets = Array.from({ length: n }, (_, i) => `http://127.0.0.1:${i + 1}`)
  const config = resolveOptions({ upstreams: { u: { targets, balance: 'round-robin', ...extra } } }).upstreams[0]
  // flapWindow 0: each change is logged as it comes (the hysteresis is test/logs.test.ts's).
  const up = new Upstream(config, { factory: fakeFactory(made), now: () => clock.now, random: seeded(9), log, flapWindow: 0 })
  return { up, made, lines }
}

/** One request (a POST: never retried) through the upstream, answered with this status by whichever fake client gets it. */
async function serve (up: Upstream, made: FakeClient[], status: number): Promise<Target> {
  const lease = admit(up)!
  const target = lease.target
  send(lease, undefined, { method: 'POST' })
  made.find((x) => x.inflight.length > 0)!.complete(status)
  await settled()
  lease.release()
  return target
}

/** What a target's own attempt came to, put into it directly. */
function result (x: Target, latency: number, status = 200): void {
  x.putResult(x.begin(), { category: null, status, latency })
}

t.test('the breaker, as a cause of the target\'s state: opens, skips for retryInterval, half-opens for its trials, closes', async (t) => {
  const clock = { now: 0 }
  const { up, made, lines } = upstream({
    circuitBreaker: { consecutiveFailures: 3, halfOpenRequests: 2 },
    pool: { retryInterval: '1s' },
    retry: false,
    panicThreshold: 0
  }, 3, clock)
  const flaky = up.targets[0]
  // Round-robin: every third request lands on the first target; it answers 503, the others 200.
  for (let i = 0; i < 9; i++) await serve(up, made, i % 3 === 0 ? 503 : 200)
  t.equal(flaky.available(clock.now), false, 'open after 3 failures in a row')
  t.match(up.stats().targets[0].breaker, { state: 'open' })
  t.match(up.stats().targets[0].health, [{ cause: 'circuit_open', since: 0, until: 1000 }])
  t.equal(lines.filter((l) => l.obj.cause === 'circuit_open').length, 1, 'logged once')
  t.match(lines[0], { level: 'warn', obj: { upstream: 'u', target: flaky.url, cause: 'circuit_open' } })
  for (let i = 0; i < 6; i++) t.not(await serve(up, made, 200), flaky, 'skipped while open')
  clock.now = 1000
  t.match(up.stats().targets[0].breaker, { state: 'half-open' })
  // Two trials let through; 4xx is never a failure.
  const picked: Target[] = []
  for (let i = 0; i < 6; i++) picked.push(await serve(up, made, 404))
  t.equal(picked.filter((x) => x === flaky).length, 2, 'exactly halfOpenRequests trials')
  t.equal(flaky.available(clock.now), true, 'closed after its trials succeeded')
  t.equal(lines.filter((l) => l.level === 'info' && l.obj.cause === 'circuit_open').length, 1, 'its return logged once')
  // A failed trial reopens it for twice as long.
  for (let i = 0; i < 9; i++) await serve(up, made, i % 3 === 0 ? 500 : 200)
  t.equal(flaky.available(clock.now), false)
  clock.now = 3000
  while (await serve(up, made, 200) !== flaky) { /* until its trial */ }
  t.equal(flaky.available(clock.now), true, 'one trial in, one left')
  while (await serve(up, made, 502) !== flaky) { /* its second trial fails */ }
  t.equal(up.stats().targets[0].down!.until - clock.now, 2000, 'reopened for twice retryInterval')
  await up.close()
})

t.test('panic: below panicThreshold healthy, the judgement flags are set aside, a skip is not; 0 keeps the fast 503', async (t) => {
  const { up } = upstream({ panicThreshold: 50 })
  up.targets[0].setActiveHealth(true, 'test')
  t.equal(up.panic, false, '2 of 3 healthy')
  up.targets[1].setActiveHealth(true, 'test')
  t.equal(up.panic, true, '1 of 3 healthy: panic')
  t.ok(up.targets.every((x) => x.available(0)), 'every target in rotation again')
  const x = up.targets[0]
  x.putResult(x.begin(), { category: 'connect_refused', status: 0, latency: 1 })
  t.equal(x.available(0), false, 'a refused connect is a fact, not set aside')
  const y = up.targets[1]
  y.breaker!.failure(); y.breaker!.failure(); y.breaker!.failure(); y.breaker!.failure()
  y.putResult(y.begin(), { category: null, status: 503, latency: 1 })
  t.match(up.stats().targets[1].breaker, { state: 'open' }, 'its breaker opened on real traffic')
  t.equal(y.available(0), false, 'an open breaker is not set aside either: its trials bring it back')
  t.equal(up.stats().panic, true)
  await up.close()

  const strict = upstream({ panicThreshold: 0 }).up
  for (const x of strict.targets) x.setActiveHealth(true, 'test')
  t.equal(strict.panic, false)
  t.throws(() => admit(strict), { code: 'FST_SSSONECTOR_NO_TARGET' })
  await strict.close()
})

t.test('slow start: a target that comes back ramps its share over slowStart', async (t) => {
  const clock = { now: 0 }
  const { up, made } = upstream({ slowStart: '10s', balance: 'round-robin' }, 2, clock)
  const back = up.targets[1]
  clock.now = 50_000 // both ramped long ago
  back.setActiveHealth(true, 'test')
  back.setActiveHealth(false, 'test') // comes back at 50 s
  const share = async (): Promise<number> => {
    let n = 0
    for (let i = 0; i < 400; i++) if (await serve(up, made, 200) === back) n++
    return n / 400
  }
  const early = await share()
  clock.now = 55_000
  const half = await share()
  clock.now = 60_000
  const full = await share()
  t.ok(early < 0.15, `just back: ${early.toFixed(2)} of the traffic`)
  t.ok(half > 0.25 && half < 0.45, `half-way: ${half.toFixed(2)}`)
  t.ok(full > 0.45, `ramped: ${full.toFixed(2)}`)
  t.equal(up.stats().targets[1].slowStart, false)
  await up.close()
})

t.test('probation: back from an ejection, a target makes its attempts one at a time and is ejected again at once if still an outlier', async (t) => {
  const clock = { now: 0 }
  const { up, lines } = upstream({ outlierDetection: { baseEjectionTime: '1s', maxEjectionTime: '10s' } }, 3, clock)
  const [a, b, c] = up.targets
  for (let i = 0; i < 5; i++) { result(b, 5); result(c, 5) }
  a.eject(1000, 'test')
  t.equal(a.canTake(), false, 'ejected')
  clock.now = 1000
  t.equal(a.canTake(), true, 'back, on probation')
  t.equal(a.probation, PROBATION_ATTEMPTS)
  a.leased = 1
  t.equal(a.canTake(), false, 'one probation attempt at a time')
  a.leased = 0
  for (let i = 0; i < PROBATION_ATTEMPTS - 1; i++) result(a, 200)
  t.equal(a.ejectedUntil, 0, 'judged only once its attempts are in')
  result(a, 200)
  t.equal(a.ejections, 2, 'still slow: ejected again')
  t.ok(a.ejectedUntil >= 3000 && a.ejectedUntil <= 3200, `for twice the base time: until ${a.ejectedUntil}`)
  t.equal(a.probation, 0)
  t.match(up.stats().targets[0].health, [{ cause: 'ejected' }])
  t.ok(lines.some((l) => l.level === 'warn' && /still an outlier on probation: mean latency 200\.0 ms against 5\.0 ms/.test(String(l.obj.reason))), 'the new ejection is logged with its reason')

  clock.now = a.ejectedUntil
  t.equal(a.canTake(), true)
  for (let i = 0; i < PROBATION_ATTEMPTS; i++) result(a, 7)
  t.equal(a.ejectedUntil, 0, 'fast again: it stays')
  t.equal(a.probation, 0, 'probation over')
  t.ok(lines.some((l) => l.msg === 'target passed its probation after an ejection'))

  // A failure on probation counts as one, against peers that do not fail.
  a.eject(clock.now + 1000, 'test')
  clock.now += 1100
  t.equal(a.canTake(), true)
  result(a, 5, 500); result(a, 5, 500); result(a, 5)
  t.equal(a.ejections, 4, 'failing on probation: ejected again')
  await up.close()
})

t.test('outlier detection: failure rate or latency far from the peers\', at most maxEjectionPercent, only with 3 targets or more', async (t) => {
  const { up } = upstream({}, 4)
  const [a, b, c, d] = up.targets
  const od = new OutlierDetector({ interval: 1000, baseEjectionTime: 1000, maxEjectionTime: 5000, maxEjectionPercent: 50, minimumRequests: 10, failureRateFactor: 3, latencyFactor: 3 })
  const feed = (x: Target, n: number, failures: number, latency: number): void => { for (let i = 0; i < n; i++) od.record(x, i < failures, latency) }
  feed(a, 20, 10, 5); feed(b, 20, 0, 5); feed(c, 20, 1, 5); feed(d, 20, 0, 60)
  const out = od.judge(up.targets, 0, () => 0)
  t.same(out.map((o) => o.target), [a, d], 'the failing one and the slow one')
  t.match(out[0].reason, /failure rate 50% against 2%/)
  t.match(out[1].reason, /mean latency 60\.0 ms against 5\.0 ms/)
  t.equal(out[0].until, 1000)
  a.eject(out[0].until, out[0].reason)
  d.eject(out[1].until, out[1].reason)
  feed(b, 20, 20, 5); feed(c, 20, 0, 5)
  t.same(od.judge(up.targets, 10, () => 0), [], 'never more than half ejected')
  feed(a, 5, 5, 5); feed(b, 5, 0, 5); feed(c, 5, 0, 5)
  t.same(od.judge(up.targets, 2000, () => 0), [], 'below minimumRequests: not judged')
  const two = upstream({}, 2).up
  feed(two.targets[0], 20, 20, 5); feed(two.targets[1], 20, 0, 5)
  t.same(od.judge(two.targets, 0, () => 0), [], 'two targets cannot say who is the odd one')
  t.equal(a.ejections, 1)
  await up.close()
  await two.close()
})

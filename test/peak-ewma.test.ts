import t from 'tap'
import { LeastRequest, PeakEwmaP2C, SCORE_BAND } from '../lib/balancer.js'
import type { Balancer, Pickable } from '../lib/balancer.js'
import { DECAY, DEFAULT_RTT, FAILURE_FACTOR, FAILURE_FLOOR, FAILURE_WEIGHT, MAX_RETRY_AFTER, PENALTY_DECAY, PeakEwma, retryAfterMs } from '../lib/peak-ewma.js'
import { seeded } from './helpers/random.js'

// Randomised: SEED=<n> replays a run.
const SEED = Number(process.env.SEED ?? Date.now() % 100_000)
t.comment(`seed ${SEED} (replay with SEED=${SEED})`)

const close = (a: number, b: number): boolean => Math.abs(a - b) < 1e-9

t.test('the estimate: the default before the first answer, which replaces it; a slower answer sets it at once; it decays by e^(-t/10 s)', async (t) => {
  const s = new PeakEwma()
  t.equal(s.estimate(0), DEFAULT_RTT, 'a target not heard from: the default RTT')
  t.equal(s.estimate(60_000), DEFAULT_RTT, 'the default does not decay (a new target is not scored near zero)')
  s.observe(2, 1000)
  t.equal(s.estimate(1000), 2, 'the first answer replaces the default, even a faster one')
  s.observe(200, 1010)
  t.equal(s.estimate(1010), 200, 'a slower answer: the peak, at once')
  t.ok(close(s.estimate(1010 + DECAY), 200 * Math.exp(-1)), 'decays by e^-1 over the decay time')
  s.observe(2, 1010 + DECAY)
  t.ok(close(s.estimate(1010 + DECAY), 200 * Math.exp(-1)), 'a faster answer does not pull it below what it decayed to')
  // Faster answers: it falls toward them over time, and they hold it there.
  let now = 1010 + DECAY
  for (let i = 0; i < 100; i++) s.observe(2, now += 1000)
  t.equal(s.estimate(now), 2, 'after 100 s of 2 ms answers: 2 ms, held by them')
  t.ok(s.estimate(now + 5 * DECAY) < 0.02, 'with no answer for a long while it falls toward zero (a shunned target gets tried again)')
})

t.test('a bound from below (an attempt let go unanswered): raises the estimate when lower, never lowers it, no failure; below the default it leaves a target not heard from at the default', async (t) => {
  const s = new PeakEwma()
  s.atLeast(5, 0)
  t.equal(s.estimate(0), DEFAULT_RTT, 'a bound under the default RTT says nothing of a target not heard from')
  t.notOk(s.sampled)
  s.atLeast(80, 10)
  t.equal(s.estimate(10), 80, 'a bound over it sets it')
  s.observe(2, 20)
  t.ok(close(s.estimate(20), 80 * Math.exp(-10 / DECAY)), 'then an answer decays from there, as from a slow answer')
  s.atLeast(3, 30)
  t.ok(close(s.estimate(30), 80 * Math.exp(-20 / DECAY)), 'a bound under the estimate moves nothing')
  t.equal(s.failureRatio(30), 0, 'no failure')
  t.equal(s.penalty(30), 0)
  t.ok(s.current(30), 'it was heard from: its estimate is being measured')
})

t.test('the penalty: (the estimate times 100 + 5 s times f) times f, f the failure ratio of about the last 10 attempts, decaying by e^(-t/2 s) without attempts; Retry-After holds it', async (t) => {
  const s = new PeakEwma()
  s.observe(1, 0)
  t.equal(s.penalty(0), 0, 'none before a failure')
  s.fail(1, 100)
  t.ok(close(s.failureRatio(100), FAILURE_WEIGHT), 'a failure: a tenth')
  t.ok(close(s.penalty(100), (FAILURE_FACTOR + FAILURE_FLOOR * FAILURE_WEIGHT) * FAILURE_WEIGHT), 'the penalty: (the estimate (1 ms) times 100, plus 5 s times the ratio) times the ratio')
  t.equal(s.estimate(100), 1, 'a fast failure does not lower nor raise the estimate: a fast 503 does not look fast')
  t.ok(close(s.score(100), 1 + s.penalty(100)), 'the score is the estimate plus the penalty')
  t.ok(close(s.failureRatio(100 + PENALTY_DECAY), FAILURE_WEIGHT * Math.exp(-1)), 'without attempts the ratio decays by e^-1 over its decay time')
  s.observe(1, 100)
  t.ok(close(s.failureRatio(100), FAILURE_WEIGHT * (1 - FAILURE_WEIGHT)), 'an answer lowers it by a tenth')
  // Every second attempt failing: the ratio settles near a half.
  const h = new PeakEwma()
  for (let i = 0; i < 200; i++) {
    if (i % 2 === 0) h.fail(1, 0)
    else h.observe(1, 0)
  }
  t.ok(h.failureRatio(0) > 0.45 && h.failureRatio(0) < 0.55, `half failing: a ratio near 0.5 (${h.failureRatio(0).toFixed(3)}), a score ${h.score(0).toFixed(0)} times its latency`)
  // Once in a thousand: the ratio is back under 1% within 25 answers.
  const rare = new PeakEwma()
  rare.fail(1, 0)
  for (let i = 0; i < 25; i++) rare.observe(1, 0)
  t.ok(rare.failureRatio(0) < 0.01, `one failure, then 25 answers: ${rare.failureRatio(0).toFixed(4)}`)
  t.equal(s.heldUntil(100), 0, 'no hold without Retry-After')

  const r = new PeakEwma()
  r.observe(5, 1000)
  r.fail(5, 1000, 30_000)
  t.equal(r.failureRatio(1000 + 29_999), 1, 'Retry-After: the ratio held at 1 until then')
  t.ok(close(r.penalty(1000 + 29_999), 5 * FAILURE_FACTOR * Math.exp(-29_999 / DECAY) + FAILURE_FLOOR), 'the penalty: 100 times the estimate, plus 5 s')
  t.equal(r.heldUntil(1000), 31_000, 'and stats can tell until when')
  r.observe(5, 2000)
  t.equal(r.failureRatio(2000), 1, 'an answer meanwhile does not end the hold')
  t.ok(close(r.failureRatio(31_000 + PENALTY_DECAY), (1 - FAILURE_WEIGHT) * Math.exp(-1)), 'then it decays from the end of the hold')
  t.equal(r.heldUntil(31_000 + PENALTY_DECAY), 0)

  const slow = new PeakEwma()
  slow.observe(2, 0)
  slow.fail(30_000, 30_000)
  t.equal(slow.estimate(30_000), 30_000, 'a failure slower than the estimate (a timeout) raises it: a slow target')

  // A target failing every attempt fast scores above one answering every attempt in 200 ms.
  const failing = new PeakEwma()
  const slowOk = new PeakEwma()
  for (let i = 0; i < 20; i++) {
    failing.fail(1, 0)
    slowOk.observe(200, 0)
  }
  t.ok(failing.score(0) > slowOk.score(0), `failing fast: ${failing.score(0).toFixed(0)} ms, above slow: ${slowOk.score(0)} ms`)
})

t.test('Retry-After is read in seconds or as an HTTP date, capped', async (t) => {
  t.equal(retryAfterMs('5', 0), 5000)
  t.equal(retryAfterMs(' 0 ', 0), 0)
  t.equal(retryAfterMs(['2', '9'], 0), 2000, 'the first of repeated headers')
  const now = Date.parse('Mon, 30 Nov 2026 10:00:00 GMT')
  t.equal(retryAfterMs('Mon, 30 Nov 2026 10:00:07 GMT', now), 7000, 'an HTTP date, against now')
  t.equal(retryAfterMs('Mon, 30 Nov 2026 09:00:00 GMT', now), 0, 'a date past: none')
  t.equal(retryAfterMs('soon', now), 0, 'unreadable: none')
  t.equal(retryAfterMs(undefined, now), 0)
  t.equal(retryAfterMs('86400', now), MAX_RETRY_AFTER, 'a day asked for: capped')
})

/** A target of the simulation: a fixed service time, and a share of answers that fail. */
class Sim implements Pickable {
  readonly origin: string
  readonly weight = 1
  readonly score = new PeakEwma()
  outstanding = 0
  served = 0
  up = true
  constructor (name: string, readonly latency: (random: () => number) => number, readonly fails: (n: number) => boolean = () => false) {
    this.origin = `http://${name}:80`
  }

  canTake (): boolean { return this.up }
}

interface SimResult { picks: number, servedAfter: number[], total: number[] }

/**
 * A closed loop from a cold start, on an injected clock: `connections`
 * clients, each sending its next request as soon as its last is answered;
 * each target answers after its service time. Counts what each target served,
 * and what it served from `after` ms on.
 */
function simulate (b: Balancer<Sim>, targets: Sim[], opts: { connections: number, ms: number, after: number, random: () => number, clock: { now: number }, untimedWaits?: boolean }): SimResult {
  b.update(targets)
  const due = new Float64Array(opts.connections)
  const started = new Float64Array(opts.connections)
  const on: Array<Sim | null> = new Array(opts.connections).fill(null)
  const servedAfter = targets.map(() => 0)
  const count = new Map(targets.map((x, i) => [x, i]))
  let picks = 0
  const send = (c: number): void => {
    const x = b.pick()!
    picks++
    x.outstanding++
    on[c] = x
    started[c] = opts.clock.now
    // As the gateway's attempts do (unless the run asks to see the balancer without it).
    if (opts.untimedWaits !== true) x.score.sent(opts.clock.now)
    due[c] = opts.clock.now + x.latency(opts.random)
  }
  for (let c = 0; c < opts.connections; c++) send(c)
  // Bounded: each turn answers one request, and time moves forward by at least a service time.
  for (let turn = 0; turn < 5_000_000; turn++) {
    let c = 0
    for (let i = 1; i < due.length; i++) if (due[i] < due[c]) c = i
    if (due[c] > opts.ms) break
    const x = on[c]!
    opts.clock.now = due[c]
    const latency = due[c] - started[c]
    if (opts.untimedWaits !== true) x.score.answered(started[c])
    x.outstanding--
    x.served++
    if (opts.clock.now >= opts.after) servedAfter[count.get(x)!]++
    if (x.fails(x.served)) x.score.fail(1, opts.clock.now)
    else x.score.observe(latency, opts.clock.now)
    send(c)
  }
  return { picks, servedAfter, total: targets.map((x) => x.served) }
}

const fast = (random: () => number): number => 1 + random()

t.test('one target 200 ms slow, 64 connections, from a cold start: it gets under 0.5% of 10 s of requests (least request: many more)', async (t) => {
  const shares: Record<string, number> = {}
  for (const policy of ['peak-ewma', 'least-request'] as const) {
    const clock = { now: 0 }
    const random = seeded(SEED)
    const ts = [new Sim('a', fast), new Sim('b', fast), new Sim('slow', () => 200)]
    const b = policy === 'peak-ewma' ? new PeakEwmaP2C<Sim>(random, () => clock.now) : new LeastRequest<Sim>(random)
    const r = simulate(b, ts, { connections: 64, ms: 10_000, after: 0, random, clock })
    const all = r.total.reduce((x, y) => x + y, 0)
    shares[policy] = r.total[2] / all
    t.comment(`${policy}: the slow target served ${r.total[2]} of ${all} (${(100 * shares[policy]).toFixed(3)}%)`)
  }
  t.ok(shares['peak-ewma'] < 0.005, `peak EWMA: under 0.5% (${(100 * shares['peak-ewma']).toFixed(3)}%)`)
  t.ok(shares['least-request'] > 5 * shares['peak-ewma'], 'least request sends it at least five times as many')
})

t.test('a known fast target that stops answering (its requests hang), 64 connections: the age of its waiting attempts bounds its estimate, so it stops drawing requests; without, its estimate decays toward zero and it takes every client', async (t) => {
  const got: Record<string, number> = {}
  const served: Record<string, number> = {}
  for (const untimedWaits of [false, true]) {
    const clock = { now: 0 }
    const random = seeded(SEED + 3)
    // It answers its first 20 requests as fast as the others (it is known, and fast), then none.
    let answeredSoFar = 0
    const hung = new Sim('hung', (r) => ++answeredSoFar <= 20 ? fast(r) : Infinity)
    const ts = [new Sim('a', fast), new Sim('b', fast), hung]
    const b = new PeakEwmaP2C<Sim>(random, () => clock.now)
    const r = simulate(b, ts, { connections: 64, ms: 10_000, after: 0, random, clock, untimedWaits })
    const hanging = hung.outstanding
    got[String(untimedWaits)] = hanging
    served[String(untimedWaits)] = r.total[0] + r.total[1]
    t.comment(`${untimedWaits ? 'without' : 'with'} the bound: ${hanging} requests hang on it (of 64 clients), ${r.total[0] + r.total[1]} served by the others`)
  }
  t.ok(got.false < 32, `with its waits timed, fewer than half the clients hang on it (${got.false}: those sent before their age told, at the moment it stopped)`)
  t.equal(got.true, 64, 'without, every client ends up waiting on it')
  t.ok(served.false >= 5 * served.true, `the others served ${served.false} with the bound, ${served.true} without`)
})

t.test('the bound from below of waiting attempts: their mean age while any waits; none left, the estimate as before; never written into the estimate', async (t) => {
  const p = new PeakEwma()
  p.observe(2, 1_000)
  p.sent(1_000)
  p.sent(1_010)
  t.equal(p.estimate(1_000), 2, 'younger than the estimate: no effect')
  t.equal(p.waitedFor(1_110), 105, 'the mean age')
  t.equal(p.estimate(1_110), 105, 'the estimate reads it when longer')
  t.equal(p.score(1_110), 105)
  p.observe(3, 1_110)
  t.equal(p.estimate(1_110), 105, 'an answer meanwhile (3 ms) does not lower it')
  p.answered(1_000)
  p.answered(1_010)
  t.equal(p.waitedFor(1_110), 0)
  t.ok(close(p.estimate(1_110), 3), 'none waiting: the estimate of its answers, the bound not kept in it')
  p.sent(2_000)
  t.equal(p.estimate(2_000 + 500), 500, 'a target not heard from for a while: the one waiting attempt\'s age')
  p.answered(2_000)
})

t.test('one target answering 503 to every second request: under 1% of requests after the first second', async (t) => {
  const clock = { now: 0 }
  const random = seeded(SEED + 1)
  const ts = [new Sim('a', fast), new Sim('b', fast), new Sim('flaky', fast, (n) => n % 2 === 0)]
  const b = new PeakEwmaP2C<Sim>(random, () => clock.now)
  const r = simulate(b, ts, { connections: 64, ms: 10_000, after: 1000, random, clock })
  const after = r.servedAfter.reduce((x, y) => x + y, 0)
  const share = r.servedAfter[2] / after
  t.comment(`the flaky target served ${r.total[2]} in all, ${r.servedAfter[2]} of ${after} after the first second`)
  t.ok(share < 0.01, `under 1% after the first second (${(100 * share).toFixed(3)}%)`)
  t.ok(r.servedAfter[2] > 0, 'it is still tried now and then (its penalty decays)')
})

t.test('one target failing once in a thousand keeps most of its share (a penalty in absolute time would take it out)', async (t) => {
  const clock = { now: 0 }
  const random = seeded(SEED + 6)
  const ts = [new Sim('a', fast), new Sim('b', fast), new Sim('rare', fast, (n) => n % 1000 === 0)]
  const b = new PeakEwmaP2C<Sim>(random, () => clock.now)
  const r = simulate(b, ts, { connections: 64, ms: 5_000, after: 0, random, clock })
  const share = r.total[2] / r.total[0]
  t.ok(share > 0.8, `it served ${r.total.join(' / ')}: ${(100 * share).toFixed(1)}% of a healthy peer's count`)
})

t.test('all targets equal: the spread stays within 5%', async (t) => {
  const clock = { now: 0 }
  const random = seeded(SEED + 2)
  const ts = [new Sim('a', fast), new Sim('b', fast), new Sim('c', fast)]
  const b = new PeakEwmaP2C<Sim>(random, () => clock.now)
  const r = simulate(b, ts, { connections: 64, ms: 10_000, after: 0, random, clock })
  const spread = Math.max(...r.total) / Math.min(...r.total) - 1
  t.ok(spread < 0.05, `served ${r.total.join(' / ')}: spread ${(100 * spread).toFixed(2)}%`)
})

t.test(`scores within ${SCORE_BAND}x of each other (here 2.5x; 3.5x is past it), both measured lately, are the same to the pick: the fewer outstanding wins; past that, or for a target not heard from lately, the cost does`, async (t) => {
  /** Two targets answering in 10 and `other` ms, with 5 and 4 requests outstanding, on a balancer of their own. */
  const pair = (other: number, seed: number): { b: PeakEwmaP2C<Sim>, ts: Sim[] } => {
    const ts = [new Sim('a', fast), new Sim('b', fast)]
    const b = new PeakEwmaP2C<Sim>(seeded(seed), () => 0)
    b.update(ts)
    ts[0].score.observe(10, 0)
    ts[1].score.observe(other, 0)
    ts[0].outstanding = 5
    ts[1].outstanding = 4
    return { b, ts }
  }
  const { b, ts } = pair(25, SEED + 7) // dearer by cost (25 x 5 = 125 > 10 x 6 = 60), but within the band (2.5x) and fewer outstanding
  t.equal(b.pick(), ts[1], 'within the band: fewer outstanding wins')
  ts[1].outstanding = 6
  t.equal(b.pick(), ts[0], 'within the band: fewer outstanding wins, the other way')
  const past = pair(35, SEED + 8) // 3.5x: 35 x 5 = 175 > 10 x 6 = 60
  t.equal(past.b.pick(), past.ts[0], 'past the band: the cost decides, though it has more outstanding')

  // A target not heard from for longer than the decay time: its score fell by time alone, so it is compared by cost.
  const clock = { now: 0 }
  const d = [new Sim('e', fast), new Sim('shunned', fast)]
  const b3 = new PeakEwmaP2C<Sim>(seeded(SEED + 9), () => clock.now)
  b3.update(d)
  d[1].score.observe(25 * Math.exp(1), 0) // decays to 25 ms at DECAY
  clock.now = DECAY
  d[0].score.observe(10, clock.now)
  d[0].outstanding = 5
  d[1].outstanding = 4 // 25 x 5 = 125 > 10 x 6 = 60
  t.ok(d[1].score.current(clock.now), 'last heard one decay time ago: still current')
  t.equal(b3.pick(), d[1], 'within the band and current: fewer outstanding wins')
  clock.now += 1
  t.notOk(d[1].score.current(clock.now), 'past one decay time without an answer: not current')
  t.equal(b3.pick(), d[0], 'not current: the cost decides')
})

t.test('a pick asks O(1) targets: about two with 3 targets or 300', async (t) => {
  for (const n of [3, 300]) {
    let asked = 0
    const ts = Array.from({ length: n }, (_, i) => {
      const x = new Sim(`t${i}`, fast)
      x.canTake = () => { asked++; return true }
      return x
    })
    const b = new PeakEwmaP2C<Sim>(seeded(SEED + n), () => 0)
    b.update(ts)
    for (let i = 0; i < 10_000; i++) b.pick()
    t.ok(asked / 10_000 < 2.5, `${n} targets: ${(asked / 10_000).toFixed(2)} targets asked a pick`)
  }
})

t.test('two distinct candidates: with one other target able to take it, the cheaper of the two wins every time', async (t) => {
  const ts = [new Sim('a', fast), new Sim('b', fast), new Sim('c', fast)]
  const b = new PeakEwmaP2C<Sim>(seeded(SEED + 3), () => 0)
  b.update(ts)
  ts[0].up = false
  ts[1].score.observe(50, 0)
  ts[2].score.observe(5, 0)
  ts[2].outstanding = 3 // 5 x 4 = 20 < 50 x 1
  const picked = new Set(Array.from({ length: 200 }, () => b.pick()))
  t.same([...picked], [ts[2]], 'never the dearer one, never the one that cannot take it')
  ts[2].outstanding = 10 // 5 x 11 = 55 > 50
  t.equal(b.pick(), ts[1], 'its load counts: outstanding plus one')
  ts[2].up = false
  t.equal(b.pick(), ts[1], 'one left: that one, whatever it costs')
})

t.test('weights: the cost is per unit of weight', async (t) => {
  const heavy = Object.assign(new Sim('heavy', fast), { weight: 4 })
  const light = new Sim('light', fast)
  const b = new PeakEwmaP2C<Sim>(seeded(SEED + 4), () => 0)
  b.update([heavy, light])
  heavy.score.observe(10, 0)
  light.score.observe(10, 0)
  heavy.outstanding = 3 // 10 x 4 / 4 = 10 < 10 x 2 / 1
  light.outstanding = 1
  t.equal(b.pick(), heavy)
})

t.test('a target whose answer held its penalty with Retry-After is avoided until then, and comes back', async (t) => {
  const clock = { now: 0 }
  const ts = [new Sim('a', fast), new Sim('b', fast)]
  const b = new PeakEwmaP2C<Sim>(seeded(SEED + 5), () => clock.now)
  b.update(ts)
  ts[0].score.observe(2, 0)
  ts[1].score.observe(2, 0)
  ts[1].score.fail(2, 0, 20_000)
  ts[0].outstanding = 20 // 2 x 21 = 42, far under the held penalty
  clock.now = 19_000
  t.equal(b.pick(), ts[0], 'held: the other one, however busy')
  clock.now = 20_000 + 8 * PENALTY_DECAY
  ts[0].score.observe(2, clock.now) // a kept answering in 2 ms, busy as it was
  t.equal(b.pick(), ts[1], 'the hold over and the penalty decayed: it is picked again')
})

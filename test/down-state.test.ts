import t from 'tap'
import fc from 'fast-check'
import { TargetDownState, isTrial } from '../lib/down-state.js'
import type { DownEvent, DownState, Ticket } from '../lib/down-state.js'
import { skipInterval } from '../lib/backoff.js'

const INTERVAL = 1000
const MAX = 8000

function machine (trials = 1): { s: TargetDownState, events: Array<{ event: DownEvent, reason: string }> } {
  const events: Array<{ event: DownEvent, reason: string }> = []
  const s = new TargetDownState({
    interval: INTERVAL,
    maxInterval: MAX,
    trials: (cause) => cause === 'breaker' ? trials : 1,
    onChange: (event, _cause, reason) => { events.push({ event, reason }) }
  })
  return { s, events }
}

t.test('one outage is one failure: twelve attempts in flight when the target dies skip it once, for retryInterval', async (t) => {
  const { s, events } = machine()
  const tickets = Array.from({ length: 12 }, () => s.begin(0, false))
  for (const ticket of tickets) s.fail(ticket, 'connect', 'connect_refused', 5)
  t.match(s.state, { kind: 'skipped', since: 5, until: 5 + INTERVAL, failedTrials: 0 })
  t.same(events.map((e) => e.event), ['down'], 'one move out of rotation, logged once')
})

t.test('a success that began before the outage does not end it (a target shutting down gracefully does not flap)', async (t) => {
  const { s, events } = machine()
  const before = s.begin(0, false)
  const dying = s.begin(0, false)
  s.fail(dying, 'connect', 'connect_refused', 10)
  s.succeed(before)
  t.equal(s.state.kind, 'skipped', 'still out')
  t.same(events.map((e) => e.event), ['down'])
})

t.test('the skip doubles only when a trial fails, up to maxRetryInterval; a passing trial ends it', async (t) => {
  const { s } = machine()
  s.fail(s.begin(0, false), 'connect', 'refused', 0)
  t.equal(s.canBegin(999, false), false)
  t.equal(s.canBegin(1000, false), true, 'its trial, at the end of the skip')
  const first = s.begin(1000, false)
  t.ok(isTrial(first))
  t.equal(s.canBegin(1000, false), false, 'one trial at a time')
  s.fail(first, 'connect', 'refused', 1010)
  t.match(s.state, { kind: 'skipped', until: 1010 + 2000, failedTrials: 1, since: 0 })
  let now = 3010
  for (const expected of [4000, 8000, 8000]) {
    const trial = s.begin(now, false)
    s.fail(trial, 'connect', 'refused', now)
    t.equal((s.state as { until: number }).until - now, expected, `then ${expected} ms`)
    now += expected
  }
  s.succeed(s.begin(now, false))
  t.same(s.state, { kind: 'up', epoch: s.epoch })
  s.fail(s.begin(now, false), 'connect', 'refused', now)
  t.equal((s.state as { until: number }).until - now, INTERVAL, 'a new outage starts from retryInterval again')
})

t.test('breaker: halfOpenRequests trials must all pass; a trial cut short by the client may run again', async (t) => {
  const { s, events } = machine(2)
  s.fail(s.begin(0, false), 'breaker', 'failures: 5 in a row', 0)
  const a = s.begin(1000, false)
  const b = s.begin(1000, false)
  t.equal(s.canBegin(1000, false), false, 'two trials in flight, two needed')
  s.abandon(b)
  t.equal(s.canBegin(1000, false), true, 'the abandoned one may run again')
  const c = s.begin(1000, false)
  s.succeed(a)
  t.equal(s.state.kind, 'trying', 'one of two passed')
  s.succeed(c)
  t.equal(s.state.kind, 'up')
  t.same(events.map((e) => e.event), ['down', 'up'])
})

t.test('quick trials: with no target in rotation, spaced from a hundredth of retryInterval, doubling; they leave the skip as it was', async (t) => {
  const { s } = machine()
  s.fail(s.begin(0, false), 'connect', 'refused', 0)
  t.equal(s.canBegin(9, true), false, 'not before 10 ms')
  t.equal(s.canBegin(10, false), false, 'not while another target is in rotation')
  const q1 = s.begin(10, true)
  s.fail(q1, 'connect', 'refused', 11)
  t.match(s.state, { kind: 'skipped', until: 1000, failedTrials: 0, quickTrials: 1 }, 'the skip is unchanged')
  t.equal(s.canBegin(29, true), false, 'the next after 20 ms')
  const q2 = s.begin(30, true)
  s.succeed(q2)
  t.equal(s.state.kind, 'up', 'a quick trial that passes brings it back')
})

t.test('the next trial: the end of the skip, or the next quick one while no target is in rotation; once trials run, the last one\'s start', async (t) => {
  const { s } = machine()
  t.equal(s.nextTrial(false), null, 'none while up')
  s.fail(s.begin(0, false), 'connect', 'refused', 0)
  t.equal(s.nextTrial(false), 1000, 'the end of the skip')
  t.equal(s.nextTrial(true), 10, 'a quick one first, a hundredth of retryInterval after the skip began')
  s.fail(s.begin(10, true), 'connect', 'refused', 11)
  t.equal(s.nextTrial(true), 30, 'the next quick one twice as far from the last')
  s.begin(1000, false)
  t.equal(s.nextTrial(false), 1000, 'a trial runs: it began then')
})

t.test('an active check that connected ends a skip for failed connects, unless it began before the skip; one that passed lets a breaker\'s trials run at once', async (t) => {
  const { s } = machine()
  const early = s.epoch
  s.fail(s.begin(0, false), 'connect', 'refused', 0)
  s.probed(early, true, 0)
  t.equal(s.state.kind, 'skipped', 'a probe from before the outage says nothing')
  s.probed(s.epoch, false, 0)
  t.equal(s.state.kind, 'up', 'connecting is enough, whatever it answered')
  s.fail(s.begin(0, false), 'breaker', 'failures', 0)
  s.probed(s.epoch, false, 100)
  t.equal(s.state.kind, 'skipped', 'a check that connected but failed does nothing to a breaker')
  t.equal(s.retryIn(400), 600)
  s.probed(s.epoch, true, 400)
  t.equal(s.state.kind, 'skipped', 'a passing check does not close it either...')
  t.equal(s.canBegin(400, false), true, '...but its trials may run at once')
})

/**
 * Random interleavings of attempts (concurrent, overlapping), their results,
 * probes, quick-recovery windows and time, against a target whose truth
 * (accepting or not) the schedule changes. The truth decides each result:
 * an attempt or probe succeeds only if the target was up when it began and
 * when it ended.
 */
type Step =
  | { op: 'begin', quick: boolean }
  | { op: 'end', i: number }
  | { op: 'abandon', i: number }
  | { op: 'probe' }
  | { op: 'probeEnd', i: number }
  | { op: 'advance', ms: number }
  | { op: 'flip' }

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.boolean().map((quick) => ({ op: 'begin' as const, quick })) },
  { weight: 6, arbitrary: fc.nat(30).map((i) => ({ op: 'end' as const, i })) },
  { weight: 1, arbitrary: fc.nat(30).map((i) => ({ op: 'abandon' as const, i })) },
  { weight: 1, arbitrary: fc.constant({ op: 'probe' as const }) },
  { weight: 1, arbitrary: fc.nat(5).map((i) => ({ op: 'probeEnd' as const, i })) },
  { weight: 4, arbitrary: fc.integer({ min: 1, max: 3000 }).map((ms) => ({ op: 'advance' as const, ms })) },
  { weight: 2, arbitrary: fc.constant({ op: 'flip' as const }) }
)

const seed = Number(process.env.PROPERTY_SEED ?? Date.now() % 2 ** 31)

t.test(`property (seed ${seed}, replay with PROPERTY_SEED=${seed}): skip lengths depend only on failed trials; stale results move nothing; a recovered target is back by the end of its skip, or at once on a probe`, async (t) => {
  t.comment(`fast-check seed ${seed}`)
  await fc.assert(fc.property(fc.array(stepArb, { maxLength: 120 }), fc.boolean(), (steps, endWithProbe) => {
    const { s } = machine()
    let now = 0
    let truth = true
    let upSince = 0
    let downSince = -1
    const inflight: Array<{ ticket: Ticket, start: number, upAtStart: boolean }> = []
    const probes: Array<{ epoch: number, upAtStart: boolean }> = []
    let last: DownState = s.state
    // Every new skip lasts retryInterval doubled once per failed trial before it, capped: nothing else.
    const check = (): void => {
      const st = s.state
      if (st.kind === 'skipped' && st !== last) {
        const previous = last.kind === 'up' ? null : last.until
        if (st.until !== previous) {
          const want = skipInterval(st.failedTrials + 1, INTERVAL, MAX)
          if (st.until - now !== want) throw new Error(`a skip of ${st.until - now} ms after ${st.failedTrials} failed trials, not ${want}`)
        }
      }
      last = st
    }
    const epochOf = (ticket: Ticket): number => (ticket - (ticket & 1)) / 2
    for (const step of steps) {
      switch (step.op) {
        case 'begin':
          if (s.canBegin(now, step.quick)) inflight.push({ ticket: s.begin(now, step.quick), start: now, upAtStart: truth })
          break
        case 'end':
        case 'abandon': {
          const a = inflight.splice(step.i % Math.max(1, inflight.length), 1)[0]
          if (a === undefined) break
          const before = s.state
          if (step.op === 'abandon') s.abandon(a.ticket)
          else if (a.upAtStart && truth && downSince < a.start) s.succeed(a.ticket)
          else s.fail(a.ticket, 'connect', 'refused', now)
          if (epochOf(a.ticket) !== before.epoch && s.state !== before) throw new Error('a result of an earlier epoch moved the state')
          break
        }
        case 'probe':
          probes.push({ epoch: s.epoch, upAtStart: truth })
          break
        case 'probeEnd': {
          const p = probes.splice(step.i % Math.max(1, probes.length), 1)[0]
          if (p === undefined) break
          const before = s.state
          if (p.upAtStart && truth) s.probed(p.epoch, true, now)
          if (p.epoch !== before.epoch && s.state !== before) throw new Error('a probe of an earlier epoch moved the state')
          break
        }
        case 'advance':
          now += step.ms
          break
        case 'flip':
          truth = !truth
          if (truth) upSince = now
          else downSince = now
          break
      }
      check()
    }
    // From here the target stays up: what is in flight ends as it would, then
    // either a probe begun now brings it back at once, or one trial does at
    // the end of the skip in force.
    if (!truth) {
      truth = true
      upSince = now
    }
    for (const a of inflight.splice(0)) {
      if (a.upAtStart && downSince < a.start) s.succeed(a.ticket)
      else s.fail(a.ticket, 'connect', 'refused', now)
      check()
    }
    const st = s.state
    if (st.kind === 'up') return true
    if (endWithProbe) {
      s.probed(s.epoch, true, now)
      if (s.state.kind !== 'up') throw new Error('a probe begun after the recovery did not bring it back')
      return true
    }
    const by = st.kind === 'skipped' ? Math.max(now, st.until) : now
    if (!s.canBegin(by, false)) throw new Error(`no trial possible at ${by}, the end of the skip in force (${JSON.stringify(st)})`)
    s.succeed(s.begin(by, false))
    if (s.state.kind !== 'up') throw new Error(`a passing trial at ${by} left it ${s.state.kind}`)
    if (by - upSince > MAX) throw new Error(`back ${by - upSince} ms after it recovered, more than maxRetryInterval`)
    return true
  }), { seed, numRuns: 500 })
  t.pass('500 random schedules held every property')
})

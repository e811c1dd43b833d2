import t from 'tap'
import { IdleTimeoutLearner, MIN_MARGIN, SAMPLES } from '../lib/idle-timeout.js'

const IDLE_TIMEOUT = 300_000

t.test('nothing learned: no early retirement, the pool\'s idle timeout rules', async (t) => {
  const l = new IdleTimeoutLearner(IDLE_TIMEOUT)
  t.equal(l.learned, null)
  t.equal(l.retireAt(), Infinity)
})

t.test('the learned value is the lowest of the recent idle closes; retirement half below it, at least MIN_MARGIN', async (t) => {
  const l = new IdleTimeoutLearner(IDLE_TIMEOUT)
  l.closed(24)
  t.equal(l.learned, 24)
  l.closed(8)
  l.closed(30)
  t.equal(l.learned, 8, 'a later, later-seen close does not lengthen it')
  t.equal(l.closes, 3)
  t.equal(l.retireAt(), 8 - MIN_MARGIN, 'half of 8 is under the margin\'s floor')
  l.closed(6)
  t.equal(l.retireAt(), 1)
  const slow = new IdleTimeoutLearner(IDLE_TIMEOUT)
  slow.closed(60_000)
  t.equal(slow.retireAt(), 30_000, 'half of 60 s')
  const eager = new IdleTimeoutLearner(IDLE_TIMEOUT)
  eager.closed(5)
  t.ok(eager.retireAt() <= 0, 'a target that closes at once: no idle reuse')
})

t.test('an early close (a restart, say) ages out after SAMPLES later closes', async (t) => {
  const l = new IdleTimeoutLearner(IDLE_TIMEOUT)
  l.closed(1)
  for (let i = 0; i < SAMPLES - 1; i++) l.closed(20 + i % 3)
  t.equal(l.learned, 1, 'still within the last SAMPLES closes')
  l.closed(22)
  t.equal(l.learned, 20, 'gone from the window')
})

t.test('growing back: each watch that outlives twice the learned age replaces the lowest sample; the value rises only once every low one is replaced', async (t) => {
  const l = new IdleTimeoutLearner(IDLE_TIMEOUT)
  for (let i = 0; i < 4; i++) l.closed(20)
  t.equal(l.watchFor(), 40)
  const seen: number[] = []
  for (let i = 0; i < 12; i++) {
    l.survived(l.watchFor())
    seen.push(l.learned!)
  }
  t.same(seen.slice(0, 4), [20, 20, 20, 40], 'one survival is not enough: four samples of 20 are replaced first')
  t.ok(seen[11] > 40, `it keeps rising while watches outlive it (${seen.join(', ')})`)
  l.closed(25)
  t.equal(l.learned, 25, 'a close below brings it down at once')
})

t.test('a watch that reaches pool.idleTimeout: nothing learned any more', async (t) => {
  const l = new IdleTimeoutLearner(1000)
  l.closed(400)
  t.equal(l.watchFor(), 800)
  l.survived(l.watchFor())
  t.equal(l.learned, 800)
  t.equal(l.watchFor(), 1000, 'capped by the idle timeout')
  l.survived(l.watchFor())
  t.equal(l.learned, null)
  t.equal(l.retireAt(), Infinity)
  l.survived(1000)
  t.equal(l.learned, null, 'a survival with no sample teaches nothing')
})

import t from 'tap'
import { fullJitter, skipInterval } from '../lib/backoff.js'
import { seeded } from './helpers/random.js'

t.test('backoff: full jitter under a doubling cap', async (t) => {
  const r = seeded(7)
  const outside: string[] = []
  for (let n = 0; n < 10; n++) {
    const cap = Math.min(250, 25 * 2 ** n)
    for (let i = 0; i < 50; i++) {
      const d = fullJitter(n, 25, 250, r)
      if (!(d >= 0 && d < cap)) outside.push(`attempt ${n}: ${d} not in [0, ${cap})`)
    }
  }
  t.same(outside, [], '500 draws, each within [0, min(250, 25 x 2^n))')
  t.equal(fullJitter(3, 25, 250, () => 0.999999), 199, 'the top of the fourth wait')
  t.equal(fullJitter(40, 25, 250, () => 0.5), 125, 'capped, however many attempts')
})

t.test('skip interval: retryInterval, doubling per failure in a row, up to its max', async (t) => {
  t.same([1, 2, 3, 4, 5, 6, 7, 40].map((f) => skipInterval(f, 5000, 60000)), [5000, 10000, 20000, 40000, 60000, 60000, 60000, 60000])
})

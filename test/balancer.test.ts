import t from 'tap'
import { ConsistentHash, LeastRequest, RoundRobin, WeightedRandom, hash32, makeBalancer } from '../lib/balancer.js'
import type { Balancer, PickContext, Pickable } from '../lib/balancer.js'
import { seeded } from './helpers/random.js'

class T implements Pickable {
  readonly origin: string
  weight: number
  up = true
  outstanding = 0
  constructor (name: string, weight = 1) {
    this.origin = `http://${name}:80`
    this.weight = weight
  }

  canTake (): boolean { return this.up }
}

/** A request's context with a key (and nothing to avoid). */
function ctx (key: string | undefined): PickContext<T> {
  return { key, shouldSelectAnotherHost: () => false }
}

function targets (n: number, weight = (_i: number) => 1): T[] {
  return Array.from({ length: n }, (_, i) => new T(`t${i}`, weight(i)))
}

function counts (b: Balancer<T>, picks: number, key?: (i: number) => string): Map<T, number> {
  const m = new Map<T, number>()
  for (let i = 0; i < picks; i++) {
    const x = b.pick(ctx(key?.(i)))!
    m.set(x, (m.get(x) ?? 0) + 1)
  }
  return m
}

t.test('round-robin with equal weights rotates exactly', async (t) => {
  const ts = targets(3)
  const rr = new RoundRobin<T>()
  rr.update(ts)
  const seq = Array.from({ length: 9 }, () => rr.pick()!.origin)
  t.same(seq, [0, 1, 2, 0, 1, 2, 0, 1, 2].map((i) => ts[i].origin))
  t.same([...counts(rr, 300).values()], [100, 100, 100])
})

t.test('weighted round-robin is smooth: every prefix of picks is within one of each target\'s share', async (t) => {
  for (const weights of [[5, 1, 1], [3, 2, 1], [1, 10], [7, 7, 1, 3, 9, 2, 2, 5, 1, 4]]) {
    const ts = weights.map((w, i) => new T(`w${i}`, w))
    const rr = new RoundRobin<T>()
    rr.update(ts)
    const total = weights.reduce((a, b) => a + b, 0)
    const seen = new Map<T, number>()
    let worst = 0
    let run = 0
    let longest = 0
    let last: T | undefined
    for (let k = 1; k <= total * 10; k++) {
      const x = rr.pick()!
      seen.set(x, (seen.get(x) ?? 0) + 1)
      run = x === last ? run + 1 : 1
      last = x
      longest = Math.max(longest, run)
      for (const tt of ts) worst = Math.max(worst, Math.abs((seen.get(tt) ?? 0) - k * tt.weight / total))
    }
    t.ok(worst <= 1, `weights ${weights.join('/')}: largest deviation from the exact share ${worst.toFixed(2)} <= 1`)
    t.same(ts.map((tt) => seen.get(tt)), weights.map((w) => w * 10), 'exact counts over whole cycles')
    const heaviest = Math.max(...weights)
    t.ok(longest <= Math.ceil(heaviest / (total - heaviest)) + 1, `no burst to the heavy target (longest run ${longest})`)
  }
})

t.test('least-request: the target with fewer outstanding requests per weight wins the two choices', async (t) => {
  const ts = targets(3)
  const lr = new LeastRequest<T>(seeded(1))
  lr.update(ts)
  ts[0].outstanding = 50
  const c = counts(lr, 3000)
  t.ok((c.get(ts[0]) ?? 0) < 3000 / 27, `a busy target gets few picks (${c.get(ts[0]) ?? 0} of 3000)`)
  // Idle targets follow their weights.
  const w = [new T('a', 1), new T('b', 3)]
  const lw = new LeastRequest<T>(seeded(2))
  lw.update(w)
  const cw = counts(lw, 4000)
  const share = (cw.get(w[1]) ?? 0) / 4000
  t.ok(share > 0.7 && share < 0.95, `the heavier idle target gets most picks (${share.toFixed(2)})`)
  // Outstanding per unit of weight: b (weight 3) with 2 outstanding beats a (weight 1) with 1.
  w[0].outstanding = 1
  w[1].outstanding = 2
  const cmp = counts(lw, 1000)
  t.ok((cmp.get(w[1]) ?? 0) > 600, 'compared per unit of weight')
})

t.test('random is weighted', async (t) => {
  const ts = [new T('a', 1), new T('b', 2), new T('c', 7)]
  const r = new WeightedRandom<T>(seeded(3))
  r.update(ts)
  const c = counts(r, 20000)
  for (const [i, share] of [0.1, 0.2, 0.7].entries()) {
    const got = (c.get(ts[i]) ?? 0) / 20000
    t.ok(Math.abs(got - share) < 0.02, `${ts[i].origin}: ${got.toFixed(3)} ~ ${share}`)
  }
})

t.test('consistent-hash: a key always reaches the same target; removing 1 of 10 moves only its keys', async (t) => {
  const ts = targets(10)
  const ch = new ConsistentHash<T>(seeded(4))
  ch.update(ts)
  const keys = Array.from({ length: 10000 }, (_, i) => `user-${i}`)
  const before = keys.map((k) => ch.pick(ctx(k))!)
  t.same(keys.map((k) => ch.pick(ctx(k))!), before, 'stable')
  const loads = ts.map((x) => before.filter((b) => b === x).length)
  t.ok(Math.min(...loads) > 600 && Math.max(...loads) < 1400, `spread over the ring: ${loads.join(' ')}`)
  const removed = ts[3]
  ch.update(ts.filter((x) => x !== removed))
  const after = keys.map((k) => ch.pick(ctx(k))!)
  const moved = keys.filter((_, i) => after[i] !== before[i]).length
  t.ok(moved <= 10000 * 0.12, `${moved} of 10000 keys moved (about a tenth)`)
  t.ok(keys.every((_, i) => after[i] === before[i] || before[i] === removed), 'only the removed target\'s keys moved')
  // Unavailable: the key walks on to the next target on the ring, and comes back.
  ch.update(ts)
  const k = keys.find((_, i) => before[i] === ts[5])!
  ts[5].up = false
  const elsewhere = ch.pick(ctx(k))!
  t.not(elsewhere, ts[5])
  t.equal(ch.pick(ctx(k)), elsewhere, 'the same next target every time')
  ts[5].up = true
  t.equal(ch.pick(ctx(k)), ts[5], 'back when it can take requests again')
  t.type(ch.pick(), T, 'without a key: least request')
  t.equal(hash32('abc'), hash32('abc'))
  t.not(hash32('abc'), hash32('abd'))
})

t.test('every policy skips targets that cannot take a request, through the one predicate', async (t) => {
  for (const policy of ['round-robin', 'least-request', 'random', 'consistent-hash', 'peak-ewma'] as const) {
    const ts = targets(5)
    const b = makeBalancer<T>(policy, seeded(5))
    b.update(ts)
    ts[1].up = false
    ts[3].up = false
    const picked = new Set(Array.from({ length: 500 }, (_, i) => b.pick(ctx(`k${i}`))))
    t.notOk(picked.has(ts[1]) || picked.has(ts[3]), `${policy}: never an unavailable target`)
    t.equal(picked.size, 3, `${policy}: every available one is used`)
    for (const x of ts) x.up = false
    t.equal(b.pick(ctx('k')), undefined, `${policy}: none when none can take it`)
    b.update([])
    t.equal(b.pick(ctx('k')), undefined, `${policy}: none when there are no targets`)
  }
})

t.test('every policy avoids the targets a request\'s context names (Envoy\'s shouldSelectAnotherHost), and only for that request', async (t) => {
  for (const policy of ['round-robin', 'least-request', 'random', 'consistent-hash', 'peak-ewma'] as const) {
    const ts = targets(4)
    const b = makeBalancer<T>(policy, seeded(9))
    b.update(ts)
    const tried = new Set([ts[0], ts[2]])
    const retry: PickContext<T> = { key: 'k', shouldSelectAnotherHost: (x) => tried.has(x) }
    const picked = new Set(Array.from({ length: 200 }, () => b.pick(retry)))
    t.notOk(picked.has(ts[0]) || picked.has(ts[2]), `${policy}: never a target the retry tried`)
    t.ok(picked.has(ts[1]) || picked.has(ts[3]), `${policy}: one it did not`)
    const others = new Set(Array.from({ length: 400 }, (_, i) => b.pick(ctx(`o${i}`))))
    t.ok(others.has(ts[0]) && others.has(ts[2]), `${policy}: another request still reaches them`)
    tried.add(ts[1]).add(ts[3])
    t.equal(b.pick(retry), undefined, `${policy}: none when the context rules out every target`)
  }
})

t.test('round-robin: a target that could not serve earns no credit meanwhile (no burst when it returns)', async (t) => {
  const ts = targets(3)
  const rr = new RoundRobin<T>()
  rr.update(ts)
  ts[0].up = false
  for (let i = 0; i < 100; i++) rr.pick()
  ts[0].up = true
  const next = Array.from({ length: 6 }, () => rr.pick())
  t.ok(next.filter((x) => x === ts[0]).length <= 3, 'it rejoins the rotation, it does not take every request')
})

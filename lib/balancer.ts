import type { BalancePolicy } from '../types/index.js'

/** What a balancer needs of a target. */
export interface Pickable {
  readonly origin: string
  readonly weight: number
  /** In rotation and able to take a request now: the one predicate every policy uses. */
  canTake (): boolean
  /** Requests outstanding on it now. */
  readonly outstanding: number
}

/** A source of uniform numbers in [0, 1): Math.random, or a seeded one in tests. */
export type Random = () => number

/**
 * Picks a target for a request among those that can take one now. Every
 * policy skips the others through `Pickable#canTake()`, never its own rule.
 * `update()` is called with the whole list whenever targets come, go or change weight.
 */
export interface Balancer<T extends Pickable = Pickable> {
  update (targets: readonly T[]): void
  /** A target, or undefined when none can take the request. `key` is for consistent hashing. */
  pick (key?: string): T | undefined
}

/** Tries a few random draws before scanning: O(1) while most targets can take requests. */
const RANDOM_TRIES = 4

/** The first target, from a start index, that can take a request (the slow path). */
function scanFrom<T extends Pickable> (targets: readonly T[], start: number): T | undefined {
  const n = targets.length
  for (let i = 0; i < n; i++) {
    const t = targets[(start + i) % n]
    if (t.canTake()) return t
  }
  return undefined
}

interface Entry<T> {
  target: T
  deadline: number
  /** Insertion order: ties go to the earlier one, so equal weights make plain round-robin. */
  seq: number
}

/**
 * Weighted round-robin as an earliest-deadline-first schedule (Envoy's EDF
 * scheduler): each target's next turn comes 1/weight after its last, so weights
 * are honoured smoothly (no bursts to the heavy target, like NGINX's smooth
 * weighted round-robin) and equal weights give exact rotation. O(log n) a pick.
 */
export class RoundRobin<T extends Pickable = Pickable> implements Balancer<T> {
  #heap: Array<Entry<T>> = []
  #now = 0
  #seq = 0
  #skipped: Array<Entry<T>> = []

  update (targets: readonly T[]): void {
    const old = new Map(this.#heap.map((e) => [e.target, e]))
    this.#heap = []
    for (const t of targets) {
      const prev = old.get(t)
      this.#push(prev ?? { target: t, deadline: this.#now + 1 / t.weight, seq: this.#seq++ })
    }
  }

  pick (): T | undefined {
    const heap = this.#heap
    let found: Entry<T> | undefined
    while (heap.length > 0) {
      const e = this.#pop()
      if (e.target.canTake()) {
        found = e
        break
      }
      this.#skipped.push(e)
    }
    // Skipped targets keep their place, but earn no credit while they could not serve.
    for (const e of this.#skipped) {
      if (e.deadline < this.#now) e.deadline = this.#now
      this.#push(e)
    }
    this.#skipped.length = 0
    if (found === undefined) return undefined
    this.#now = found.deadline
    found.deadline += 1 / found.target.weight
    found.seq = this.#seq++
    this.#push(found)
    return found.target
  }

  #less (a: Entry<T>, b: Entry<T>): boolean {
    return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq)
  }

  #push (e: Entry<T>): void {
    const heap = this.#heap
    heap.push(e)
    let i = heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.#less(heap[i], heap[parent])) break
      const tmp = heap[i]
      heap[i] = heap[parent]
      heap[parent] = tmp
      i = parent
    }
  }

  #pop (): Entry<T> {
    const heap = this.#heap
    const top = heap[0]
    const last = heap.pop()!
    if (heap.length > 0) {
      heap[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < heap.length && this.#less(heap[l], heap[m])) m = l
        if (r < heap.length && this.#less(heap[r], heap[m])) m = r
        if (m === i) break
        const tmp = heap[i]
        heap[i] = heap[m]
        heap[m] = tmp
        i = m
      }
    }
    return top
  }
}

/** Prefix sums of weights, for weighted draws by binary search. */
class WeightIndex<T extends Pickable> {
  targets: readonly T[] = []
  #cumulative: number[] = []
  total = 0

  update (targets: readonly T[]): void {
    this.targets = targets.slice()
    this.#cumulative = []
    let sum = 0
    for (const t of this.targets) {
      sum += t.weight
      this.#cumulative.push(sum)
    }
    this.total = sum
  }

  /** The target whose weight interval holds r in [0, 1). */
  draw (r: number): T {
    const x = r * this.total
    const c = this.#cumulative
    let lo = 0
    let hi = c.length - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (c[mid] > x) hi = mid
      else lo = mid + 1
    }
    return this.targets[lo]
  }
}

/** Weighted random: O(log n) a draw. */
export class WeightedRandom<T extends Pickable = Pickable> implements Balancer<T> {
  readonly #index = new WeightIndex<T>()
  readonly #random: Random

  constructor (random: Random) {
    this.#random = random
  }

  update (targets: readonly T[]): void {
    this.#index.update(targets)
  }

  pick (): T | undefined {
    const index = this.#index
    if (index.targets.length === 0) return undefined
    for (let i = 0; i < RANDOM_TRIES; i++) {
      const t = index.draw(this.#random())
      if (t.canTake()) return t
    }
    return scanFrom(index.targets, Math.floor(this.#random() * index.targets.length))
  }
}

/**
 * Least request, by the power of two choices (Envoy's default): two targets
 * drawn at random by weight, the one with fewer outstanding requests per unit
 * of weight wins. O(1) a pick, and it never herds every request onto the one
 * target that looked idlest a moment ago.
 */
export class LeastRequest<T extends Pickable = Pickable> implements Balancer<T> {
  readonly #index = new WeightIndex<T>()
  readonly #random: Random

  constructor (random: Random) {
    this.#random = random
  }

  update (targets: readonly T[]): void {
    this.#index.update(targets)
  }

  pick (): T | undefined {
    const index = this.#index
    const n = index.targets.length
    if (n === 0) return undefined
    let a: T | undefined
    let b: T | undefined
    for (let i = 0; i < RANDOM_TRIES && b === undefined; i++) {
      const t = index.draw(this.#random())
      if (!t.canTake()) continue
      if (a === undefined) a = t
      else if (t !== a || n === 1) b = t
    }
    if (a === undefined) return scanFrom(index.targets, Math.floor(this.#random() * n))
    if (b === undefined || b === a) return a
    // Fewer outstanding per unit of weight; (x + 1) so idle targets still follow their weights.
    return (a.outstanding + 1) * b.weight <= (b.outstanding + 1) * a.weight ? a : b
  }
}

/** FNV-1a, 32 bits, then a murmur3 finalizer so close keys spread over the ring. */
export function hash32 (s: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** Points on the ring per unit of weight. */
const POINTS_PER_WEIGHT = 100
/** At most this many points per target, whatever its weight. */
const MAX_POINTS = 10_000

/**
 * Consistent hashing on a ring (Ketama): each target holds points in proportion
 * to its weight; a key goes to the first point at or after its hash. Removing a
 * target moves only the keys it held; a key whose target cannot take requests
 * walks on to the next target on the ring, and returns when it can again.
 * O(log points) a pick. Without a key it falls back to least request.
 */
export class ConsistentHash<T extends Pickable = Pickable> implements Balancer<T> {
  #hashes = new Uint32Array(0)
  #owners: T[] = []
  readonly #fallback: LeastRequest<T>

  constructor (random: Random) {
    this.#fallback = new LeastRequest<T>(random)
  }

  update (targets: readonly T[]): void {
    this.#fallback.update(targets)
    const points: Array<[number, T]> = []
    for (const t of targets) {
      const count = Math.min(MAX_POINTS, POINTS_PER_WEIGHT * t.weight)
      for (let i = 0; i < count; i++) points.push([hash32(`${t.origin}#${i}`), t])
    }
    points.sort((x, y) => x[0] - y[0] || (x[1].origin < y[1].origin ? -1 : 1))
    this.#hashes = Uint32Array.from(points, (p) => p[0])
    this.#owners = points.map((p) => p[1])
  }

  pick (key?: string): T | undefined {
    if (key === undefined) return this.#fallback.pick()
    const hashes = this.#hashes
    const n = hashes.length
    if (n === 0) return undefined
    const h = hash32(key)
    let lo = 0
    let hi = n
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (hashes[mid] < h) lo = mid + 1
      else hi = mid
    }
    const owners = this.#owners
    // Walk the ring to the next target that can take it; each target is asked once.
    let last: T | undefined
    for (let i = 0; i < n; i++) {
      const t = owners[(lo + i) % n]
      if (t === last) continue
      if (t.canTake()) return t
      last = t
    }
    return undefined
  }
}

export function makeBalancer<T extends Pickable> (policy: BalancePolicy, random: Random): Balancer<T> {
  switch (policy) {
    case 'round-robin': return new RoundRobin<T>()
    case 'random': return new WeightedRandom<T>(random)
    case 'consistent-hash': return new ConsistentHash<T>(random)
    default: return new LeastRequest<T>(random)
  }
}

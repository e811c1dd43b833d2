import type { BalancePolicy } from '../types/index.js'
import { DEFAULT_RTT } from './peak-ewma.js'

/** What a balancer needs of a target. */
export interface Pickable {
  readonly origin: string
  readonly weight: number
  /** In rotation and able to take a request now (a tunnel: outside the connection caps): the one predicate every policy uses. */
  canTake (tunnel?: boolean): boolean
  /** Requests outstanding on it now. */
  readonly outstanding: number
  /** Its latency and failure score (see peak-ewma.ts), for peak EWMA; a target without one counts as DEFAULT_RTT. */
  readonly score?: Scored
}

/** What peak EWMA reads of a target: its cost per outstanding request now, ms. Reads only. */
export interface Scored {
  score (now: number): number
  /** Whether an answer has been timed yet. */
  readonly sampled: boolean
  /** Whether it answered or failed lately: its score is measured now, not only decaying. */
  current (now: number): boolean
  /** The mean age of its attempts waiting for an answer now, ms (0 with none): a bound from below on its latency. */
  waitedFor (now: number): number
}

/**
 * A target's cost for peak EWMA: its score times its outstanding requests plus
 * one. One not timed yet (new, or just added) costs nothing while it has no
 * request outstanding, so it is tried at once, one request at a time, until
 * its first answer gives it a score (as Finagle's cold endpoints).
 */
function costOf (t: Pickable & { readonly score?: Scored }, score: number): number {
  const s = t.score
  if ((s === undefined || !s.sampled) && t.outstanding === 0) return 0
  return score * (t.outstanding + 1)
}

/** A target's score now (ms per outstanding request): before its first answer DEFAULT_RTT, or its attempts' mean wait when longer. */
function scoreOf (t: Pickable, now: number): number {
  const s = t.score
  if (s === undefined) return DEFAULT_RTT
  if (s.sampled) return s.score(now)
  const w = s.waitedFor(now)
  return w > DEFAULT_RTT ? w : DEFAULT_RTT
}

/**
 * Two scores within this factor of each other are the same to peak EWMA: the
 * estimate is the slowest recent answer, so equal targets' estimates differ by
 * which of them drew the last slow answer (a pause anywhere on the path), and
 * weighing that as latency moved one equal target's share 2-9% over 10 s
 * (bench:cold, 5 rounds: median 6.2%; with a band of 2, 1.8% and up to 5.7%;
 * with 3, 0.3-1.1%). Within the band the fewer outstanding requests per unit
 * of weight win (least request, which by itself sends less to a target that
 * answers a little slower); past it the
 * cost does, so a target 200 ms slow or answering fast 5xx (its score tens of
 * times another's) still loses every draw. Only scores measured now count as
 * alike (both targets answered within the estimate's decay time): a target
 * shunned for being slow, its estimate fallen by time alone, is compared by
 * cost, so it gets one or a few requests to be measured again, not the
 * others' load.
 */
export const SCORE_BAND = 3

/** Whether a and b are alike to peak EWMA now: both measured lately, their scores within SCORE_BAND of each other. */
function alike (a: Pickable, sa: number, b: Pickable, sb: number, now: number): boolean {
  return sa <= sb * SCORE_BAND && sb <= sa * SCORE_BAND &&
    a.score?.sampled === true && b.score?.sampled === true && a.score.current(now) && b.score.current(now)
}

/** A source of uniform numbers in [0, 1): Math.random, or a seeded one in tests. */
export type Random = () => number

/**
 * What a request tells the balancer (Envoy's `LoadBalancerContext`): its
 * consistent-hash key, and, for a retry, which targets it must not use again
 * (`shouldSelectAnotherHost`). Each request carries its own: nothing shared
 * is changed to steer a pick.
 */
export interface PickContext<T extends Pickable = Pickable> {
  readonly key: string | undefined
  /** A tunnel (a WebSocket upgrade): it holds a connection of its own, so the connection caps do not apply. */
  readonly tunnel?: boolean
  shouldSelectAnotherHost (target: T): boolean
}

/**
 * Picks a target for a request among those that can take one now. Every
 * policy skips the others through `Pickable#canTake()` and the request's
 * context, never a rule of its own. `update()` is called with the whole list
 * whenever targets come, go or change weight.
 */
export interface Balancer<T extends Pickable = Pickable> {
  update (targets: readonly T[]): void
  /** A target, or undefined when none can take the request. */
  pick (context?: PickContext<T>): T | undefined
}

/** Whether the request may go to this target now. */
function fits<T extends Pickable> (t: T, context: PickContext<T> | undefined): boolean {
  return context === undefined ? t.canTake() : t.canTake(context.tunnel === true) && !context.shouldSelectAnotherHost(t)
}

/** Tries a few random draws before scanning: O(1) while most targets can take requests. */
const RANDOM_TRIES = 4

/** The first target, from a start index, that can take the request (the slow path). */
function scanFrom<T extends Pickable> (targets: readonly T[], start: number, context: PickContext<T> | undefined): T | undefined {
  const n = targets.length
  for (let i = 0; i < n; i++) {
    const t = targets[(start + i) % n]
    if (fits(t, context)) return t
  }
  return undefined
}

/**
 * Round-robin. With equal weights, exact rotation: O(1) a pick. With weights,
 * NGINX's smooth weighted round-robin: each pick adds every target's weight to
 * its current value and takes the largest, which then gives back the total; so
 * {5, 1, 1} goes a a b a c a a, never a burst to the heavy target. That is O(n)
 * a pick, as in NGINX: the schedules that are O(log n) (EDF, stride) send the
 * heavy target its whole share in a row when the light ones' turns coincide.
 */
export class RoundRobin<T extends Pickable = Pickable> implements Balancer<T> {
  #targets: readonly T[] = []
  #current: Float64Array = new Float64Array(0)
  #weighted = false
  #next = 0

  update (targets: readonly T[]): void {
    const previous = new Map(this.#targets.map((t, i) => [t, this.#current[i]]))
    this.#targets = targets.slice()
    this.#current = Float64Array.from(this.#targets, (t) => previous.get(t) ?? 0)
    this.#weighted = this.#targets.some((t) => t.weight !== this.#targets[0].weight)
    if (this.#next >= this.#targets.length) this.#next = 0
  }

  pick (context?: PickContext<T>): T | undefined {
    const targets = this.#targets
    const n = targets.length
    if (!this.#weighted) {
      for (let i = 0; i < n; i++) {
        const j = (this.#next + i) % n
        if (fits(targets[j], context)) {
          this.#next = (j + 1) % n
          return targets[j]
        }
      }
      return undefined
    }
    const current = this.#current
    let best = -1
    let total = 0
    for (let i = 0; i < n; i++) {
      const t = targets[i]
      // A target that cannot serve takes no part, and earns no credit meanwhile.
      if (!fits(t, context)) continue
      current[i] += t.weight
      total += t.weight
      if (best === -1 || current[i] > current[best]) best = i
    }
    if (best === -1) return undefined
    current[best] -= total
    return targets[best]
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

/** The targets, drawn at random by weight. */
abstract class WeightedDraws<T extends Pickable> implements Balancer<T> {
  protected readonly index = new WeightIndex<T>()
  protected readonly random: Random

  constructor (random: Random) {
    this.random = random
  }

  /** The second candidate of the last `drawTwo()`, undefined when none was drawn. */
  protected second: T | undefined = undefined

  update (targets: readonly T[]): void {
    this.index.update(targets)
  }

  /**
   * The power of two choices' draws: up to RANDOM_TRIES weighted draws of
   * targets that fit the request; the first is returned, a second one other
   * than it (with `alone`, the same one when it is the only target) is left in
   * `second`. Nothing is allocated.
   */
  protected drawTwo (context: PickContext<T> | undefined, alone: boolean): T | undefined {
    const index = this.index
    let a: T | undefined
    let b: T | undefined
    for (let i = 0; i < RANDOM_TRIES && b === undefined; i++) {
      const t = index.draw(this.random())
      if (!fits(t, context)) continue
      if (a === undefined) a = t
      else if (t !== a || alone) b = t
    }
    this.second = b
    return a
  }

  abstract pick (context?: PickContext<T>): T | undefined
}

/** Weighted random: O(log n) a draw. */
export class WeightedRandom<T extends Pickable = Pickable> extends WeightedDraws<T> {
  pick (context?: PickContext<T>): T | undefined {
    const index = this.index
    if (index.targets.length === 0) return undefined
    for (let i = 0; i < RANDOM_TRIES; i++) {
      const t = index.draw(this.random())
      if (fits(t, context)) return t
    }
    return scanFrom(index.targets, Math.floor(this.random() * index.targets.length), context)
  }
}

/**
 * Least request, by the power of two choices (Envoy's default): two targets
 * drawn at random by weight, the one with fewer outstanding requests per unit
 * of weight wins. O(1) a pick, and it never herds every request onto the one
 * target that looked idlest a moment ago.
 */
export class LeastRequest<T extends Pickable = Pickable> extends WeightedDraws<T> {
  pick (context?: PickContext<T>): T | undefined {
    const index = this.index
    const n = index.targets.length
    if (n === 0) return undefined
    const a = this.drawTwo(context, n === 1)
    const b = this.second
    if (a === undefined) return scanFrom(index.targets, Math.floor(this.random() * n), context)
    if (b === undefined || b === a) return a
    // Fewer outstanding per unit of weight wins; on a tie (idle targets) the first
    // draw does, and the draws follow the weights.
    return a.outstanding * b.weight <= b.outstanding * a.weight ? a : b
  }
}

/**
 * Peak EWMA with the power of two choices (Finagle's and Linkerd's): two
 * distinct targets drawn at random by weight among those that can take the
 * request; the cheaper wins, where a target's cost is its score (latency
 * estimate plus failure penalty, see peak-ewma.ts) times its outstanding
 * requests plus one, per unit of weight. O(1) a pick. A slow target, or one
 * answering fast 5xx, loses nearly every draw from its first answers on, with
 * no warm-up and no detector's interval; two targets both measured lately,
 * their scores within SCORE_BAND of each other, are compared by outstanding
 * requests alone (least request).
 */
export class PeakEwmaP2C<T extends Pickable = Pickable> extends WeightedDraws<T> {
  readonly #now: () => number

  constructor (random: Random, now: () => number) {
    super(random)
    this.#now = now
  }

  pick (context?: PickContext<T>): T | undefined {
    const index = this.index
    const n = index.targets.length
    if (n === 0) return undefined
    let a = this.drawTwo(context, false)
    let b = this.second
    if (a === undefined) {
      a = scanFrom(index.targets, Math.floor(this.random() * n), context)
      if (a === undefined) return undefined
    }
    // Few targets fit (or the draws kept finding the same): a second, distinct, by a scan.
    if (b === undefined && n > 1) {
      const start = Math.floor(this.random() * n)
      for (let i = 0; i < n; i++) {
        const t = index.targets[(start + i) % n]
        if (t !== a && fits(t, context)) {
          b = t
          break
        }
      }
    }
    if (b === undefined) return a
    const now = this.#now()
    const sa = scoreOf(a, now)
    const sb = scoreOf(b, now)
    if (alike(a, sa, b, sb, now)) return a.outstanding * b.weight <= b.outstanding * a.weight ? a : b
    const ca = costOf(a, sa) * b.weight
    const cb = costOf(b, sb) * a.weight
    // On a tie (targets alike and idle) the first draw wins: the draws follow the weights.
    return ca <= cb ? a : b
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

  pick (context?: PickContext<T>): T | undefined {
    const key = context?.key
    if (key === undefined) return this.#fallback.pick(context)
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
      if (fits(t, context)) return t
      last = t
    }
    return undefined
  }
}

export function makeBalancer<T extends Pickable> (policy: BalancePolicy, random: Random, now: () => number = Date.now): Balancer<T> {
  switch (policy) {
    case 'peak-ewma': return new PeakEwmaP2C<T>(random, now)
    case 'round-robin': return new RoundRobin<T>()
    case 'random': return new WeightedRandom<T>(random)
    case 'consistent-hash': return new ConsistentHash<T>(random)
    default: return new LeastRequest<T>(random)
  }
}

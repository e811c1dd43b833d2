import type { TargetWindowStats } from '../types/index.js'

/** Seconds the window covers, one bucket each. */
export const WINDOW_SECONDS = 60
/** The rate is the mean over this many most recent seconds (the current one, begun, included). */
export const RATE_SECONDS = 10
/**
 * The request path's quantile (hedging's delay) reads this many most recent
 * seconds: over the whole minute, a burst of load a minute ago kept the
 * delay at its p95 (20 ms where 2 ms was usual now) for as long.
 */
export const QUANTILE_SECONDS = 10
/** The outcome of an attempt that failed with no answer (connect, reset, timeout, malformed answer); 0..4 are answers 1xx..5xx. */
export const FAILED = 5

const CLASSES = 6
/** Per bucket: the six outcome counts, then the retries. */
const RETRIES = CLASSES
const FIELDS = CLASSES + 1
/** Latency buckets: the first up to 1 ms, then three per doubling (each 26% wide), the last open-ended (past about 20 min). */
const LATENCY_BUCKETS = 64
const PER_DOUBLING = 3

/** The latency bucket of `ms`. */
export function latencyBucket (ms: number): number {
  if (!(ms > 1)) return 0
  const i = Math.ceil(PER_DOUBLING * Math.log2(ms))
  return i < LATENCY_BUCKETS ? i : LATENCY_BUCKETS - 1
}

/** The upper bound (ms) of a latency bucket (the last one's is the largest latency seen). */
export function bucketBound (i: number): number {
  return i === 0 ? 1 : 2 ** (i / PER_DOUBLING)
}

/**
 * What a target's attempts came to over the last minute: 60 one-second
 * buckets in a ring, each with the attempts by outcome (answers by status
 * class, failures with no answer), the retries, the largest latency and a
 * log-bucketed latency histogram. Recording is O(1) and allocates nothing
 * (a bucket of an earlier second is cleared when its slot comes round
 * again); reading sums the buckets of the last 60 seconds, so what a target
 * did decays out of the window when it gets no more attempts. The clock is
 * injected.
 */
export class RollingWindow {
  readonly #now: () => number
  /** The second each bucket holds (ms / 1000, floored); -Infinity for none. */
  readonly #second = new Float64Array(WINDOW_SECONDS).fill(-Infinity)
  readonly #counts = new Uint32Array(WINDOW_SECONDS * FIELDS)
  readonly #latency = new Uint32Array(WINDOW_SECONDS * LATENCY_BUCKETS)
  readonly #max = new Float64Array(WINDOW_SECONDS)
  /** A quantile read on the request path (hedging): the second it was read in, which one, its value; and the sums it was read from. */
  #qSecond = -Infinity
  #q = -1
  #qValue = 0
  readonly #sums = new Uint32Array(LATENCY_BUCKETS)

  constructor (now: () => number) {
    this.#now = now
  }

  /**
   * An attempt ended now: its outcome (0..4 for an answer 1xx..5xx, FAILED
   * for none), whether it was retried on another target, its latency (ms).
   */
  record (outcome: number, retried: boolean, latency: number): void {
    const second = Math.floor(this.#now() / 1000)
    const slot = ((second % WINDOW_SECONDS) + WINDOW_SECONDS) % WINDOW_SECONDS
    if (this.#second[slot] !== second) {
      this.#second[slot] = second
      this.#counts.fill(0, slot * FIELDS, slot * FIELDS + FIELDS)
      this.#latency.fill(0, slot * LATENCY_BUCKETS, slot * LATENCY_BUCKETS + LATENCY_BUCKETS)
      this.#max[slot] = 0
    }
    this.#counts[slot * FIELDS + outcome]++
    if (retried) this.#counts[slot * FIELDS + RETRIES]++
    this.#latency[slot * LATENCY_BUCKETS + latencyBucket(latency)]++
    if (latency > this.#max[slot]) this.#max[slot] = latency
  }

  /**
   * The latency (ms) under which a fraction q of the attempts of the last
   * QUANTILE_SECONDS ended (as `snapshot()` reads p99 over the minute), or
   * null while they are fewer than `min`. For
   * the request path: a value is read at most once a second per q, then kept
   * for the rest of that second; allocates nothing.
   */
  quantile (q: number, min: number): number | null {
    const now = this.#now()
    const current = Math.floor(now / 1000)
    if (current === this.#qSecond && q === this.#q) return this.#qValue
    const sums = this.#sums.fill(0)
    let total = 0
    let max = 0
    for (let k = 0; k < QUANTILE_SECONDS; k++) {
      const second = current - k
      const slot = ((second % WINDOW_SECONDS) + WINDOW_SECONDS) % WINDOW_SECONDS
      if (this.#second[slot] !== second) continue
      const base = slot * LATENCY_BUCKETS
      for (let b = 0; b < LATENCY_BUCKETS; b++) {
        const n = this.#latency[base + b]
        sums[b] += n
        total += n
      }
      if (this.#max[slot] > max) max = this.#max[slot]
    }
    // Too few to tell: asked again on the next request (a target warming up gets its value as soon as it has one).
    if (total < min) return null
    this.#qSecond = current
    this.#q = q
    this.#qValue = quantile(sums, total, q, max)!
    return this.#qValue
  }

  /** The last 60 seconds, summed; per second for the series (oldest first, the current second last). Reads only. */
  snapshot (): TargetWindowStats {
    const now = this.#now()
    const current = Math.floor(now / 1000)
    const classes = [0, 0, 0, 0, 0, 0]
    let retries = 0
    let recent = 0
    let max = 0
    const requests: number[] = new Array(WINDOW_SECONDS).fill(0)
    const failures: number[] = new Array(WINDOW_SECONDS).fill(0)
    const histogram = new Array<number>(LATENCY_BUCKETS).fill(0)
    for (let k = 0; k < WINDOW_SECONDS; k++) {
      const second = current - (WINDOW_SECONDS - 1) + k
      const slot = ((second % WINDOW_SECONDS) + WINDOW_SECONDS) % WINDOW_SECONDS
      if (this.#second[slot] !== second) continue
      const base = slot * FIELDS
      let total = 0
      for (let c = 0; c < CLASSES; c++) {
        const n = this.#counts[base + c]
        classes[c] += n
        total += n
      }
      retries += this.#counts[base + RETRIES]
      requests[k] = total
      failures[k] = this.#counts[base + 4] + this.#counts[base + FAILED]
      if (k >= WINDOW_SECONDS - RATE_SECONDS) recent += total
      if (this.#max[slot] > max) max = this.#max[slot]
      for (let b = 0; b < LATENCY_BUCKETS; b++) histogram[b] += this.#latency[slot * LATENCY_BUCKETS + b]
    }
    const attempts = classes.reduce((a, b) => a + b, 0)
    // The rate's seconds: the full ones before this one, and as much of this one as has passed.
    const span = RATE_SECONDS - 1 + (now - current * 1000) / 1000
    return {
      seconds: WINDOW_SECONDS,
      attempts,
      rate: Math.round(recent / span * 100) / 100,
      answers: { '1xx': classes[0], '2xx': classes[1], '3xx': classes[2], '4xx': classes[3], '5xx': classes[4] },
      connectionErrors: classes[FAILED],
      retries,
      p50: quantile(histogram, attempts, 0.5, max),
      p99: quantile(histogram, attempts, 0.99, max),
      series: { requests, failures }
    }
  }
}

/** The latency (ms) under which a fraction q of `total` attempts ended: its bucket's upper bound, never above the largest seen; null for none. */
function quantile (histogram: ArrayLike<number>, total: number, q: number, max: number): number | null {
  if (total === 0) return null
  const rank = Math.max(1, Math.ceil(q * total))
  // The histogram holds `total` attempts: the rank is reached within it.
  let b = 0
  let seen = histogram[0]
  while (seen < rank) seen += histogram[++b]
  return Math.round(Math.min(bucketBound(b), max) * 10) / 10
}

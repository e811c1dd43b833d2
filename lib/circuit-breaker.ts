import type { ResolvedCircuitBreaker } from './options/index.js'

/** Buckets the sliding window is cut into. */
const BUCKETS = 10

/**
 * When a target's breaker trips: on `consecutiveFailures` failures in a row, or
 * on a failure rate of `failureRate` or more over the last `window`, once at
 * least `minimumRequests` requests fell in it. Time is injected; nothing here
 * runs a timer. The open, half-open and closed states are the target's (its one
 * "down" state, shared with failed connects): this only says when to open, and
 * counts the half-open trials.
 */
export class CircuitBreaker {
  readonly #opts: ResolvedCircuitBreaker
  readonly #now: () => number
  readonly #bucketMs: number
  readonly #ok = new Uint32Array(BUCKETS)
  readonly #failed = new Uint32Array(BUCKETS)
  /** The bucket index (time / bucketMs) each slot was last written for. */
  readonly #epoch = new Float64Array(BUCKETS).fill(-1)
  #consecutive = 0

  constructor (opts: ResolvedCircuitBreaker, now: () => number) {
    this.#opts = opts
    this.#now = now
    this.#bucketMs = Math.max(1, Math.ceil(opts.window / BUCKETS))
  }

  /** Trial requests let through while half-open. */
  get halfOpenRequests (): number {
    return this.#opts.halfOpenRequests
  }

  #slot (): number {
    const epoch = Math.floor(this.#now() / this.#bucketMs)
    const i = epoch % BUCKETS
    if (this.#epoch[i] !== epoch) {
      this.#epoch[i] = epoch
      this.#ok[i] = 0
      this.#failed[i] = 0
    }
    return i
  }

  success (): void {
    this.#consecutive = 0
    this.#ok[this.#slot()]++
  }

  /**
   * Records a failure; true when the breaker should open now. One that
   * `overlaps` the last failure counted (its attempt began before that one
   * was seen: the many attempts one crash cut at once) counts for the rate,
   * not as one more in a row.
   */
  failure (overlaps = false): boolean {
    if (!overlaps) this.#consecutive++
    this.#failed[this.#slot()]++
    if (this.#consecutive >= this.#opts.consecutiveFailures) return true
    const { ok, failed } = this.counts()
    const total = ok + failed
    return total >= this.#opts.minimumRequests && failed / total >= this.#opts.failureRate
  }

  /** Successes and failures over the window. */
  counts (): { ok: number, failed: number } {
    const oldest = Math.floor(this.#now() / this.#bucketMs) - BUCKETS + 1
    let ok = 0
    let failed = 0
    for (let i = 0; i < BUCKETS; i++) {
      if (this.#epoch[i] >= oldest) {
        ok += this.#ok[i]
        failed += this.#failed[i]
      }
    }
    return { ok, failed }
  }

  /** Forgets everything: after it closes again, the target starts clean. */
  reset (): void {
    this.#consecutive = 0
    this.#epoch.fill(-1)
    this.#ok.fill(0)
    this.#failed.fill(0)
  }
}

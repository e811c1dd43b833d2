import type { Random } from './balancer.js'
import type { ResolvedAdaptiveConcurrency } from './options/defaults.js'

/** The adaptive concurrency settings, resolved (times in ms, shares in percent): the options' own. */
export type ConcurrencyLimitSettings = ResolvedAdaptiveConcurrency

/** The gradient is clamped to this range: one window at most halves or doubles the limit (before the headroom). */
const MIN_GRADIENT = 0.5
const MAX_GRADIENT = 2
/** Windows in a row that end at `minLimit`, out of a measurement, after which the minimum RTT is measured again (it may be stale or too low). */
const FLOOR_WINDOWS = 5
/** Samples kept per window; past it, a uniform reservoir of them. */
const SAMPLE_CAP = 2048

/**
 * The adaptive concurrency limit of an upstream (Envoy's adaptive
 * concurrency filter, gradient controller; Netflix's concurrency-limits).
 * Completed requests' latencies are sampled; at the end of each sample
 * window, their percentile (the sample RTT) is compared with the minimum
 * RTT, and the limit moves by the gradient:
 *
 *   gradient = clamp(minRtt * (1 + buffer) / sampleRtt, 0.5, 2)
 *   limit    = clamp(limit * gradient + sqrt(limit * gradient), minLimit, maxLimit)
 *
 * (the square root is the headroom that lets the limit probe upwards). It
 * grows only while it is used: not in a window whose requests in flight
 * never reached half of it (Netflix's Gradient2), so a quiet spell does not
 * leave it far above what the upstream was shown to take. The
 * minimum RTT is measured at the start and again every `minRttInterval`
 * (jittered): the limit drops to `minLimit`, the next `minRttRequests`
 * samples (of requests that began in the measurement) give the minimum RTT,
 * and the limit comes back to where it was. Five windows in a row at
 * `minLimit` start a measurement at once.
 *
 * Pure: time comes in with each call (a monotonic clock in ms), chance from
 * `random`. State moves only in `record()`, on the request path.
 */
export class ConcurrencyLimit {
  readonly #s: ConcurrencyLimitSettings
  readonly #random: Random
  /** Requests allowed in flight now. */
  limit: number
  /** The minimum RTT (ms) last measured; null before the first measurement ends. */
  minRtt: number | null = null
  /** The sample RTT (ms) of the last window. */
  sampleRtt: number | null = null
  /** The last window's gradient (1 before the first). */
  gradient = 1
  /** A minimum RTT measurement is under way (the limit is at `minLimit`). */
  measuring = false
  /** Minimum RTT measurements completed. */
  measurements = 0
  readonly #samples = new Float64Array(SAMPLE_CAP)
  /** Samples seen in the window (those kept: at most SAMPLE_CAP). */
  #seen = 0
  #windowEnd: number
  #nextMeasure: number
  /** Requests that began before this (ms) say nothing of the measurement under way (none before the first). */
  #epoch = -Infinity
  /** The limit to come back to once the measurement ends. */
  #resume: number
  #floorWindows = 0
  /** The most requests in flight a sample of this window saw. */
  #peak = 0

  constructor (settings: ConcurrencyLimitSettings, now: number, random: Random) {
    this.#s = settings
    this.#random = random
    this.limit = settings.minLimit
    this.#resume = settings.minLimit
    this.#windowEnd = now + settings.sampleWindow
    // The first measurement is under way from the start: every request so far began at minLimit.
    this.measuring = true
    this.#nextMeasure = now
  }

  /**
   * A request ended `now` after `latency` ms, with `inFlight` requests in
   * flight (itself included). Returns whether the limit rose (waiting
   * requests may go).
   */
  record (latency: number, now: number, inFlight: number): boolean {
    const before = this.limit
    if (!this.measuring && now >= this.#nextMeasure) this.#startMeasure(now)
    if (inFlight > this.#peak) this.#peak = inFlight
    if (now - latency >= this.#epoch) this.#keep(latency)
    if (this.measuring) {
      if (this.#seen >= this.#s.minRttRequests) this.#endMeasure(now)
    } else if (now >= this.#windowEnd) {
      this.#endWindow(now)
    }
    return this.limit > before
  }

  #keep (latency: number): void {
    const n = this.#seen++
    if (n < SAMPLE_CAP) {
      this.#samples[n] = latency
      return
    }
    const j = Math.floor(this.#random() * (n + 1))
    if (j < SAMPLE_CAP) this.#samples[j] = latency
  }

  /** The window's percentile, and the window emptied. */
  #take (): number {
    const kept = this.#samples.subarray(0, Math.min(this.#seen, SAMPLE_CAP)).sort()
    this.#seen = 0
    const rank = Math.ceil((this.#s.percentile / 100) * kept.length - 1e-9)
    return kept[Math.min(kept.length, Math.max(1, rank)) - 1]
  }

  #startMeasure (now: number): void {
    this.measuring = true
    this.#resume = this.limit
    this.limit = this.#s.minLimit
    this.#seen = 0
    this.#peak = 0
    this.#epoch = now
    this.#floorWindows = 0
  }

  #endMeasure (now: number): void {
    this.minRtt = this.#take()
    this.#peak = 0
    this.measurements++
    this.measuring = false
    this.limit = this.#resume
    const s = this.#s
    this.#nextMeasure = now + s.minRttInterval + Math.floor(this.#random() * s.minRttInterval * s.jitter / 100)
    this.#windowEnd = now + s.sampleWindow
  }

  #endWindow (now: number): void {
    const s = this.#s
    this.#windowEnd = now + s.sampleWindow
    if (this.#seen === 0 || this.minRtt === null) return
    const sample = this.sampleRtt = this.#take()
    const buffered = this.minRtt * (1 + s.minRttBuffer / 100)
    // A sample of 0 ms (a clock too coarse) is as fast as can be.
    const gradient = this.gradient = sample <= 0 ? MAX_GRADIENT : Math.min(MAX_GRADIENT, Math.max(MIN_GRADIENT, buffered / sample))
    const used = this.#peak * 2 >= this.limit
    this.#peak = 0
    const scaled = this.limit * gradient
    const before = this.limit
    const next = Math.min(s.maxLimit, Math.max(s.minLimit, Math.floor(scaled + Math.sqrt(scaled))))
    if (next > before && !used) return
    this.limit = next
    if (before === s.minLimit && this.limit === s.minLimit) {
      if (++this.#floorWindows >= FLOOR_WINDOWS) this.#nextMeasure = now
    } else {
      this.#floorWindows = 0
    }
  }
}

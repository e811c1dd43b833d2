/**
 * A target's score for the peak-EWMA balancer (Finagle's and Linkerd's peak
 * EWMA, with Linkerd's load biaser): an estimate of its latency and a penalty
 * for its recent failures, in milliseconds. The balancer multiplies their sum
 * by the target's outstanding requests plus one. Pure: every call is given the
 * time (`now`, ms); reads move nothing.
 *
 * The estimate is the slowest recent answer, decaying by e^(-Δt/τ) with
 * τ = DECAY: an answer slower than what the estimate has decayed to sets it at
 * once (the peak); faster answers let it fall toward them over τ, and hold it
 * there. With no answer at all for a while it keeps falling toward zero, so a
 * target shunned for being slow is tried again, and set back at once if it
 * still is. Before its first answer a target is scored at DEFAULT_RTT; its
 * first answer replaces that prior.
 *
 * The penalty: each failure of the target's own (an answer 5xx or 429, a
 * failed connect, a reset, a timeout) adds FAILURE_PENALTY, which decays by
 * e^(-Δt/PENALTY_DECAY); an answer with `Retry-After` holds the whole penalty
 * until then (at most MAX_RETRY_AFTER), and it decays from there. A target
 * answering fast 503s so stops looking fast; one that fails now and then
 * loses a little share for a few seconds.
 */

/** The estimate of a target not heard from yet, ms (Linkerd's default RTT). */
export const DEFAULT_RTT = 30
/** Time constant of the estimate's decay, ms (Linkerd's). */
export const DECAY = 10_000
/** What each failure adds to the penalty, ms. */
export const FAILURE_PENALTY = 1_000
/** Time constant of the penalty's decay, ms. */
export const PENALTY_DECAY = 1_000
/** The longest `Retry-After` honoured, ms (Linkerd's load biaser's). */
export const MAX_RETRY_AFTER = 300_000

/**
 * Milliseconds a `Retry-After` value asks to wait (RFC 9110 10.2.3: seconds,
 * or an HTTP date, read against `now`, ms since the epoch); 0 when it asks
 * for none or cannot be read.
 */
export function retryAfterMs (value: string | string[] | undefined, now: number): number {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined) return 0
  const s = v.trim()
  if (/^\d+$/.test(s)) return Math.min(MAX_RETRY_AFTER, Number(s) * 1000)
  const at = Date.parse(s)
  if (Number.isNaN(at)) return 0
  return Math.min(MAX_RETRY_AFTER, Math.max(0, at - now))
}

export class PeakEwma {
  /** The estimate as of #stamp, ms; NaN before the first answer. */
  #estimate = NaN
  #stamp = 0
  /** The penalty as of #penaltyFrom, ms; it decays only after that (a `Retry-After` holds it until then). */
  #penalty = 0
  #penaltyFrom = 0

  /** The latency estimate now, ms. */
  estimate (now: number): number {
    const e = this.#estimate
    if (Number.isNaN(e)) return DEFAULT_RTT
    const dt = now - this.#stamp
    return dt <= 0 ? e : e * Math.exp(-dt / DECAY)
  }

  /** The failure penalty now, ms. */
  penalty (now: number): number {
    const p = this.#penalty
    if (p === 0) return 0
    const dt = now - this.#penaltyFrom
    return dt <= 0 ? p : p * Math.exp(-dt / PENALTY_DECAY)
  }

  /** Until when a `Retry-After` holds the penalty (ms), or 0 when none does now. */
  heldUntil (now: number): number {
    return this.#penalty !== 0 && this.#penaltyFrom > now ? this.#penaltyFrom : 0
  }

  /** What one more request costs it per outstanding request: the estimate plus the penalty, ms. */
  score (now: number): number {
    return this.estimate(now) + this.penalty(now)
  }

  /** An answer that took `latency` ms (to its headers). */
  observe (latency: number, now: number): void {
    const e = this.estimate(now)
    this.#estimate = Number.isNaN(this.#estimate) || latency > e ? latency : e
    this.#stamp = now
  }

  /**
   * A failure of its own after `latency` ms: a penalty, held `retryAfter` ms
   * when the answer asked for that. A failure slower than the estimate also
   * raises it (a timeout is a slow target); a fast one never lowers it.
   */
  fail (latency: number, now: number, retryAfter = 0): void {
    if (latency > this.estimate(now)) {
      this.#estimate = latency
      this.#stamp = now
    }
    this.#penalty = this.penalty(now) + FAILURE_PENALTY
    this.#penaltyFrom = Math.max(now + Math.min(retryAfter, MAX_RETRY_AFTER), this.#penaltyFrom)
  }
}

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
 * first answer replaces that prior. Its attempts still waiting for an answer
 * bound it from below: each will take at least its age, so the estimate read
 * is at least their mean age (a target that stops answering does not look
 * faster the longer it keeps its requests; without this, as in Finagle's and
 * Linkerd's, its estimate decays toward zero while they hang, and only the
 * outstanding count holds it back).
 *
 * The penalty: the estimate times FAILURE_FACTOR times the target's failure
 * ratio f, plus FAILURE_FLOOR times f² (so a target failing fast and often
 * scores above a slow one that answers), where f is the share of about its last 10 attempts that failed of its own
 * fault (an answer 5xx or 429, a failed connect, a reset, a timeout),
 * decaying by e^(-Δt/PENALTY_DECAY) while it gets no attempt; an answer with
 * `Retry-After` holds the ratio at 1 until then (at most MAX_RETRY_AFTER),
 * and it decays from there. A target answering fast 503s to half its requests
 * so scores 50 times its latency and stops looking fast; one failing once in
 * a thousand loses a little share for a few attempts after each failure, not
 * its place (a penalty in absolute time would take it out for as long at any
 * rate of requests).
 */

/** The estimate of a target not heard from yet, ms (Linkerd's default RTT). */
export const DEFAULT_RTT = 30
/**
 * Time constant of the estimate's decay, ms. Linkerd's and Finagle's is 10 s:
 * a target's one slow answer (its GC, a cold start) then cost it a share of
 * the traffic for seconds, and three equal targets started cold spread 12%
 * apart over 10 s (bench:cold); at 500 ms 2-9% (and under 1.1% once the
 * balancer took scores within SCORE_BAND of each other as alike), while a
 * target 200 ms slow still got under 0.1% of the requests (its every answer
 * sets the peak again).
 */
export const DECAY = 500
/** Each attempt's weight in the failure ratio: about the last 10 attempts count. */
export const FAILURE_WEIGHT = 0.1
/** Time constant of the failure ratio's decay while the target gets no attempt, ms. */
export const PENALTY_DECAY = 2_000
/** The score at a failure ratio of 1 is this many times the estimate (plus one). */
export const FAILURE_FACTOR = 100
/** A target whose every attempt fails scores at least this, ms (Linkerd's load biaser's penalty), in proportion to its failure ratio squared. */
export const FAILURE_FLOOR = 5_000
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
  /** The failure ratio as of #failureStamp. */
  #failures = 0
  #failureStamp = 0
  /** Until when a `Retry-After` holds the ratio at 1 (ms), 0 when none has. */
  #heldUntil = 0
  /** When it last answered or failed (ms), -Infinity before that. */
  #heard = -Infinity
  /** Attempts sent and not answered yet, and the sum of when they began (ms). */
  #waiting = 0
  #waitingSum = 0

  /** Whether an answer has been timed yet (else the estimate is the default). */
  get sampled (): boolean {
    return !Number.isNaN(this.#estimate)
  }

  /** The latency estimate now, ms: from its answers, or its waiting attempts' mean age when longer. */
  estimate (now: number): number {
    const e = this.#decayed(now)
    if (this.#waiting === 0) return e
    const w = this.waitedFor(now)
    return w > e ? w : e
  }

  /** The estimate from its answers alone (DEFAULT_RTT before the first). */
  #decayed (now: number): number {
    const e = this.#estimate
    if (Number.isNaN(e)) return DEFAULT_RTT
    const dt = now - this.#stamp
    return dt <= 0 ? e : e * Math.exp(-dt / DECAY)
  }

  /** An attempt began at `at` (ms): until `answered(at)`, its age bounds the estimate from below. */
  sent (at: number): void {
    this.#waiting++
    this.#waitingSum += at
  }

  /** The attempt that began at `at` has its answer's headers, or ended without (failed, cancelled). */
  answered (at: number): void {
    if (--this.#waiting === 0) this.#waitingSum = 0
    else this.#waitingSum -= at
  }

  /** The mean age of its attempts waiting for an answer now, ms; 0 with none. */
  waitedFor (now: number): number {
    const n = this.#waiting
    return n === 0 ? 0 : now - this.#waitingSum / n
  }

  /** The share of its recent attempts that failed (0 to 1), decaying while it gets none; 1 while a `Retry-After` holds. */
  failureRatio (now: number): number {
    if (now < this.#heldUntil) return 1
    const f = this.#failures
    if (f === 0) return 0
    const dt = now - Math.max(this.#failureStamp, this.#heldUntil)
    return dt <= 0 ? f : f * Math.exp(-dt / PENALTY_DECAY)
  }

  /**
   * The failure penalty now, ms: the estimate times FAILURE_FACTOR times the
   * failure ratio f, plus FAILURE_FLOOR times f²: a target that fails fast
   * and often scores above one that is slow but answers.
   */
  penalty (now: number): number {
    const f = this.failureRatio(now)
    return f === 0 ? 0 : (this.estimate(now) * FAILURE_FACTOR + FAILURE_FLOOR * f) * f
  }

  /**
   * Whether it answered or failed within the last DECAY ms: its estimate is
   * being measured now, not only decaying from what it was (a target shunned
   * for being slow has no answer to lower it; its estimate falls by time alone).
   */
  current (now: number): boolean {
    return now - this.#heard <= DECAY
  }

  /** Until when a `Retry-After` holds the penalty (ms), or 0 when none does now. */
  heldUntil (now: number): number {
    return this.#heldUntil > now ? this.#heldUntil : 0
  }

  /** What one more request costs it per outstanding request: the estimate plus the penalty, ms. */
  score (now: number): number {
    const f = this.failureRatio(now)
    const e = this.estimate(now)
    return f === 0 ? e : e + (e * FAILURE_FACTOR + FAILURE_FLOOR * f) * f
  }

  /**
   * Forgets what was learned (a `Retry-After` still running aside): the
   * target left rotation, or is back after an outage (its trial connected,
   * or its active checks passed), so what it did before says nothing of what
   * it does now. It is scored as a target not heard from
   * yet until its next answer (Linkerd scores an endpoint that comes back as a
   * new one).
   */
  reset (): void {
    this.#estimate = NaN
    this.#stamp = 0
    this.#failures = 0
    this.#failureStamp = 0
    this.#heard = -Infinity
    // A Retry-After still running is the target's own word: it holds to its end.
  }

  /** An answer that took `latency` ms (to its headers). */
  observe (latency: number, now: number): void {
    const e = this.#decayed(now)
    this.#estimate = Number.isNaN(this.#estimate) || latency > e ? latency : e
    this.#stamp = now
    this.#heard = now
    if (this.#failures !== 0 || now < this.#heldUntil) {
      this.#failures = this.failureRatio(now) * (1 - FAILURE_WEIGHT)
      this.#failureStamp = Math.max(now, this.#heldUntil)
    }
  }

  /**
   * An attempt let go unanswered after `elapsed` ms (it lost a hedge's race):
   * its answer would have taken at least that long, so the estimate rises to
   * it when it is lower, as for an answer that slow (Finagle's balancer times
   * an interrupted request like any other). A bound from below never lowers
   * the estimate, and is not a failure.
   */
  atLeast (elapsed: number, now: number): void {
    if (elapsed <= this.#decayed(now)) return
    this.#estimate = elapsed
    this.#stamp = now
    this.#heard = now
  }

  /**
   * A failure of its own after `latency` ms: its failure ratio rises, held at
   * 1 for `retryAfter` ms when the answer asked for that. A failure slower
   * than the estimate also raises it (a timeout is a slow target); a fast one
   * never lowers it.
   */
  fail (latency: number, now: number, retryAfter = 0): void {
    if (Number.isNaN(this.#estimate) || latency > this.#decayed(now)) {
      this.#estimate = latency
      this.#stamp = now
    }
    this.#failures = this.failureRatio(now) * (1 - FAILURE_WEIGHT) + FAILURE_WEIGHT
    this.#failureStamp = now
    this.#heard = now
    if (retryAfter > 0) {
      // Held at 1 until then; it decays from 1 after.
      this.#failures = 1
      this.#heldUntil = Math.max(this.#heldUntil, now + Math.min(retryAfter, MAX_RETRY_AFTER))
    }
  }
}

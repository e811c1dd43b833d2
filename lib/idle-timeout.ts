/**
 * The smallest margin (ms) kept between the idle age at which a target was
 * seen to close idle connections and the age at which the pool retires them
 * itself: a request sent just before the target's own timer fires still
 * crosses the wire and loses the race.
 */
export const MIN_MARGIN = 5
/** Idle closes the learned value is the lowest of. */
export const SAMPLES = 16

/**
 * A target's own idle timeout, learned from the connections it closed while
 * they sat idle in the pool (no `Keep-Alive: timeout` hint needed: undici
 * follows the hint itself). The rule:
 *
 * - An idle close seen at idle age `a` is a sample; the learned value is the
 *   lowest of the last `SAMPLES` (a close is seen late when the event loop
 *   is busy, and the target's own timer fires late: the earliest close is the
 *   one that matters, and a single early one, a restart say, ages out).
 * - The pool retires an idle connection at `learned - margin`, the margin
 *   half the learned value, at least `MIN_MARGIN` ms (at or below 0: an idle
 *   connection is not reused at all). Half, because every sample may be
 *   late by the event loop's delay when the process is starved of CPU (16
 *   closes in a row were seen at 30 ms of a 20 ms timeout on a loaded
 *   machine), while a connection is handed out on time.
 * - Growing back: a retired connection is watched (kept open, never handed
 *   out, one per target at a time) up to twice the learned age, within
 *   `pool.idleTimeout`. If the target closes it, that age is a sample as
 *   above; if it lives on (still open once the events of that turn of the
 *   loop are read), the target kept it at least that long: that age replaces
 *   the lowest sample, so the learned value rises after a few such watches,
 *   never on one. Once every sample reaches `pool.idleTimeout`, nothing is
 *   learned: the pool's own timeout rules again.
 *
 * A close while a request is on the connection (or its answer is on its way
 * back) is not an idle close, nor is a close of the pool's or undici's own.
 */
export class IdleTimeoutLearner {
  /** The learned idle timeout (ms); null when none. */
  learned: number | null = null
  /** Idle closes seen (samples taken). */
  closes = 0
  /** Connections retired before the learned age. */
  retired = 0
  readonly #idleTimeout: number
  /** The last idle-close ages (a ring, `#next` the slot to write), `#count` of them filled. */
  readonly #samples = new Float64Array(SAMPLES)
  #count = 0
  #next = 0

  constructor (idleTimeout: number) {
    this.#idleTimeout = idleTimeout
  }

  /** The target closed a connection idle for `age` ms. */
  closed (age: number): void {
    this.closes++
    this.#samples[this.#next] = Math.max(0, age)
    this.#next = (this.#next + 1) % SAMPLES
    this.#count = Math.min(this.#count + 1, SAMPLES)
    this.#learn()
  }

  /** A watched connection lived `age` ms idle without the target closing it. */
  survived (age: number): void {
    if (this.#count === 0) return
    let low = 0
    for (let i = 1; i < this.#count; i++) if (this.#samples[i] < this.#samples[low]) low = i
    this.#samples[low] = Math.max(this.#samples[low], age)
    this.#learn()
  }

  #learn (): void {
    let low = Infinity
    for (let i = 0; i < this.#count; i++) low = Math.min(low, this.#samples[i])
    if (low < this.#idleTimeout) {
      this.learned = low
      return
    }
    this.learned = null
    this.#count = 0
    this.#next = 0
  }

  /** Idle age (ms) from which the pool retires a connection itself; Infinity when nothing is learned. */
  retireAt (): number {
    if (this.learned === null) return Infinity
    return this.learned - Math.max(this.learned / 2, MIN_MARGIN)
  }

  /** Idle age (ms) up to which a retired connection is watched. */
  watchFor (): number {
    const l = this.learned ?? this.#idleTimeout
    return Math.min(Math.max(2 * l, l + MIN_MARGIN), this.#idleTimeout)
  }
}

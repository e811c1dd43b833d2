/**
 * How often the same thing is logged, so that an outage or a flapping target
 * reads as a few lines, not one per request or per flap. Time is given by
 * the caller (ms); nothing here logs or arms a timer.
 */

/**
 * At most one line per `interval` for a kind of event (Envoy's and NGINX's
 * rate-limited error logs): the first is logged at once, the rest counted
 * and carried by the next line that is logged.
 */
export class RateLimitedLog {
  readonly interval: number
  #last = -Infinity
  #suppressed = 0

  constructor (interval: number) {
    this.interval = interval
  }

  /** An event now: to log it, the count of those not logged since the last line (0 or more); -1 when it is not to be logged. */
  hit (now: number): number {
    if (now - this.#last < this.interval) {
      this.#suppressed++
      return -1
    }
    this.#last = now
    return this.take()
  }

  /** Events not logged since the last line, taken: the next line carries only those after. */
  take (): number {
    const n = this.#suppressed
    this.#suppressed = 0
    return n
  }
}

/**
 * Hysteresis for state changes: the first `perWindow` changes of a window
 * (a window starts with a change, after a quiet one) are logged as they come;
 * the rest are counted, and summarised in one line when the window is over
 * (`due`). While the changes go on, each next window is summarised whole;
 * after a window without any, the next change is logged at once again.
 */
export class FlapLog {
  readonly window: number
  readonly perWindow: number
  #end = -Infinity
  #logged = 0
  #changes = 0

  constructor (window: number, perWindow: number) {
    this.window = window
    this.perWindow = perWindow
  }

  /** A change now: true to log it; false when it is counted for the summary. */
  change (now: number): boolean {
    if (now >= this.#end) {
      this.#end = now + this.window
      this.#logged = 1
      this.#changes = 0
      return true
    }
    if (this.#logged < this.perWindow) {
      this.#logged++
      return true
    }
    this.#changes++
    return false
  }

  /** When the summary is due (ms), or null when no change waits for one. */
  get due (): number | null {
    return this.#changes === 0 ? null : this.#end
  }

  /** The changes not logged in the window that ended, taken (0 for none); when there were, the next window is summarised whole. */
  summary (now: number): number {
    const n = this.#changes
    if (n === 0 || now < this.#end) return 0
    this.#changes = 0
    this.#end = now + this.window
    this.#logged = this.perWindow
    return n
  }
}

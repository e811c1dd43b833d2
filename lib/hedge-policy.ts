import type { ResolvedHedge } from './options/index.js'

/** Hedges the budget keeps in reserve at most: a burst of stalls after a quiet spell is hedged this far, then at the budget's rate. */
export const HEDGE_RESERVE = 10
/** A percentile delay needs this many attempts in the target's window; with fewer, no hedge. */
export const HEDGE_MIN_SAMPLES = 20

/** A request whose hedge waits for room in the budget. */
export interface HedgeWaiter {
  /** Room was made: sends the hedge if the request still wants one (it may have ended, or had its answer). */
  hedgeFromLine (): void
}

/** A place in the hedge line: its waiter is cleared when served, or by its request ending first (so an ended request is not held). */
export interface LineEntry {
  waiter: HedgeWaiter | null
}

/** What the hedge delay reads of a target: its recent latency. */
export interface LatencySource {
  latencyQuantile (q: number, min: number): number | null
}

/**
 * An upstream's hedging (Envoy's hedge policy; "The Tail at Scale"'s
 * deferred backup request): when a request may be hedged, after what delay,
 * and the budget that caps the extra load, with its counts. The budget is a
 * token bucket in hundredths of a hedge: each request that may be hedged adds
 * `budget` (percent), a hedge takes 100; it starts with one hedge and keeps
 * HEDGE_RESERVE at most. A hedge the budget has no room for at its delay
 * waits in line while its first attempt runs, and the room each new request
 * makes goes to the oldest in line: a request whose first attempt has
 * outlasted its delay by the most, the likeliest to be caught in a stall
 * (with a `'p95'` delay and a 5% budget the room is about what the hedges
 * past the delay ask for, so a hedge turned away at once, as first built,
 * left many stalls unhedged: the p99.9 stayed at the stall's). Pure: no
 * clock, no chance.
 */
export class Hedging {
  readonly methods: ReadonlySet<string>
  readonly #delay: number
  readonly #quantile: number | null
  readonly #percent: number
  #balance = 100
  /** Hedges waiting for room, oldest first, from #head on (served ones are cleared to null). */
  #line: Array<LineEntry | null> = []
  #head = 0
  #waking = false
  sent = 0
  won = 0
  cancelled = 0
  denied = 0

  constructor (config: ResolvedHedge) {
    this.methods = config.methods
    this.#delay = config.delay
    this.#quantile = config.quantile
    this.#percent = config.budget
  }

  /**
   * The delay (ms) after which a request that may be hedged, whose first
   * attempt went to this target, gets its hedge; null for none (a percentile
   * of a target with too few attempts yet). The request adds its share to
   * the budget.
   */
  delayFor (target: LatencySource): number | null {
    this.#balance = Math.min(this.#balance + this.#percent, HEDGE_RESERVE * 100)
    if (this.#balance >= 100 && this.#head < this.#line.length) this.#wake()
    const q = this.#quantile
    return q === null ? this.#delay : target.latencyQuantile(q, HEDGE_MIN_SAMPLES)
  }

  /** Whether the budget holds a hedge now, with none older waiting in line for room. */
  allows (): boolean {
    return this.#balance >= 100 && this.#head === this.#line.length
  }

  /**
   * Puts a hedge the budget has no room for in line: `waiter.hedgeFromLine`
   * is called when room is made for it (never from inside this call). Its
   * request clears the entry's waiter if it ends first.
   */
  wait (waiter: HedgeWaiter): LineEntry {
    const entry: LineEntry = { waiter }
    this.#line.push(entry)
    if (this.#balance >= 100) this.#wake()
    return entry
  }

  /** Hedges waiting in line now. Reads the whole line: for tests, not a hot path. */
  get waiting (): number {
    let n = 0
    for (let i = this.#head; i < this.#line.length; i++) if (this.#line[i]!.waiter !== null) n++
    return n
  }

  /** Serves the line in a microtask: the caller (a request being set up) is not re-entered. */
  #wake (): void {
    if (this.#waking) return
    this.#waking = true
    queueMicrotask(this.#serve)
  }

  /** Gives the room there is to the oldest in line (made once: no closure per wake). */
  readonly #serve = (): void => {
    this.#waking = false
    const line = this.#line
    while (this.#balance >= 100 && this.#head < line.length) {
      const entry = line[this.#head]!
      line[this.#head++] = null
      const waiter = entry.waiter
      if (waiter === null) continue
      entry.waiter = null
      waiter.hedgeFromLine()
    }
    if (this.#head === line.length) {
      line.length = 0
      this.#head = 0
    } else if (this.#head >= 1024 && this.#head * 2 >= line.length) {
      this.#line = line.slice(this.#head)
      this.#head = 0
    }
  }

  /** A hedge was sent: it takes its share of the budget. */
  spend (): void {
    this.#balance -= 100
    this.sent++
  }

  /** Plain JSON of its counts. Reads only. */
  stats (): { sent: number, won: number, cancelled: number, denied: number } {
    return { sent: this.sent, won: this.won, cancelled: this.cancelled, denied: this.denied }
  }
}

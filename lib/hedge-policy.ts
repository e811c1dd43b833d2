import type { ResolvedHedge } from './options/index.js'

/** Hedges the budget keeps in reserve at most: a burst of stalls after a quiet spell is hedged this far, then at the budget's rate. */
export const HEDGE_RESERVE = 10
/** A percentile delay needs this many attempts in the target's window; with fewer, no hedge. */
export const HEDGE_MIN_SAMPLES = 20

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
 * HEDGE_RESERVE at most. Pure: no clock, no chance.
 */
export class Hedging {
  readonly methods: ReadonlySet<string>
  readonly #delay: number
  readonly #quantile: number | null
  readonly #percent: number
  #balance = 100
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
    const q = this.#quantile
    return q === null ? this.#delay : target.latencyQuantile(q, HEDGE_MIN_SAMPLES)
  }

  /** Whether the budget holds a hedge now; counted as denied when not. */
  allows (): boolean {
    if (this.#balance >= 100) return true
    this.denied++
    return false
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

import type { ResolvedOutlierDetection } from './options/index.js'
import type { Target } from './target.js'

/** What a target did over one interval. */
export interface IntervalStats {
  requests: number
  failures: number
  /** Sum of the attempts' latencies, ms. */
  latency: number
}

/** Failure rates closer than this to the peers' are never an outlier, whatever the factor. */
const MIN_RATE_GAP = 0.1
/** Latencies closer than this (ms) to the peers' are never an outlier, whatever the factor. */
const MIN_LATENCY_GAP = 10

function medianOf (values: number[]): number {
  values.sort((a, b) => a - b)
  const mid = values.length >> 1
  return values.length % 2 === 1 ? values[mid]! : (values[mid - 1]! + values[mid]!) / 2
}

/**
 * Outlier detection against peers (Envoy's outlier detector, with latency): at
 * each interval, a target with enough requests whose failure rate, or mean
 * latency, stands far from its peers' is ejected for `baseEjectionTime` times
 * its ejection count (capped, jittered), never more than `maxEjectionPercent`
 * of the targets at once, and only with 3 targets or more (two cannot say who
 * is the odd one). Pure: the upstream feeds it and runs its timer.
 */
export class OutlierDetector {
  readonly #opts: ResolvedOutlierDetection
  readonly #stats = new Map<Target, IntervalStats>()

  constructor (opts: ResolvedOutlierDetection) {
    this.#opts = opts
  }

  /** An attempt ended on a target. */
  record (target: Target, failed: boolean, latency: number): void {
    let s = this.#stats.get(target)
    if (s === undefined) {
      s = { requests: 0, failures: 0, latency: 0 }
      this.#stats.set(target, s)
    }
    s.requests++
    if (failed) s.failures++
    s.latency += latency
  }

  /** Judges the interval that just ended and starts the next; returns the targets to eject with why. */
  judge (targets: readonly Target[], now: number, random: () => number): Array<{ target: Target, until: number, reason: string }> {
    const stats = this.#stats
    const out: Array<{ target: Target, until: number, reason: string }> = []
    const inRotation = targets.filter((t) => !t.draining)
    if (inRotation.length >= 3) {
      const o = this.#opts
      const judged = inRotation.filter((t) => (stats.get(t)?.requests ?? 0) >= o.minimumRequests && !(t.ejectedUntil > now))
      let ejected = inRotation.filter((t) => t.ejectedUntil > now).length
      const cap = Math.floor(inRotation.length * o.maxEjectionPercent / 100)
      for (const t of judged) {
        if (ejected >= cap) break
        const reason = this.#outlier(t, judged)
        if (reason === null) continue
        out.push({ target: t, until: this.ejectionEnd(t, now, random), reason })
        ejected++
      }
    }
    stats.clear()
    return out
  }

  /** When an ejection of this target starting now ends: baseEjectionTime times its ejections so far plus one, capped, jittered. */
  ejectionEnd (t: Target, now: number, random: () => number): number {
    const o = this.#opts
    const time = Math.min(o.maxEjectionTime, o.baseEjectionTime * (t.ejections + 1))
    return now + Math.round(time * (1 + random() * 0.1))
  }

  /**
   * Judges a target's probation after an ejection (its mean latency and its
   * failures over its attempts) against the recent latency and failure ratio
   * of its peers in rotation, by the same rule as an interval; the reason to
   * eject it again, or null.
   */
  judgeProbation (t: Target, latency: number, failures: number, attempts: number, targets: readonly Target[], now: number): string | null {
    const o = this.#opts
    let peerFailure = 0
    const peerLatencies: number[] = []
    for (const p of targets) {
      if (p === t || p.probation !== 0 || p.latency === 0 || !p.available(now)) continue
      peerFailure += p.failureRatio
      peerLatencies.push(p.latency)
    }
    if (peerLatencies.length === 0) return null
    const rate = failures / attempts
    const peerRate = peerFailure / peerLatencies.length
    if (rate - peerRate >= MIN_RATE_GAP && rate >= o.failureRateFactor * peerRate) {
      return `failure rate ${(rate * 100).toFixed(0)}% against ${(peerRate * 100).toFixed(0)}% for its peers`
    }
    const median = medianOf(peerLatencies)
    if (latency - median >= MIN_LATENCY_GAP && latency >= o.latencyFactor * median) {
      return `mean latency ${latency.toFixed(1)} ms against ${median.toFixed(1)} ms for its peers`
    }
    return null
  }

  #outlier (t: Target, judged: readonly Target[]): string | null {
    const o = this.#opts
    const mine = this.#stats.get(t)!
    let peerRequests = 0
    let peerFailures = 0
    const peerLatencies: number[] = []
    for (const p of judged) {
      if (p === t) continue
      const s = this.#stats.get(p)!
      peerRequests += s.requests
      peerFailures += s.failures
      peerLatencies.push(s.latency / s.requests)
    }
    if (peerLatencies.length < 2) return null
    const rate = mine.failures / mine.requests
    const peerRate = peerFailures / peerRequests
    if (rate - peerRate >= MIN_RATE_GAP && rate >= o.failureRateFactor * peerRate) {
      return `failure rate ${(rate * 100).toFixed(0)}% against ${(peerRate * 100).toFixed(0)}% for its peers`
    }
    const median = medianOf(peerLatencies)
    const latency = mine.latency / mine.requests
    if (latency - median >= MIN_LATENCY_GAP && latency >= o.latencyFactor * median) {
      return `mean latency ${latency.toFixed(1)} ms against ${median.toFixed(1)} ms for its peers`
    }
    return null
  }

  forget (target: Target): void {
    this.#stats.delete(target)
  }
}

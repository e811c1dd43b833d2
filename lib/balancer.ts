import type { Target } from './target.js'

/**
 * Picks a target for a request among those that can take one now
 * (one predicate, `Target#canTake()`: in rotation and under its connection caps, for every policy).
 */
export interface Balancer {
  /** A target, or undefined when none is available. */
  pick (targets: readonly Target[]): Target | undefined
}

/** Round-robin over the available targets. */
export class RoundRobin implements Balancer {
  #next = 0

  pick (targets: readonly Target[]): Target | undefined {
    const n = targets.length
    for (let i = 0; i < n; i++) {
      const t = targets[(this.#next + i) % n]
      if (t.canTake()) {
        this.#next = (this.#next + i + 1) % n
        return t
      }
    }
    return undefined
  }
}

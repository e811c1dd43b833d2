import type { Random } from './balancer.js'

/**
 * Exponential backoff with full jitter (the AWS architecture blog's "full
 * jitter", Envoy's retry back-off): the n-th wait (n from 0) is drawn uniformly
 * from [0, min(max, base * 2^n)).
 */
export function fullJitter (attempt: number, base: number, max: number, random: Random): number {
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 30))
  return Math.floor(random() * cap)
}

/**
 * How long a failing target is skipped: `interval` after its first failure,
 * doubling with each failure in a row, capped at `max`.
 */
export function skipInterval (failures: number, interval: number, max: number): number {
  return Math.min(max, interval * 2 ** Math.min(Math.max(failures - 1, 0), 30))
}

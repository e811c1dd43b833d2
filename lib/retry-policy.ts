import type { ErrorCategory } from '../types/index.js'
import type { ResolvedRetry } from './options/index.js'
import { CONNECT_FAILURES } from './errors.js'

/** What the retry decision needs to know of a request and its attempts so far. */
export interface RetryFacts {
  method: string
  /** A POST or PATCH carrying the Idempotency-Key header (see `keyedRequest`): retried as the idempotent methods are. */
  keyed: boolean
  /** Its body can be sent again: none, a buffer, or a stream nothing has read. */
  replayable: boolean
  /** Attempts made so far (the one that just failed included). */
  attempts: number
  /** `pool.maxRetries`: at most this many attempts after the first. */
  maxRetries: number
}

/**
 * Whether to retry on another target: `'no'`; `'free'` when no byte reached an
 * upstream (a failed connect), which the retry budget does not limit;
 * `'counted'`, a retry the budget limits (it adds load on the upstreams); or
 * `'elsewhere'`, counted too, and only on a target not tried yet (a malformed
 * answer: the same target would likely send it again).
 */
export type RetryVerdict = 'no' | 'free' | 'counted' | 'elsewhere'

/**
 * The retry decision after a failed attempt, as a pure function of the
 * policy, what failed and the request (undici's RetryHandler keeps its default
 * decision apart the same way). A failed connect may go elsewhere whatever the
 * method: the upstream saw nothing. A reset before the answer may be retried
 * only for the idempotent methods (RFC 9110): the upstream may have acted;
 * so may a malformed answer (a stray answer on its connection, say), on a
 * target not tried yet. Anything else (a timeout, a client's fault) is never
 * retried: the upstream may still be working on it, or the fault is not its.
 */
export function retryAfterError (policy: ResolvedRetry | null, category: ErrorCategory, facts: RetryFacts): RetryVerdict {
  if (policy === null || !facts.replayable || facts.attempts > facts.maxRetries) return 'no'
  // (a stream the HTTP/2 target refused, or left out of its GOAWAY, was never processed either)
  if (CONNECT_FAILURES.has(category) || category === 'refused') return 'free'
  if (!policy.methods.has(facts.method) && !facts.keyed) return 'no'
  if (category === 'reset') return 'counted'
  if (category === 'protocol') return 'elsewhere'
  return 'no'
}

/** The retry decision for an answer: a status of `retry.statusCodes`, for an idempotent request that can be sent again. */
export function retryAfterStatus (policy: ResolvedRetry | null, status: number, facts: RetryFacts): RetryVerdict {
  if (policy === null || status < 500 || !policy.statusCodes.has(status)) return 'no'
  if (!facts.replayable || facts.attempts > facts.maxRetries || (!policy.methods.has(facts.method) && !facts.keyed)) return 'no'
  return 'counted'
}

type RequestHeaders = Record<string, unknown> | Iterable<unknown> | null | undefined

function hasPair (pairs: Iterable<unknown[]>, name: string): boolean {
  for (const pair of pairs) if (String(pair[0]).toLowerCase() === name && pair[1] != null && String(pair[1]) !== '') return true
  return false
}

/** Whether the request carries header `name` (lower case) with a value not empty: headers as an object, a flat list, or a list of pairs. */
function hasHeader (headers: RequestHeaders, name: string): boolean {
  if (headers == null) return false
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) return hasPair(headers as unknown[][], name)
    for (let i = 0; i + 1 < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === name && headers[i + 1] != null && String(headers[i + 1]) !== '') return true
    }
    return false
  }
  if (typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function') return hasPair(headers as Iterable<unknown[]>, name)
  for (const key in headers) {
    if (key.toLowerCase() !== name) continue
    const v = (headers as Record<string, unknown>)[key]
    if (v != null && String(v) !== '') return true
  }
  return false
}

/**
 * Whether a request is made safe to retry by an idempotency key
 * (draft-ietf-httpapi-idempotency-key-header): a POST or PATCH carrying
 * `retry.idempotencyKey`. The upstream that honours the key answers a repeat
 * with the first outcome instead of acting twice; the key goes out unchanged
 * with every attempt.
 */
export function keyedRequest (policy: ResolvedRetry | null, method: string, headers: RequestHeaders): boolean {
  if (policy === null || policy.idempotencyKey === null || (method !== 'POST' && method !== 'PATCH')) return false
  return hasHeader(headers, policy.idempotencyKey)
}

/**
 * Envoy's retry budget: counted retries in flight at most `percent` of the
 * requests active, `minConcurrent` always allowed. It keeps a failing upstream
 * from turning into a retry storm.
 */
export class RetryBudget {
  /** Counted retries in flight. */
  active = 0
  readonly #percent: number
  readonly #min: number

  constructor (budget: { percent: number, minConcurrent: number } | undefined) {
    this.#percent = budget?.percent ?? 0
    this.#min = budget === undefined ? 0 : budget.minConcurrent
  }

  /** Whether one more retry fits, with `requests` requests active now. */
  allows (requests: number): boolean {
    return this.active < Math.max(this.#min, Math.floor(requests * this.#percent / 100))
  }
}

import type { Target, AttemptResult, OpenTunnel } from './target.js'
import type { Ticket } from './down-state.js'
import type { PickContext } from './balancer.js'

/** Where a tunnel lease gives its slot back and finds another target (the upstream implements it). */
export interface TunnelOwner {
  readonly name: string
  /** Attempts an upgrade may make: 1, plus `pool.maxRetries` when retries are on. */
  readonly tunnelAttempts: number
  /** Another target for the lease's next attempt (the balancer's pick with its context), or undefined. */
  pick: (context: PickContext<Target>) => Target | undefined
  /** The lease is over: its tunnel slot is free; `opened` is when its tunnel opened (clock ms), or -1. */
  tunnelReleased: (lease: TunnelLease, opened: number) => void
  /** The clock tunnels are timed on (ms). */
  clock: () => number
}

/**
 * An upgrade's hold on its upstream: a tunnel slot (`pool.maxTunnels`,
 * counted apart from requests) and the target the balancer chose, the same
 * grant as a request's `Lease` but with no pooled connection: the tunnel
 * opens a connection of its own. `result()` once per attempt (it feeds the
 * target's state like any attempt), `next()` moves to another target after a
 * failure before the `101` (failover), `watch()` once its tunnel exists (its target can close it), `opened()` at the 101,
 * `release()` once it is over.
 */
export class TunnelLease implements PickContext<Target> {
  readonly #owner: TunnelOwner
  target: Target
  #ticket: Ticket
  /** The consistent-hash key it was admitted with. */
  readonly key: string | undefined
  readonly tunnel = true
  /** Attempts made, the current one included. */
  attempts = 1
  released = false
  #tried: Target[] | null = null
  #open: OpenTunnel | null = null
  #openedAt = -1

  constructor (owner: TunnelOwner, target: Target, ticket: Ticket, key: string | undefined) {
    this.#owner = owner
    this.target = target
    this.#ticket = ticket
    this.key = key
  }

  /** PickContext: a retry goes to a target not tried yet. */
  shouldSelectAnotherHost (target: Target): boolean {
    return this.#tried !== null && this.#tried.includes(target)
  }

  /** What the current attempt came to, into its target (a client's fault says nothing of it). */
  result (result: AttemptResult): void {
    this.target.putResult(this.#ticket, result)
  }

  /** After a failed attempt: another target, within the attempts allowed; false when there is none (the lease stays on the last). */
  next (): boolean {
    if (this.released || this.attempts >= this.#owner.tunnelAttempts) return false
    const tried = this.#tried ??= []
    tried.push(this.target)
    const target = this.#owner.pick(this)
    if (target === undefined) return false
    this.target.tunnelReleased(this.#open)
    target.tunnels++
    if (this.#open !== null) target.tunnelOpened(this.#open)
    this.target = target
    this.#ticket = target.begin()
    this.attempts++
    return true
  }

  /** The tunnel the lease is for, from its upgrade on: its target closes it when it leaves (its upgrade too, if still under way). */
  watch (tunnel: OpenTunnel): void {
    this.#open = tunnel
    this.target.tunnelOpened(tunnel)
  }

  /** The tunnel is open (101 passed on): timed from now. */
  opened (): void {
    this.#openedAt = this.#owner.clock()
  }

  /** Gives the slot back, once. */
  release (): void {
    if (this.released) return
    this.released = true
    this.target.tunnelReleased(this.#open)
    this.#owner.tunnelReleased(this, this.#openedAt)
  }
}

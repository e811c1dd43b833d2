import { skipInterval } from './backoff.js'

/** Why a target is skipped: its connects fail, or its breaker opened on real traffic. */
export type SkipCause = 'connect' | 'breaker'

/**
 * A target's "down" state, one shape per state. Each move makes a new epoch:
 * an attempt carries the epoch it began in (its ticket), and a result from an
 * earlier epoch says nothing of now. So the many failures of one outage (every
 * attempt that was in flight when the target died) are one failure, and a
 * success that began before the outage does not end it.
 */
export type DownState =
  /** In rotation. */
  | { readonly kind: 'up', readonly epoch: number }
  /**
   * Out of rotation since `since`, skipped until `until`: the skip is
   * `retryInterval` doubled once per failed trial in a row at the end of a
   * skip (`failedTrials`), capped; nothing else lengthens it.
   */
  | {
    readonly kind: 'skipped'
    readonly epoch: number
    readonly cause: SkipCause
    readonly reason: string
    readonly since: number
    readonly until: number
    readonly failedTrials: number
    /** When its last trial began (or the skip, before any): quick trials are spaced from it. */
    readonly lastTrial: number
    /** Quick trials that failed in this skip: each doubles the spacing of the next. */
    readonly quickTrials: number
  }
  /** The skip is over: trials may run, `needed` of them must pass; `inFlight` run now, `passed` did. */
  | {
    readonly kind: 'trying'
    readonly epoch: number
    readonly cause: SkipCause
    readonly reason: string
    readonly since: number
    readonly until: number
    readonly failedTrials: number
    readonly lastTrial: number
    readonly quickTrials: number
    /** The trials began before the skip was over (quick): one that fails leaves the skip as it was. */
    readonly quick: boolean
    readonly needed: number
    readonly inFlight: number
    readonly passed: number
  }

/**
 * An attempt's hold on the state: the epoch it began in, times two, plus one
 * when it is a trial. A number, so an attempt allocates nothing for it.
 */
export type Ticket = number

export function isTrial (ticket: Ticket): boolean {
  return (ticket & 1) === 1
}

function epochOf (ticket: Ticket): number {
  return (ticket - (ticket & 1)) / 2
}

/** What the state tells its owner: a target left rotation, came back, or failed a trial while out. */
export type DownEvent = 'down' | 'up' | 'trial-failed'

export interface DownStateOptions {
  /** The first skip, ms; quick trials are spaced from a hundredth of it. */
  interval: number
  /** The longest skip, ms. */
  maxInterval: number
  /** Trials that must pass to end a skip of this cause. */
  trials: (cause: SkipCause) => number
  /** Told of each move out of rotation, back, and of each failed trial. */
  onChange: (event: DownEvent, cause: SkipCause, reason: string) => void
}

/**
 * The one owner of "this target is down" (DESIGN: `pool.retryInterval`): the
 * moves are methods, taken on the request path and by the active checks, with
 * the time given; reading the state never changes it.
 */
export class TargetDownState {
  #state: DownState = { kind: 'up', epoch: 0 }
  readonly #opts: DownStateOptions

  constructor (opts: DownStateOptions) {
    this.#opts = opts
  }

  get state (): DownState {
    return this.#state
  }

  /** In rotation: not skipped, no trial under way. */
  get isUp (): boolean {
    return this.#state.kind === 'up'
  }

  /**
   * Whether an attempt may begin now: always while up; once the skip is over
   * as a trial, while fewer trials run or passed than are needed. With
   * `quick` (no target of the upstream is in rotation), a skipped target's
   * trial may begin before its skip is over: a quick trial, the first a
   * hundredth of `interval` after the skip began (50 ms for 5 s), each next
   * one twice as long after the last (NGINX's quick recovery when every peer
   * failed: a fleet that restarted comes back with the first requests, a dead
   * one costs a connect now and then).
   */
  canBegin (now: number, quick: boolean): boolean {
    const s = this.#state
    switch (s.kind) {
      case 'up': return true
      case 'skipped': return now >= s.until || (quick && now - s.lastTrial >= this.#quickSpacing(s.quickTrials))
      case 'trying': return s.inFlight + s.passed < s.needed
    }
  }

  #quickSpacing (failed: number): number {
    return Math.max(1, this.#opts.interval / 100) * 2 ** Math.min(failed, 30)
  }

  /** An attempt begins (after `canBegin` said it may): its ticket. A skip that is over becomes trials. */
  begin (now: number, quick: boolean): Ticket {
    const s = this.#state
    if (s.kind === 'up') return s.epoch * 2
    if (s.kind === 'skipped') {
      if (!this.canBegin(now, quick)) throw new Error('an attempt began on a skipped target')
      this.#state = { ...s, kind: 'trying', lastTrial: now, quick: now < s.until, needed: this.#opts.trials(s.cause), inFlight: 1, passed: 0 }
      return s.epoch * 2 + 1
    }
    if (s.inFlight + s.passed >= s.needed) throw new Error('more trials than needed')
    this.#state = { ...s, inFlight: s.inFlight + 1 }
    return s.epoch * 2 + 1
  }

  /**
   * An attempt of this ticket failed for `cause`. From up: out of rotation for
   * `interval`. A failed trial: out again, for twice as long as the skip
   * before. A ticket of an earlier epoch changes nothing: it overlapped an
   * outage already counted, or began before the target came back.
   */
  fail (ticket: Ticket, cause: SkipCause, reason: string, now: number): void {
    const s = this.#state
    if (epochOf(ticket) !== s.epoch) return
    if (s.kind === 'up') {
      this.#state = { kind: 'skipped', epoch: s.epoch + 1, cause, reason, since: now, until: now + this.#skip(0), failedTrials: 0, lastTrial: now, quickTrials: 0 }
      this.#opts.onChange('down', cause, reason)
      return
    }
    if (s.kind === 'trying' && isTrial(ticket)) {
      const { epoch, since, lastTrial } = s
      if (s.quick) {
        // A quick trial failed: the skip stays as it was; the next quick one waits twice as long.
        this.#state = { kind: 'skipped', epoch: epoch + 1, cause, reason, since, until: s.until, failedTrials: s.failedTrials, lastTrial, quickTrials: s.quickTrials + 1 }
      } else {
        const failedTrials = s.failedTrials + 1
        this.#state = { kind: 'skipped', epoch: epoch + 1, cause, reason, since, until: now + this.#skip(failedTrials), failedTrials, lastTrial, quickTrials: 0 }
      }
      this.#opts.onChange('trial-failed', cause, reason)
    }
  }

  /** An attempt of this ticket went well: a trial counts towards the return. */
  succeed (ticket: Ticket): void {
    const s = this.#state
    if (s.kind !== 'trying' || !isTrial(ticket) || epochOf(ticket) !== s.epoch) return
    if (s.passed + 1 >= s.needed) {
      this.#state = { kind: 'up', epoch: s.epoch + 1 }
      this.#opts.onChange('up', s.cause, s.needed === 1 ? 'its trial succeeded' : `${s.needed} trials succeeded`)
      return
    }
    this.#state = { ...s, inFlight: s.inFlight - 1, passed: s.passed + 1 }
  }

  /** A trial that never reached the target (the client left first, or its own request was at fault): another may run. */
  abandon (ticket: Ticket): void {
    const s = this.#state
    if (s.kind !== 'trying' || !isTrial(ticket) || epochOf(ticket) !== s.epoch) return
    this.#state = { ...s, inFlight: s.inFlight - 1 }
  }

  /** Whether a result of this ticket still speaks of now (it began in this epoch). */
  current (ticket: Ticket): boolean {
    return epochOf(ticket) === this.#state.epoch
  }

  /** The epoch now, for a probe about to start: `connected` takes it back. */
  get epoch (): number {
    return this.#state.epoch
  }

  /**
   * An active check that started in `epoch` connected (`passed`: and got an
   * expected answer). A skip for failed connects is over at once. A skip of
   * the breaker ends early on a check that passed: its trials (real
   * requests) may run now and decide. One that started before the skip says
   * nothing of now.
   */
  probed (epoch: number, passed: boolean, now: number): void {
    const s = this.#state
    if (s.kind === 'up' || epoch !== s.epoch) return
    if (s.cause === 'connect') {
      this.#state = { kind: 'up', epoch: s.epoch + 1 }
      this.#opts.onChange('up', s.cause, 'an active check connected')
      return
    }
    if (passed && s.kind === 'skipped' && now < s.until) this.#state = { ...s, until: now }
  }

  /**
   * When the next trial may begin (ms): the end of the skip, or the next quick
   * trial before it (`quick`: no target is in rotation); once trials run, when
   * the last one began. Null when up. Reads only.
   */
  nextTrial (quick: boolean): number | null {
    const s = this.#state
    if (s.kind === 'up') return null
    if (s.kind === 'trying') return s.lastTrial
    return quick ? Math.min(s.until, s.lastTrial + this.#quickSpacing(s.quickTrials)) : s.until
  }

  /** Milliseconds until a trial may begin; 0 when one may now, or when up. */
  retryIn (now: number): number {
    const s = this.#state
    return s.kind === 'skipped' ? Math.max(0, s.until - now) : 0
  }

  #skip (failedTrials: number): number {
    return skipInterval(failedTrials + 1, this.#opts.interval, this.#opts.maxInterval)
  }
}

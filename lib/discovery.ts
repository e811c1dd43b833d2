import { promises as dns } from 'node:dns'
import type { RecordWithTtl, SrvRecord } from 'node:dns'
import { isIP } from 'node:net'
import type { DiscoveryStats } from '../types/index.js'
import type { ResolvedDiscovery, ResolvedTarget } from './options/index.js'
import { parseTarget } from './options/index.js'
import { DiscoveryError } from './errors.js'
import type { Random } from './balancer.js'

/** What discovery needs of its upstream. */
export interface DiscoveryHost {
  readonly name: string
  /** Puts the list in force now (adds, keeps, drains, as `setTargets`); drains go on in the background. */
  replaceTargets (list: ResolvedTarget[]): void
  /** Targets in the upstream's list now. */
  readonly targetCount: number
}

export interface DiscoveryLogger {
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  debug (obj: object, msg: string): void
}

export interface DiscoveryDeps {
  log: DiscoveryLogger
  now: () => number
  random: Random
}

/** What one lookup gave: its targets (none: an empty answer) and, for DNS, the least TTL of the answer (s). */
interface Answer {
  targets: ResolvedTarget[]
  ttl: number | null
}

/** A lookup that found the name with no address (NODATA) or no such name (NXDOMAIN): an empty answer, not a failure. */
const EMPTY_CODES = new Set(['ENODATA', 'ENOTFOUND'])
/** TTL-driven refreshes never come sooner than this (ms), unless `refresh` itself is shorter. */
export const MIN_REFRESH = 1000

/**
 * Service discovery for one upstream: a DNS name's A/AAAA records, an SRV
 * name's records, or a function of the user's, read at `refresh` (or a DNS
 * answer's TTL, if sooner, never sooner than 1 s) and put in force like
 * `setTargets`. A failed or timed-out lookup keeps the last good list and is
 * retried with backoff (doubling from 1 s up to `refresh`, jittered); an empty
 * answer after a good list keeps the last good list for `maxStale`, then is
 * applied. `start()` (the app's ready) waits for the first good answer, up to
 * `timeout`.
 */
export class Discovery {
  readonly config: ResolvedDiscovery
  readonly refreshes = { ok: 0, empty: 0, failed: 0 }
  lastRefresh: number | null = null
  lastGood: number | null = null
  lastError: string | null = null
  nextRefresh: number | null = null
  staleUntil: number | null = null
  /** Targets the last good answer gave. */
  targets = 0
  readonly #host: DiscoveryHost
  readonly #deps: DiscoveryDeps
  readonly #resolver: dns.Resolver | null
  #timer: NodeJS.Timeout | null = null
  #lookup: AbortController | null = null
  /** Lookups in a row that gave no list (failed or empty): the backoff doubles with them. */
  #failures = 0
  /** Failed lookups in a row: the first is logged, the rest at debug. */
  #failedRun = 0
  /** The wait after a good answer: `refresh`, or the answer's TTL if sooner, never under the floor. */
  #interval = 0
  #stopped = false

  constructor (config: ResolvedDiscovery, host: DiscoveryHost, deps: DiscoveryDeps) {
    this.config = config
    this.#host = host
    this.#deps = deps
    if (config.kind === 'discover') {
      this.#resolver = null
    } else {
      // One try per lookup, bounded by its timeout: the backoff between lookups does the retrying.
      this.#resolver = new dns.Resolver({ timeout: config.timeout, tries: 1 })
      if (config.servers !== null) this.#resolver.setServers(config.servers)
    }
  }

  /** What is looked up, for logs and errors: `dns users.internal`, `srv _http._tcp.users.internal`, `discover`. */
  get what (): string {
    return this.config.kind === 'discover' ? 'discover()' : `${this.config.kind} ${this.config.name}`
  }

  /**
   * The first lookup, retried with backoff until one gives targets or
   * `timeout` has passed: then a DiscoveryError naming the upstream and the
   * name. Refreshes follow on their own.
   */
  async start (): Promise<void> {
    const deadline = this.#deps.now() + this.config.timeout
    for (;;) {
      const result = await this.#once(deadline - this.#deps.now())
      if (this.#stopped) return
      if (result === 'ok') {
        this.#arm(this.#interval)
        return
      }
      const wait = this.#backoff()
      if (this.#deps.now() + wait >= deadline) {
        throw new DiscoveryError(`upstream(${this.#host.name}).discovery: ${this.what} gave no target within ${this.config.timeout} ms (${this.lastError ?? 'no target in the answer'})`)
      }
      await new Promise<void>((resolve) => { this.#arm(wait, resolve) })
      if (this.#stopped) return
    }
  }

  /** Stops the refreshes; a lookup in flight is abandoned. */
  stop (): void {
    this.#stopped = true
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.nextRefresh = null
    this.#lookup?.abort(new Error('discovery stopped'))
    this.#resolver?.cancel()
  }

  stats (): DiscoveryStats {
    return {
      kind: this.config.kind,
      name: this.config.name,
      refreshes: { ...this.refreshes },
      lastRefresh: this.lastRefresh,
      lastGood: this.lastGood,
      lastError: this.lastError,
      nextRefresh: this.nextRefresh,
      staleUntil: this.staleUntil,
      targets: this.targets
    }
  }

  /** Arms the next lookup (or, with `then`, only a wait the caller goes on from). */
  #arm (ms: number, then?: () => void): void {
    if (this.#stopped) {
      then?.()
      return
    }
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.nextRefresh = this.#deps.now() + ms
    this.#timer = setTimeout(() => {
      this.#timer = null
      if (then !== undefined) then()
      else this.#refresh().catch(() => {})
    }, ms)
    this.#timer.unref()
  }

  async #refresh (): Promise<void> {
    const result = await this.#once(this.config.timeout)
    if (this.#stopped) return
    this.#arm(result === 'ok' ? this.#interval : this.#backoff())
  }

  /** The wait after a failed or empty lookup: doubling from 1 s (or `refresh`, if shorter) up to `refresh`, jittered down by up to half. */
  #backoff (): number {
    const refresh = this.config.refresh
    const base = Math.min(MIN_REFRESH, refresh)
    const cap = Math.min(refresh, base * 2 ** Math.min(Math.max(this.#failures - 1, 0), 20))
    return Math.max(1, Math.round(cap / 2 + this.#deps.random() * cap / 2))
  }

  /** One lookup, its result counted, logged and applied: `ok` when a list is in force after it. */
  async #once (budget: number): Promise<'ok' | 'empty' | 'failed'> {
    let answer: Answer
    try {
      answer = await this.#bounded(Math.max(1, Math.min(budget, this.config.timeout)))
    } catch (err) {
      if (this.#stopped) return 'failed'
      this.#failed(err as Error)
      return 'failed'
    }
    if (this.#stopped) return 'failed'
    const now = this.#deps.now()
    this.lastRefresh = now
    if (answer.targets.length === 0) return this.#empty(now)
    this.refreshes.ok++
    this.lastGood = now
    this.lastError = null
    if (this.#failures > 0) {
      this.#deps.log.info({ upstream: this.#host.name, discovery: this.what, failures: this.#failures, targets: answer.targets.length }, 'discovery lookup good again')
    }
    this.#failures = 0
    this.#failedRun = 0
    this.staleUntil = null
    this.targets = answer.targets.length
    const floor = Math.min(MIN_REFRESH, this.config.refresh)
    this.#interval = answer.ttl === null ? this.config.refresh : Math.max(floor, Math.min(this.config.refresh, answer.ttl * 1000))
    this.#host.replaceTargets(answer.targets)
    return 'ok'
  }

  #failed (err: Error): void {
    this.refreshes.failed++
    this.lastRefresh = this.#deps.now()
    this.lastError = err.message
    this.#failures++
    this.#failedRun++
    const fields = { upstream: this.#host.name, discovery: this.what, err: err.message, failures: this.#failedRun, kept: this.#host.targetCount }
    // Logged once per run of failures; the line when it ends says how many there were.
    if (this.#failedRun === 1) this.#deps.log.warn(fields, 'discovery lookup failed: keeping the last good list, retrying with backoff')
    else this.#deps.log.debug(fields, 'discovery lookup failed again')
  }

  #empty (now: number): 'empty' {
    this.refreshes.empty++
    this.lastError = `${this.what}: no target in the answer`
    this.#failures++
    this.#failedRun = 0
    const fields = { upstream: this.#host.name, discovery: this.what, kept: this.#host.targetCount }
    // Before any good list, or once the empty answer is in force, there is nothing to keep.
    if (this.lastGood === null || this.targets === 0) return 'empty'
    if (this.staleUntil === null) {
      this.staleUntil = now + this.config.maxStale
      if (this.config.maxStale > 0) {
        this.#deps.log.warn({ ...fields, until: this.staleUntil }, `discovery answered with no target: keeping the last good list for ${this.config.maxStale} ms`)
      }
    }
    if (now < this.staleUntil) return 'empty'
    this.#deps.log.warn(fields, 'discovery answered with no target past maxStale: the targets are removed')
    this.staleUntil = null
    this.targets = 0
    this.#host.replaceTargets([])
    return 'empty'
  }

  /** A lookup bounded by `ms`: its abort signal fires and the promise rejects at the bound. */
  async #bounded (ms: number): Promise<Answer> {
    const controller = this.#lookup = new AbortController()
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        const err = new Error(`${this.what} timed out after ${ms} ms`)
        controller.abort(err)
        reject(err)
      }, ms)
      timer.unref()
    })
    try {
      return await Promise.race([this.#read(controller.signal), timeout])
    } finally {
      clearTimeout(timer)
      if (this.#lookup === controller) this.#lookup = null
    }
  }

  async #read (signal: AbortSignal): Promise<Answer> {
    const c = this.config
    if (c.kind === 'discover') return { targets: this.#hookTargets(await c.discover(signal)), ttl: null }
    if (c.kind === 'dns') {
      const { addresses, ttl } = await this.#addresses(c.name, c.family)
      return { targets: dedupe(addresses.map((a) => addressTarget(c.protocol, a, c.port, c.name, 1))), ttl }
    }
    return await this.#srv(c.name, c.protocol, c.family)
  }

  #hookTargets (list: unknown): ResolvedTarget[] {
    if (!Array.isArray(list)) throw new Error(`discover() gave ${typeof list}, not an array of targets`)
    const out = list.map((t, i) => parseTarget(t, `discover()[${i}]`))
    const seen = new Set<string>()
    for (const [i, t] of out.entries()) {
      if (seen.has(t.origin)) throw new Error(`discover()[${i}]: ${JSON.stringify(t.url)} is listed twice`)
      seen.add(t.origin)
    }
    return out
  }

  /** A name's addresses of the family (4, 6, or both) and their least TTL; an empty list when the name has none. */
  async #addresses (name: string, family: 0 | 4 | 6): Promise<{ addresses: string[], ttl: number | null }> {
    const r = this.#resolver!
    const ask = async (f: 4 | 6): Promise<RecordWithTtl[]> => {
      try {
        return f === 4 ? await r.resolve4(name, { ttl: true }) : await r.resolve6(name, { ttl: true })
      } catch (err) {
        if (EMPTY_CODES.has((err as { code?: string }).code ?? '')) return []
        throw err
      }
    }
    const families: Array<4 | 6> = family === 0 ? [4, 6] : [family]
    const settled = await Promise.allSettled(families.map(ask))
    const records: RecordWithTtl[] = []
    let failure: unknown = null
    for (const s of settled) {
      if (s.status === 'fulfilled') records.push(...s.value)
      else failure ??= s.reason
    }
    // With both families asked, one answering is enough; a failure counts when nothing came back.
    if (records.length === 0 && failure !== null) throw failure
    let ttl: number | null = null
    for (const rec of records) ttl = ttl === null ? rec.ttl : Math.min(ttl, rec.ttl)
    return { addresses: records.map((rec) => rec.address), ttl }
  }

  /**
   * SRV: the records of the lowest priority whose names resolve (the next
   * priority only when none of them does), one target per record and address,
   * its port, its weight (1 to 1000). Node gives no TTL of SRV records: the
   * least TTL of their names' addresses stands for it.
   */
  async #srv (name: string, protocol: 'http' | 'https', family: 0 | 4 | 6): Promise<Answer> {
    let records: SrvRecord[]
    try {
      records = await this.#resolver!.resolveSrv(name)
    } catch (err) {
      if (EMPTY_CODES.has((err as { code?: string }).code ?? '')) return { targets: [], ttl: null }
      throw err
    }
    // A target of "." says the service is not offered there (RFC 2782).
    records = records.filter((r) => r.name !== '' && r.name !== '.')
    const priorities = [...new Set(records.map((r) => r.priority))].sort((a, b) => a - b)
    let failure: unknown = null
    for (const priority of priorities) {
      const group = records.filter((r) => r.priority === priority)
      const resolved = await Promise.allSettled(group.map(async (r) => {
        if (isIP(r.name) !== 0) return { record: r, addresses: [r.name], ttl: null }
        return { record: r, ...(await this.#addresses(r.name, family)) }
      }))
      const targets: ResolvedTarget[] = []
      let ttl: number | null = null
      for (const s of resolved) {
        if (s.status === 'rejected') {
          failure ??= s.reason
          continue
        }
        const { record, addresses } = s.value
        if (s.value.ttl !== null) ttl = ttl === null ? s.value.ttl : Math.min(ttl, s.value.ttl)
        const weight = Math.min(1000, Math.max(1, record.weight))
        for (const a of addresses) targets.push(addressTarget(protocol, a, record.port, record.name.replace(/\.$/, ''), weight))
      }
      if (targets.length > 0) return { targets: dedupe(targets), ttl }
    }
    if (failure !== null) throw failure
    return { targets: [], ttl: null }
  }
}

/** A target at `address`:`port` serving `name` (its Host header and TLS name). */
function addressTarget (protocol: 'http' | 'https', address: string, port: number, name: string, weight: number): ResolvedTarget {
  const at = isIP(address) === 6 ? `[${address}]` : address
  const origin = new URL(`${protocol}://${at}:${port}`).origin
  const defaultPort = protocol === 'https' ? 443 : 80
  return { url: origin, origin, weight, host: port === defaultPort ? name : `${name}:${port}`, servername: name }
}

/** One target per address and port: a second record of the same adds its weight (capped at 1000). */
function dedupe (list: ResolvedTarget[]): ResolvedTarget[] {
  const byOrigin = new Map<string, ResolvedTarget>()
  for (const t of list) {
    const seen = byOrigin.get(t.origin)
    if (seen === undefined) byOrigin.set(t.origin, { ...t })
    else seen.weight = Math.min(1000, seen.weight + t.weight)
  }
  return [...byOrigin.values()]
}

// Micro-benchmark of admission with requests already queued: the cost of
// (a) queueing one more request and cancelling it (its client hung up),
// (b) one acquire() refused at once because the queue is full, and
// (c) serving one queued request when capacity frees, with 10, 1,000 and
// 10,000 requests waiting. Run with `npm run bench:admission`. CPU only: the
// upstream's connections are stand-ins (the ConnectionFactory seam), nothing
// goes on the network.
//
// Environment: ADMISSION_OPS (operations per timing, 200000), ADMISSION_REPEAT
// (timings per cell, the median is printed; 5).
import { Upstream } from '../lib/upstream.js'
import type { Lease } from '../lib/lease.js'
import type { LeaseWaiter } from '../lib/admission.js'
import { resolveOptions } from '../lib/options/index.js'
import type { ConnectionClient, ConnectionFactory } from '../lib/connection-pool.js'

const OPS = positiveInteger('ADMISSION_OPS', 200_000)
const REPEAT = positiveInteger('ADMISSION_REPEAT', 5)
const DEPTHS = [10, 1_000, 10_000]

function positiveInteger (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name}: ${JSON.stringify(raw)} is not a positive integer`)
  return value
}

const factory: ConnectionFactory = (): ConnectionClient => ({
  dispatch () { return true },
  async destroy () {},
  on () { return this }
})

/** A waiter as the proxy's own (a class: no closures per waiter); the queue sets its deadline (now + the 1 h queue timeout). */
abstract class Waiting implements LeaseWaiter {
  deadline = 0
  cancelled = false
  readonly key = undefined
  refused = false
  shouldSelectAnotherHost (): boolean { return false }
  abstract grant (lease: Lease): void
  fail (): void { this.refused = true }
}

/** A waiter whose grant releases its lease at once. */
class Releasing extends Waiting {
  grant (lease: Lease): void { lease.release() }
}

/** A waiter that keeps its lease, as the one held: `holder.lease`. */
class Keeping extends Waiting {
  readonly holder: { lease: Lease | null }
  constructor (holder: { lease: Lease | null }) {
    super()
    this.holder = holder
  }

  grant (lease: Lease): void { this.holder.lease = lease }
}

/** One upstream, one target, one connection (taken by `lease`), room for `maxQueue` waiters for an hour. */
function setup (maxQueue = 20_000): { up: Upstream, lease: Lease } {
  const config = resolveOptions({
    upstreams: { u: { targets: ['http://127.0.0.1:1'], pool: { maxActive: 1, maxQueue, queueTimeout: '1h' } } }
  }).upstreams[0]!
  const up = new Upstream(config, { factory })
  const holder: { lease: Lease | null } = { lease: null }
  up.acquire(new Keeping(holder))
  if (holder.lease === null) throw new Error('the first acquire() found no connection')
  return { up, lease: holder.lease }
}

/** Queues `waiters` (untimed), checking none is refused. */
function fill (up: Upstream, waiters: Waiting[]): void {
  for (const [i, w] of waiters.entries()) {
    up.acquire(w)
    if (w.refused) throw new Error(`the queue refused waiter ${i + 1} of ${waiters.length}`)
  }
}

/** `n` new waiters, made before the clock starts: their allocation is the caller's cost, not admission's. */
function releasing (n: number): Releasing[] {
  return Array.from({ length: n }, () => new Releasing())
}

function now (): bigint {
  return process.hrtime.bigint()
}

/** (a) enqueue and cancel one more waiter, `OPS` times, with `depth` waiting: ns per pair. */
function enqueueCancel (depth: number): number {
  const { up, lease } = setup()
  fill(up, releasing(depth))
  const more = releasing(OPS)
  const start = now()
  for (let i = 0; i < OPS; i++) {
    const w = more[i]!
    up.acquire(w)
    up.cancel(w)
  }
  const ns = Number(now() - start) / OPS
  if (up.pending !== depth) throw new Error(`${up.pending} waiting after enqueue + cancel, not ${depth}`)
  lease.release()
  return ns
}

/** (b) acquire() with `depth` waiting in a full queue, which must refuse at once (503): ns per call. */
function refusedAdmit (depth: number): number {
  const { up, lease } = setup(depth)
  fill(up, releasing(depth))
  const more = releasing(OPS)
  const start = now()
  for (let i = 0; i < OPS; i++) up.acquire(more[i]!)
  const ns = Number(now() - start) / OPS
  const admitted = more.filter((w) => !w.refused).length
  if (admitted !== 0) throw new Error(`acquire() queued ${admitted} past a full queue of ${depth}`)
  lease.release()
  return ns
}

/**
 * (c) releasing the held lease grants the head waiter, whose grant releases
 * at once, which grants the next, until the queue is empty: ns per waiter
 * served, over depths from `depth` down to 0. Refilled (untimed) until about
 * `OPS` waiters were served.
 */
function drain (depth: number): number {
  const { up, lease: first } = setup()
  const holder: { lease: Lease | null } = { lease: first }
  let served = 0
  let total = 0n
  const runs = Math.max(1, Math.ceil(OPS / depth))
  for (let r = 0; r < runs; r++) {
    if (holder.lease === null) up.acquire(new Keeping(holder))
    const lease = holder.lease
    if (lease === null) throw new Error('no connection after the queue drained')
    fill(up, releasing(depth))
    const start = now()
    lease.release()
    total += now() - start
    holder.lease = null
    if (up.pending !== 0) throw new Error(`${up.pending} still waiting after the drain`)
    served += depth
  }
  // each timing holds about one clock read besides the drain
  return (Number(total) - runs * clockCost) / served
}

/**
 * (c') the same at a constant depth: each operation queues one more waiter at
 * the tail and releases the lease held, which grants the head waiter (that
 * one keeps its lease), so `depth` stay queued. ns per waiter served,
 * enqueue included.
 */
function steadyServe (depth: number): number {
  const { up, lease } = setup()
  const holder: { lease: Lease | null } = { lease }
  fill(up, Array.from({ length: depth }, () => new Keeping(holder)))
  const more = Array.from({ length: OPS }, () => new Keeping(holder))
  const start = now()
  for (let i = 0; i < OPS; i++) {
    up.acquire(more[i]!)
    holder.lease!.release()
  }
  const ns = Number(now() - start) / OPS
  if (up.pending !== depth) throw new Error(`${up.pending} waiting, not ${depth}`)
  return ns
}

/** What one clock read costs, to take out of the per-drain timings. */
function measureClock (): number {
  const n = 1_000_000
  for (let i = 0; i < n; i++) now()
  const start = now()
  for (let i = 0; i < n; i++) now()
  return Number(now() - start) / n
}

function median (values: number[]): number {
  const s = [...values].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

const clockCost = measureClock()

const measurements: Array<[string, (depth: number) => number]> = [
  ['(a) enqueue + cancel one more', enqueueCancel],
  ['(b) acquire() -> 503 (queue full)', refusedAdmit],
  ['(c) serve one waiter (drain, per waiter)', drain],
  ["(c') serve one at constant depth, enqueue incl.", steadyServe]
]

// warm-up: every path, at every depth, once
for (const [, fn] of measurements) for (const depth of DEPTHS) fn(depth)

const rows: string[][] = [['operation', ...DEPTHS.map((d) => `${d.toLocaleString('en-US')} queued`), `${DEPTHS.at(-1)!.toLocaleString('en-US')}/${DEPTHS[0]!.toLocaleString('en-US')}`]]
for (const [label, fn] of measurements) {
  const perDepth = DEPTHS.map((depth) => median(Array.from({ length: REPEAT }, () => fn(depth))))
  rows.push([label, ...perDepth.map((ns) => `${ns.toFixed(1)} ns`), `x${(perDepth.at(-1)! / perDepth[0]!).toFixed(2)}`])
}
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
for (const r of rows) console.log(r.map((cell, c) => c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)).join('  '))
console.log(`(median of ${REPEAT} timings of ${OPS.toLocaleString('en-US')} operations each; one target, maxActive 1, stand-in connections; clock read ${clockCost.toFixed(0)} ns, taken out of (c); node ${process.version})`)

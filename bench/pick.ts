// Micro-benchmark of the balancers: the cost of one pick with 3, 30 and 300
// targets, for each policy, and how evenly the picks of the 3-target run
// spread over equal targets (max / min - 1; weighted rows aside). Run with
// `npm run bench:pick`. CPU only, no network.
import { makeBalancer } from '../lib/balancer.js'
import type { Pickable } from '../lib/balancer.js'
import { PeakEwma } from '../lib/peak-ewma.js'
import type { BalancePolicy } from '../types/index.js'

class Target implements Pickable {
  readonly origin: string
  readonly weight: number
  readonly index: number
  outstanding = 0
  picks = 0
  /** Peak EWMA's score: every target answered in 1 ms a moment ago. */
  readonly score = new PeakEwma()
  constructor (i: number, weight: number) {
    this.origin = `http://10.0.${i >> 8}.${i & 255}:8080`
    this.weight = weight
    this.index = i
    this.score.observe(1, Date.now())
  }

  canTake (): boolean { return true }
}

const PICKS = Number(process.env.PICKS ?? 2_000_000)
const policies: Array<[string, BalancePolicy, (i: number) => number]> = [
  ['round-robin', 'round-robin', () => 1],
  ['round-robin weighted', 'round-robin', (i) => 1 + (i % 5)],
  ['least-request', 'least-request', () => 1],
  ['least-request weighted', 'least-request', (i) => 1 + (i % 5)],
  ['peak-ewma', 'peak-ewma', () => 1],
  ['peak-ewma weighted', 'peak-ewma', (i) => 1 + (i % 5)],
  ['random weighted', 'random', (i) => 1 + (i % 5)],
  ['consistent-hash', 'consistent-hash', () => 1]
]
const keys = Array.from({ length: 1024 }, (_, i) => ({ key: `user-${i}`, shouldSelectAnotherHost: () => false }))

const rows: string[][] = [['policy', '3 targets', '30 targets', '300 targets', '300/3', 'spread (3)']]
for (const [label, policy, weight] of policies) {
  const row = [label]
  const perPick: number[] = []
  let spread = ''
  for (const n of [3, 30, 300]) {
    const targets = Array.from({ length: n }, (_, i) => new Target(i, weight(i)))
    const b = makeBalancer<Target>(policy, Math.random, Date.now)
    b.update(targets)
    let sink = 0
    // warm up, then measure
    for (let i = 0; i < 100_000; i++) sink += b.pick(keys[i & 1023])!.weight
    const start = process.hrtime.bigint()
    for (let i = 0; i < PICKS; i++) {
      const t = b.pick(keys[i & 1023])!
      t.outstanding = (t.outstanding + 1) & 7 // some load for least-request
      t.picks++
      sink += t.weight
    }
    const ns = Number(process.hrtime.bigint() - start) / PICKS
    if (n === 3 && targets.every((t) => t.weight === 1)) {
      const picks = targets.map((t) => t.picks)
      spread = `${(100 * (Math.max(...picks) / Math.min(...picks) - 1)).toFixed(1)}%`
    }
    if (sink === 0) console.log('')
    perPick.push(ns)
    row.push(`${ns.toFixed(0)} ns`)
  }
  row.push(`x${(perPick[2] / perPick[0]).toFixed(1)}`, spread === '' ? '-' : spread)
  rows.push(row)
}
const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)))
for (const r of rows) console.log(r.map((cell, c) => c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])).join('  '))
console.log(`(${PICKS} picks each, node ${process.version})`)

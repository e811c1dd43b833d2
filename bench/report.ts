// The benchmark's figures: each arm's medians, the plugin's ratios to plain
// http-proxy (taken round by round, so the machine's drift between rounds
// cancels), the A-vs-A noise, the tables run.ts prints, and the check of each
// target the project set itself.
import type { LoadResult } from './load.js'

/** saturated: as fast as the connections go; rate: the fixed-rate phase */
export type Phase = 'saturated' | 'rate'

/** A kill and restart during one run, as it happened (ms from the start of the load). */
export interface DisruptionRecord {
  target: string
  killedAt: number
  listeningAt: number
  down: number
  /** the killed process, and what it had counted just before (null when it did not answer) */
  killedPid: number | undefined
  killedConnections: number | null
  killedRequests: number | null
}

export interface Run extends LoadResult {
  round: number
  phase: Phase
  /** the fixed-rate generator's own lag, p99.9, ms */
  lagP999: number | null
  /** CPU time the gateway process used during the run, per response, µs */
  gatewayCpuPerResponse: number | null
  /** connections the upstreams accepted during the run */
  upstreamConnections: number | null
  /** requests each target received during the run (a dead one: 0), the lead-in's included */
  upstreamRequests: number[] | null
  /** requests sent before the measure (a fixed-rate run's lead-in; 0 for a closed loop) */
  leadInSent: number
  disruption: DisruptionRecord | null
}

/** What report.ts needs of an arm. */
export interface ArmRecord {
  name: string
  via: string
  urls: string[]
  error: string | null
  runs: Run[]
  rateRuns: Run[]
  warmupRequests: number[] | null
  peakRssKiB: number | null
}

export interface Summary {
  arm: string
  via: string
  phase: Phase
  status: 'ok' | 'failed'
  error: string | null
  rps: number | null
  p50: number | null
  p99: number | null
  p999: number | null
  /** 2xx over everything sent and not still out at the end, pooled over the rounds */
  success: number | null
  responses: number
  ok: number
  errors: number
  timeouts: number
  non2xx: number
  dropped: number
  statusCodes: Record<string, number>
  gatewayCpuPerResponse: number | null
  upstreamConnections: number | null
  /** each target's share of the requests the targets received, pooled over the rounds */
  targetShare: number[] | null
  /** requests the targets received per answer the client got, pooled over the rounds (1 plus retries and hedges) */
  upstreamPerAnswer: number | null
  /** the fixed-rate generator's lag, p99.9, worst of the rounds */
  lagP999: number | null
  peakRssKiB: number | null
}

/** Round-by-round ratios b / a of one figure: their median and range. */
export interface Paired {
  median: number | null
  min: number | null
  max: number | null
  rounds: number
}

export interface PairRatios {
  plain: string
  plugin: string
  /** plugin / plain, round by round, saturated runs */
  rps: Paired
  p99: Paired
  cpu: Paired
  /** plugin / plain, round by round, fixed-rate runs */
  rateP99: Paired
  p999Plain: number | null
  p999Plugin: number | null
  rateP99Plain: number | null
  rateP99Plugin: number | null
  rateP999Plain: number | null
  rateP999Plugin: number | null
  /** over every run of both phases */
  successPlain: number | null
  successPlugin: number | null
  rssPlain: number | null
  rssPlugin: number | null
}

export interface Noise {
  a: string
  b: string
  /** A' / A, round by round */
  rps: Paired
  p99: Paired
  rateP99: Paired
}

/** One side-by-side run: two gateways loaded at once. */
export interface DuelRound {
  round: number
  aRps: number
  bRps: number
  /** gateway CPU per response, µs */
  aCpu: number | null
  bCpu: number | null
  aSuccess: number
  bSuccess: number
}

export interface DuelRecord {
  a: string
  b: string
  rounds: DuelRound[]
  error: string | null
}

export interface ScenarioFigures {
  name: string
  error: string | null
  summaries: Summary[]
  rateSummaries: Summary[]
  pairs: PairRatios[]
  noise: Noise
  duels: DuelRecord[]
}

/** b / a of a side-by-side figure, round by round. */
export function duelRatio (d: DuelRecord, f: (r: DuelRound) => [number | null, number | null]): Paired {
  const ratios: number[] = []
  for (const r of d.rounds) {
    const [x, y] = f(r)
    if (x !== null && y !== null && x > 0) ratios.push(y / x)
  }
  return pairedOf(ratios)
}

function pairedOf (ratios: number[]): Paired {
  return {
    median: median(ratios),
    min: ratios.length > 0 ? Math.min(...ratios) : null,
    max: ratios.length > 0 ? Math.max(...ratios) : null,
    rounds: ratios.length
  }
}

const duelRps = (r: DuelRound): [number, number] => [r.aRps, r.bRps]
const duelCpu = (r: DuelRound): [number | null, number | null] => [r.aCpu, r.bCpu]

export function median (values: number[]): number | null {
  if (values.length === 0) return null
  const s = [...values].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export function total (counts: number[] | null): number | null {
  return counts === null ? null : counts.reduce((a, b) => a + b, 0)
}

export function fmt (value: number | null | undefined, digits: number): string {
  return value === null || value === undefined ? '-' : value.toFixed(digits)
}

export function fmtRatio (value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `x${value.toFixed(3)}`
}

/** A paired ratio with its range over the rounds: x0.981 (0.95-1.02) */
export function fmtPaired (p: Paired): string {
  if (p.median === null) return '-'
  return p.rounds > 1 ? `x${p.median.toFixed(3)} (${p.min!.toFixed(2)}-${p.max!.toFixed(2)})` : `x${p.median.toFixed(3)}`
}

/** Shares as percentages, one per target: 49.9/50.0/0.1 */
export function fmtShare (shares: number[] | null): string {
  if (shares === null) return '-'
  return shares.map((x) => x === 0 ? '0' : x < 0.001 ? (x * 100).toFixed(3) : (x * 100).toFixed(1)).join('/')
}

/** A success ratio as a percentage, never rounded up to 100% unless it is. */
export function fmtSuccess (value: number | null | undefined): string {
  if (value === null || value === undefined) return '-'
  if (value === 1) return '100%'
  return `${(Math.floor(value * 100_000) / 1000).toFixed(3)}%`
}

export function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ').trimEnd()).join('\n')
}

/** Each target's share of the requests, pooled over the runs; null when a run lacks counts. */
function shareOf (runs: Run[]): number[] | null {
  let sums: number[] | null = null
  for (const r of runs) {
    if (r.upstreamRequests === null) return null
    sums ??= r.upstreamRequests.map(() => 0)
    for (const [i, n] of r.upstreamRequests.entries()) sums[i] = (sums[i] ?? 0) + n
  }
  const all = total(sums)
  return sums === null || all === null || all === 0 ? null : sums.map((n) => n / all)
}

/** Requests the targets received per request sent (answers, and a fixed-rate run's lead-in), pooled over runs; null when a run lacks counts. */
function perAnswer (runs: Run[]): number | null {
  let received = 0
  let answers = 0
  for (const r of runs) {
    const n = total(r.upstreamRequests)
    if (n === null) return null
    received += n
    answers += r.responses + (r.leadInSent ?? 0)
  }
  return answers > 0 ? received / answers : null
}

/** 2xx over answers, errors and dropped requests, pooled over runs. */
function successOf (runs: Run[]): number | null {
  let ok = 0
  let attempts = 0
  for (const r of runs) {
    ok += r.ok
    attempts += r.responses + r.errors + r.dropped
  }
  return attempts > 0 ? ok / attempts : null
}

export function summarize (arm: ArmRecord, phase: Phase): Summary {
  const runs = phase === 'rate' ? arm.rateRuns : arm.runs
  const pick = (f: (r: Run) => number | null): number | null =>
    median(runs.map(f).filter((v): v is number => v !== null))
  const sum = (f: (r: Run) => number): number => runs.reduce((n, r) => n + f(r), 0)
  const statusCodes: Record<string, number> = {}
  for (const r of runs) {
    for (const [code, n] of Object.entries(r.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + n
  }
  const lags = runs.map((r) => r.lagP999).filter((v): v is number => v !== null)
  return {
    arm: arm.name,
    via: arm.via,
    phase,
    status: arm.error === null && runs.length > 0 ? 'ok' : 'failed',
    error: arm.error,
    rps: pick((r) => r.rps),
    p50: pick((r) => r.latency.p50),
    p99: pick((r) => r.latency.p99),
    p999: pick((r) => r.latency.p999),
    success: successOf(runs),
    responses: sum((r) => r.responses),
    ok: sum((r) => r.ok),
    errors: sum((r) => r.errors),
    timeouts: sum((r) => r.timeouts),
    non2xx: sum((r) => r.non2xx),
    dropped: sum((r) => r.dropped),
    statusCodes,
    gatewayCpuPerResponse: pick((r) => r.gatewayCpuPerResponse),
    upstreamConnections: pick((r) => r.upstreamConnections),
    targetShare: shareOf(runs),
    upstreamPerAnswer: perAnswer(runs),
    lagP999: lags.length > 0 ? Math.max(...lags) : null,
    peakRssKiB: arm.peakRssKiB
  }
}

/** The ratio b / a of one figure in each round both arms ran, with median and range. */
export function paired (a: Run[], b: Run[], f: (r: Run) => number | null): Paired {
  const ratios: number[] = []
  for (const rb of b) {
    const ra = a.find((r) => r.round === rb.round)
    if (ra === undefined) continue
    const x = f(ra)
    const y = f(rb)
    if (x === null || y === null || x === 0) continue
    ratios.push(y / x)
  }
  return pairedOf(ratios)
}

const NONE: Paired = { median: null, min: null, max: null, rounds: 0 }

function usable (arm: ArmRecord | undefined): arm is ArmRecord {
  return arm !== undefined && arm.error === null && arm.runs.length > 0
}

export function pairRatios (arms: ArmRecord[], summaries: Summary[], rateSummaries: Summary[], plainName: string, pluginName: string): PairRatios {
  const plain = arms.find((a) => a.name === plainName)
  const plugin = arms.find((a) => a.name === pluginName)
  const both = usable(plain) && usable(plugin)
  const s = (name: string): Summary | undefined => summaries.find((x) => x.arm === name && x.status === 'ok')
  const rs = (name: string): Summary | undefined => rateSummaries.find((x) => x.arm === name && x.status === 'ok')
  const all = (arm: ArmRecord | undefined): number | null => usable(arm) ? successOf([...arm.runs, ...arm.rateRuns]) : null
  return {
    plain: plainName,
    plugin: pluginName,
    rps: both ? paired(plain.runs, plugin.runs, (r) => r.rps) : NONE,
    p99: both ? paired(plain.runs, plugin.runs, (r) => r.latency.p99) : NONE,
    cpu: both ? paired(plain.runs, plugin.runs, (r) => r.gatewayCpuPerResponse) : NONE,
    rateP99: both ? paired(plain.rateRuns, plugin.rateRuns, (r) => r.latency.p99) : NONE,
    p999Plain: s(plainName)?.p999 ?? null,
    p999Plugin: s(pluginName)?.p999 ?? null,
    rateP99Plain: rs(plainName)?.p99 ?? null,
    rateP99Plugin: rs(pluginName)?.p99 ?? null,
    rateP999Plain: rs(plainName)?.p999 ?? null,
    rateP999Plugin: rs(pluginName)?.p999 ?? null,
    successPlain: all(plain),
    successPlugin: all(plugin),
    rssPlain: usable(plain) ? plain.peakRssKiB : null,
    rssPlugin: usable(plugin) ? plugin.peakRssKiB : null
  }
}

export function noiseOf (arms: ArmRecord[], [aName, bName]: [string, string]): Noise {
  const a = arms.find((x) => x.name === aName)
  const b = arms.find((x) => x.name === bName)
  const both = usable(a) && usable(b)
  return {
    a: aName,
    b: bName,
    rps: both ? paired(a.runs, b.runs, (r) => r.rps) : NONE,
    p99: both ? paired(a.runs, b.runs, (r) => r.latency.p99) : NONE,
    rateP99: both ? paired(a.rateRuns, b.rateRuns, (r) => r.latency.p99) : NONE
  }
}

/** The tables and lines of one scenario. */
export function scenarioLines (figures: ScenarioFigures, rounds: number, rate: { rate: number, duration: number } | null, arms: ArmRecord[]): string[] {
  const { summaries, rateSummaries, pairs, noise } = figures
  const versus = (name: string): PairRatios | undefined => pairs.find((p) => p.plugin === name)
  const out: string[] = ['']
  out.push(table([
    ['arm', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'success', 'errors', 'non-2xx', 'dropped', 'upstream conns', 'requests per target %', 'gw CPU us/req', 'gw peak RSS MiB', 'req/s vs plain', 'p99 vs plain', 'status'],
    ...summaries.map((s) => [
      s.arm,
      fmt(s.rps, 0),
      fmt(s.p50, 2),
      fmt(s.p99, 2),
      fmt(s.p999, 2),
      fmtSuccess(s.success),
      String(s.errors),
      String(s.non2xx),
      String(s.dropped),
      fmt(s.upstreamConnections, 0),
      fmtShare(s.targetShare),
      fmt(s.gatewayCpuPerResponse, 1),
      s.peakRssKiB === null ? '-' : (s.peakRssKiB / 1024).toFixed(1),
      fmtRatio(versus(s.arm)?.rps.median),
      fmtRatio(versus(s.arm)?.p99.median),
      s.status === 'ok' ? 'ok' : 'FAILED'
    ])
  ]))
  out.push(`(saturated: as fast as the connections go; medians of ${rounds} rounds, ratios taken round by round; success: 2xx over answers, errors (timeouts included) and dropped requests, pooled over the rounds; latency of every answer, any status; upstream conns: new connections to the upstreams per run)`)
  if (rate !== null && rateSummaries.some((s) => s.status === 'ok')) {
    out.push('')
    out.push(table([
      ['arm', `at ${rate.rate} req/s: done/s`, 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'success', 'errors', 'non-2xx', 'requests per target %', 'sender lag p99.9 ms', 'p99 vs plain'],
      ...rateSummaries.map((s) => [
        s.arm,
        fmt(s.rps, 0),
        fmt(s.p50, 2),
        fmt(s.p99, 2),
        fmt(s.p999, 2),
        fmt(median(arms.find((a) => a.name === s.arm)?.rateRuns.map((r) => r.latency.max) ?? []), 1),
        fmtSuccess(s.success),
        String(s.errors),
        String(s.non2xx),
        fmtShare(s.targetShare),
        fmt(s.lagP999, 2),
        fmtRatio(versus(s.arm)?.rateP99.median)
      ])
    ]))
    out.push(`(fixed rate: ${rate.rate} requests a second for ${rate.duration} s, open loop, latency from the moment each request was due; medians of ${rounds} rounds)`)
  }
  const perAnswerLine = [...summaries, ...rateSummaries].filter((s) => s.upstreamPerAnswer !== null).map((s) => `${s.arm}${s.phase === 'rate' ? ' at rate' : ''} ${fmt(s.upstreamPerAnswer, 4)}`)
  if (perAnswerLine.length > 0) out.push(`upstream requests per answer (1 + retries and hedges): ${perAnswerLine.join(', ')}`)
  for (const a of arms) {
    if (a.warmupRequests !== null && a.warmupRequests.length > 1) out.push(`${a.name}: requests per target during the warm-up ${a.warmupRequests.join('/')}`)
  }
  for (const s of [...summaries, ...rateSummaries]) {
    if (s.error !== null && s.phase === 'saturated') out.push(`${s.arm} FAILED: ${s.error}`)
    const failures = Object.entries(s.statusCodes).filter(([code]) => !code.startsWith('2')).map(([code, n]) => `${code} x${n}`)
    if (s.errors > 0) failures.push(`errors x${s.errors}${s.timeouts > 0 ? ` (timeouts x${s.timeouts})` : ''}`)
    if (s.dropped > 0) failures.push(`dropped x${s.dropped}`)
    if (failures.length > 0) out.push(`${s.arm}${s.phase === 'rate' ? ' at rate' : ''} failures: ${failures.join(', ')}`)
  }
  for (const p of pairs) {
    if (p.rps.median === null) {
      out.push(`${p.plugin}/${p.plain}: no ratio, an arm failed`)
      continue
    }
    const atRate = p.rateP99.median === null ? '' : `; at rate p99 ${fmtPaired(p.rateP99)}, p99.9 ${fmt(p.rateP999Plain, 2)} / ${fmt(p.rateP999Plugin, 2)} ms`
    out.push(`${p.plugin}/${p.plain}: req/s ${fmtPaired(p.rps)}, p99 ${fmtPaired(p.p99)}, CPU/req ${fmtPaired(p.cpu)}, p99.9 ${fmt(p.p999Plain, 2)} / ${fmt(p.p999Plugin, 2)} ms${atRate}, success ${fmtSuccess(p.successPlain)} / ${fmtSuccess(p.successPlugin)}`)
  }
  out.push(`noise, ${noise.b}/${noise.a} (the same arm twice): req/s ${fmtPaired(noise.rps)}, p99 ${fmtPaired(noise.p99)}${noise.rateP99.median === null ? '' : `, at rate p99 ${fmtPaired(noise.rateP99)}`}`)
  for (const d of figures.duels) {
    if (d.error !== null && d.rounds.length === 0) {
      out.push(`side by side ${d.b}/${d.a}: FAILED, ${d.error}`)
      continue
    }
    out.push(`side by side ${d.b}/${d.a} (both loaded at once, sharing one core): req/s ${fmtPaired(duelRatio(d, duelRps))}, CPU/req ${fmtPaired(duelRatio(d, duelCpu))}${d.error === null ? '' : ` (then ${d.error})`}`)
  }
  return out
}

/** The summary table over the scenarios. */
export function summaryLines (results: ScenarioFigures[]): string[] {
  const rows: string[][] = [['scenario', 'plugin arm', 'side by side req/s x', 'req/s x', 'p99 x', 'CPU/req x', 'rate p99 x', 'rate p99.9 ms plain/plugin', 'success plain/plugin', "A'/A side by side", "A'/A req/s", "A'/A rate p99"]]
  for (const r of results) {
    const aa = r.duels.find((d) => d.a === r.noise.a && d.b === r.noise.b)
    for (const p of r.pairs) {
      const d = r.duels.find((x) => x.a === p.plain && x.b === p.plugin)
      rows.push([
        r.name + (r.error !== null ? ' (FAILED)' : ''),
        p.plugin,
        d === undefined ? '-' : fmtPaired(duelRatio(d, duelRps)),
        fmtPaired(p.rps),
        fmtPaired(p.p99),
        fmtPaired(p.cpu),
        fmtPaired(p.rateP99),
        `${fmt(p.rateP999Plain, 2)} / ${fmt(p.rateP999Plugin, 2)}`,
        `${fmtSuccess(p.successPlain)} / ${fmtSuccess(p.successPlugin)}`,
        aa === undefined ? '-' : fmtPaired(duelRatio(aa, duelRps)),
        fmtPaired(r.noise.rps),
        fmtPaired(r.noise.rateP99)
      ])
    }
  }
  return ['', 'summary (plugin / plain, each ratio the median of the rounds\' ratios, their range in brackets; rate: the fixed-rate phase; A\'/A: the same plain arm run twice, the noise of each scenario)', table(rows)]
}

export interface TargetCheck {
  target: string
  measured: string
  /** null: not measured in this run */
  met: boolean | null
}

/**
 * The project's targets (issues 9, 18 and 19), checked against this run. Each one names
 * the figure it reads; a scenario not run leaves its targets unmeasured.
 */
export function targetChecks (results: ScenarioFigures[]): TargetCheck[] {
  const pair = (scenario: string, plugin: string): PairRatios | undefined =>
    results.find((r) => r.name === scenario && r.error === null)?.pairs.find((p) => p.plugin === plugin)
  const rateP99Of = (scenario: string, arm: string): number | null =>
    results.find((r) => r.name === scenario)?.rateSummaries.find((s) => s.arm === arm && s.status === 'ok')?.p99 ?? null
  const rpsOf = (scenario: string, arm: string): number | null =>
    results.find((r) => r.name === scenario)?.summaries.find((s) => s.arm === arm && s.status === 'ok')?.rps ?? null
  const checks: TargetCheck[] = []
  const add = (target: string, value: number | null, met: (v: number) => boolean, show: (v: number) => string): void => {
    checks.push({ target, measured: value === null ? 'not measured' : show(value), met: value === null ? null : met(value) })
  }
  const x = (v: number): string => `x${v.toFixed(3)}`
  const pct = (v: number): string => fmtSuccess(v)

  const sideBySide = (scenario: string, a = 'http-proxy', b = 'sssonector'): number | null => {
    const d = results.find((r) => r.name === scenario && r.error === null)?.duels.find((x) => x.a === a && x.b === b)
    return d === undefined ? null : duelRatio(d, duelRps).median
  }
  const steady = pair('steady', 'sssonector')
  add('steady, one target: req/s >= 0.95 of plain (side by side)', sideBySide('steady'), (v) => v >= 0.95, x)
  add('steady, one target: req/s >= 0.95 of plain (interleaved)', steady?.rps.median ?? null, (v) => v >= 0.95, x)
  add('steady, one target: p99 <= 1.1 of plain (saturated)', steady?.p99.median ?? null, (v) => v <= 1.1, x)
  add('steady, one target: p99 <= 1.1 of plain (fixed rate)', steady?.rateP99.median ?? null, (v) => v <= 1.1, x)
  add('dead target: success >= 99.99%', pair('dead', 'sssonector-balanced')?.successPlugin ?? null, (v) => v >= 0.9999, pct)
  add('dying target: success >= 99.99%', pair('dying', 'sssonector-balanced')?.successPlugin ?? null, (v) => v >= 0.9999, pct)
  const steadyBalanced = rpsOf('steady', 'sssonector-balanced')
  const slowRps = rpsOf('slow', 'sssonector-balanced')
  add('slow target: throughput held (req/s >= 0.9 of its steady)', steadyBalanced === null || slowRps === null ? null : slowRps / steadyBalanced, (v) => v >= 0.9, x)
  const steadyP99 = rateP99Of('steady', 'sssonector-balanced')
  const slowP99 = rateP99Of('slow', 'sssonector-balanced')
  add('slow target: p99 <= 2x steady p99 (fixed rate)', steadyP99 === null || slowP99 === null ? null : slowP99 / steadyP99, (v) => v <= 2, x)
  add('slow target: p99.9 < 20 ms (fixed rate)', pair('slow', 'sssonector-balanced')?.rateP999Plugin ?? null, (v) => v < 20, (v) => `${v.toFixed(2)} ms`)
  add('flaky target: success >= 99.9%', pair('flaky', 'sssonector-balanced')?.successPlugin ?? null, (v) => v >= 0.999, pct)
  const flakyP99 = rateP99Of('flaky', 'sssonector-balanced')
  add('flaky target: p99 <= 2x steady p99 (fixed rate)', steadyP99 === null || flakyP99 === null ? null : flakyP99 / steadyP99, (v) => v <= 2, x)
  // Hedging (issue 19): every target answers 1% of its requests 100 ms late.
  const perAnswerOf = (arm: string, phase: Phase): number | null => {
    const r = results.find((x) => x.name === 'stalls' && x.error === null)
    return (phase === 'rate' ? r?.rateSummaries : r?.summaries)?.find((s) => s.arm === arm && s.status === 'ok')?.upstreamPerAnswer ?? null
  }
  const unhedged = rateP99Of('stalls', 'sssonector-balanced')
  for (const [arm, setting] of [['sssonector-hedged', 'defaults'], ['sssonector-hedged-p99', "'p99'"]] as const) {
    const hedged = rateP99Of('stalls', arm)
    add(`stalls, hedge ${setting}: p99 falls >= 5x (fixed rate)`, unhedged === null || hedged === null || hedged === 0 ? null : unhedged / hedged, (v) => v >= 5, x)
    add(`stalls, hedge ${setting}: p99 <= 1/5 of plain http-proxy (fixed rate)`, pair('stalls', arm)?.rateP99.median ?? null, (v) => v <= 0.2, x)
    for (const phase of ['rate', 'saturated'] as const) {
      const withHedges = perAnswerOf(arm, phase)
      const without = perAnswerOf('sssonector-balanced', phase)
      add(`stalls, hedge ${setting}: <= 5% more upstream requests (${phase === 'rate' ? 'fixed rate' : 'saturated'})`, withHedges === null || without === null ? null : withHedges / without - 1, (v) => v <= 0.05, (v) => `${(v * 100).toFixed(2)}%`)
    }
  }
  for (const scenario of ['post64k', 'big']) {
    const p = pair(scenario, 'sssonector')
    add(`${scenario}: req/s >= 0.95 of plain (side by side)`, sideBySide(scenario), (v) => v >= 0.95, x)
    add(`${scenario}: req/s >= 0.95 of plain (interleaved)`, p?.rps.median ?? null, (v) => v >= 0.95, x)
    add(`${scenario}: peak RSS <= 1.1 of plain`, p?.rssPlain == null || p.rssPlugin == null ? null : p.rssPlugin / p.rssPlain, (v) => v <= 1.1, x)
  }
  // The lean forwarding path (issue 18): side by side against plain http-proxy, and against the bare Node proxy.
  add('lean: steady GETs, req/s >= 1.3 of plain (side by side)', sideBySide('steady'), (v) => v >= 1.3, x)
  add('lean: 1 MiB answers, req/s >= 1.3 of plain (side by side)', sideBySide('big'), (v) => v >= 1.3, x)
  add('lean: 64 KiB POSTs, req/s >= 1.2 of plain (side by side)', sideBySide('post64k'), (v) => v >= 1.2, x)
  for (const scenario of ['steady', 'post64k', 'big']) {
    add(`lean: ${scenario}, req/s >= 0.85 of the bare proxy (side by side)`, sideBySide(scenario, 'bare', 'sssonector'), (v) => v >= 0.85, x)
  }
  add('lean: steady, three targets, req/s >= 0.85 of the bare proxy (side by side)', sideBySide('steady', 'bare-balanced', 'sssonector-balanced'), (v) => v >= 0.85, x)
  return checks
}

export function targetLines (checks: TargetCheck[]): string[] {
  return ['', 'targets', table([
    ['target', 'measured', ''],
    ...checks.map((c) => [c.target, c.measured, c.met === null ? '-' : c.met ? 'met' : 'NOT MET'])
  ])]
}

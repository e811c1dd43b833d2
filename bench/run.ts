// The project's benchmark: this plugin against plain @fastify/http-proxy, with
// one target and balanced over three, healthy and with a target dead, dying,
// slow or flaky, and with large bodies; the one-target arms also against the
// upstream reached directly (the limit). Upstreams and gateways each run in
// their own child process on 127.0.0.1; the load comes from autocannon in this
// process. Arms are interleaved round by round (the order turning each round)
// and each cell is the median of the rounds. Each scenario also runs one plain
// arm twice (A and A', two processes): their ratio is its noise.
//
//   npm run bench
//   BENCH_SCENARIOS=steady,dead BENCH_DURATION=10 BENCH_ROUNDS=5 npm run bench
//
// Environment: BENCH_SCENARIOS (all: steady, dead, dying, slow, flaky, post64k,
// big), BENCH_DURATION (s per run; 3, dying 5), BENCH_CONNECTIONS (50, big 10),
// BENCH_PIPELINING (1), BENCH_ROUNDS (3), BENCH_WARMUP (s per arm, 1).
// BENCH_DURATION and BENCH_CONNECTIONS, when set, apply to every scenario.
// Results also go to .bench/last.json.
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { isChildMessage } from './protocol.js'
import type { ChildMessage, UsageMessage } from './protocol.js'
import { runLoad, stopAllLoad } from './load.js'
import type { LoadResult } from './load.js'
import { arms as armDefinitions, scenarios } from './scenarios.js'
import type { ArmDefinition, Disruption, GatewayConfig, Scenario, TargetSpec, UpstreamConfig } from './scenarios.js'

const HOST = '127.0.0.1'
const START_TIMEOUT = 15_000
const USAGE_TIMEOUT = 2_000
const STOP_TIMEOUT = 3_000
const PAUSE_BETWEEN_RUNS = 250
const UPSTREAM_KEEP_ALIVE = 65_000
const DEFAULT_DURATION = 3
const DEFAULT_CONNECTIONS = 50

interface Settings {
  scenarios: Scenario[]
  /** BENCH_DURATION when set, for every scenario */
  duration: number | null
  warmup: number
  /** BENCH_CONNECTIONS when set, for every scenario */
  connections: number | null
  pipelining: number
  rounds: number
}

/** What one scenario runs with. */
interface Plan {
  scenario: Scenario
  duration: number
  connections: number
  pipelining: number
  rounds: number
  warmup: number
}

interface Child {
  name: string
  process: ChildProcess
  port: number
  /** set once the process is gone */
  exit: string | null
}

/** One target of a scenario: its port and, unless it is dead, its upstream child. */
interface Slot {
  index: number
  spec: TargetSpec
  port: number
  child: Child | null
}

/** A kill and restart during one run, as it happened (ms from the start of the load). */
interface DisruptionRecord {
  target: string
  killedAt: number
  listeningAt: number
  down: number
  /** the killed process, and the connections it had accepted just before (null when it did not answer) */
  killedPid: number | undefined
  killedConnections: number | null
}

interface Run extends LoadResult {
  round: number
  /** CPU time the gateway process used during the run, per response, µs */
  gatewayCpuPerResponse: number | null
  /** connections the upstreams accepted during the run */
  upstreamConnections: number | null
  disruption: DisruptionRecord | null
}

interface Arm {
  definition: ArmDefinition
  urls: string[]
  gateway: Child | null
  error: string | null
  runs: Run[]
  peakRssKiB: number | null
}

const children = new Set<ChildProcess>()

function killChildren (): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}

process.on('exit', killChildren)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`\nbench: ${signal}, stopping\n`)
    stopAllLoad()
    killChildren()
    process.exit(130)
  })
}

function readSettings (): Settings {
  const list = process.env.BENCH_SCENARIOS ?? process.env.BENCH_SCENARIO
  const names = list === undefined || list.trim() === ''
    ? scenarios.map((s) => s.name)
    : list.split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => s === 'baseline' ? 'steady' : s)
  const chosen: Scenario[] = []
  for (const name of names) {
    const scenario = scenarios.find((s) => s.name === name)
    if (scenario === undefined) {
      throw new Error(`BENCH_SCENARIOS: ${JSON.stringify(name)} is not one of ${scenarios.map((s) => s.name).join(', ')}`)
    }
    if (!chosen.includes(scenario)) chosen.push(scenario)
  }
  return {
    scenarios: chosen,
    duration: optionalNumberFromEnv('BENCH_DURATION', { min: 1, max: 600 }),
    warmup: numberFromEnv('BENCH_WARMUP', 1, { min: 0, max: 60 }),
    connections: optionalNumberFromEnv('BENCH_CONNECTIONS', { min: 1, max: 10_000, integer: true }),
    pipelining: numberFromEnv('BENCH_PIPELINING', 1, { min: 1, max: 100, integer: true }),
    rounds: numberFromEnv('BENCH_ROUNDS', 3, { min: 1, max: 50, integer: true })
  }
}

interface Rule { min: number, max: number, integer?: boolean }

function optionalNumberFromEnv (name: string, rule: Rule): number | null {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return null
  const value = Number(raw)
  if (!Number.isFinite(value) || value < rule.min || value > rule.max || (rule.integer === true && !Number.isInteger(value))) {
    throw new Error(`${name}: ${JSON.stringify(raw)} is not ${rule.integer === true ? 'an integer' : 'a number'} from ${rule.min} to ${rule.max}`)
  }
  return value
}

function numberFromEnv (name: string, fallback: number, rule: Rule): number {
  return optionalNumberFromEnv(name, rule) ?? fallback
}

function planFor (scenario: Scenario, settings: Settings): Plan {
  return {
    scenario,
    duration: settings.duration ?? scenario.duration ?? DEFAULT_DURATION,
    connections: settings.connections ?? scenario.connections ?? DEFAULT_CONNECTIONS,
    pipelining: settings.pipelining,
    rounds: settings.rounds,
    warmup: settings.warmup
  }
}

/** Forks a child script; it reports over IPC (see protocol.ts). */
function forkChild (name: string, script: string, config: GatewayConfig | UpstreamConfig): Child {
  const cp = fork(fileURLToPath(new URL(script, import.meta.url)), [JSON.stringify(config)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: []
  })
  children.add(cp)
  const child: Child = { name, process: cp, port: 0, exit: null }
  cp.once('exit', (code, signal) => {
    child.exit = signal !== null ? `killed by ${signal}` : `exited with code ${String(code)}`
  })
  // a child that failed to fork shows as an exit; the error itself needs a listener
  cp.on('error', () => {})
  return child
}

/** Waits for a child's `ready` or `standby` message; rejects on its failure, exit or silence. */
async function waitFor (child: Child, type: 'ready' | 'standby'): Promise<ChildMessage> {
  const cp = child.process
  return await new Promise<ChildMessage>((resolve, reject) => {
    const done = (err: Error | null, message?: ChildMessage): void => {
      clearTimeout(timer)
      cp.off('message', onMessage)
      cp.off('exit', onExit)
      cp.off('error', onError)
      if (err === null) resolve(message!)
      else reject(err)
    }
    const onMessage = (message: unknown): void => {
      if (!isChildMessage(message)) return
      if (message.type === type) done(null, message)
      else if (message.type === 'failed') done(new Error(message.error))
    }
    const onExit = (): void => done(new Error(`${child.name} ${child.exit ?? 'exited'} before ${type === 'ready' ? 'listening' : 'standing by'}`))
    const onError = (err: Error): void => done(err)
    const timer = setTimeout(() => done(new Error(`${child.name} did not report ${type} within ${START_TIMEOUT} ms`)), START_TIMEOUT)
    cp.on('message', onMessage)
    cp.once('exit', onExit)
    cp.once('error', onError)
    if (child.exit !== null) onExit()
  })
}

/** Forks a child script and waits for it to listen (or to fail). */
async function startChild (name: string, script: string, config: GatewayConfig | UpstreamConfig): Promise<Child> {
  const child = forkChild(name, script, config)
  try {
    const message = await waitFor(child, 'ready')
    if (message.type === 'ready') child.port = message.port
    return child
  } catch (err) {
    child.process.kill('SIGKILL')
    throw err
  }
}

/** A child's usage numbers over IPC; null when it does not answer. */
async function askUsage (child: Child): Promise<UsageMessage | null> {
  const cp = child.process
  if (child.exit !== null || !cp.connected) return null
  return await new Promise<UsageMessage | null>((resolve) => {
    const finish = (value: UsageMessage | null): void => {
      clearTimeout(timer)
      cp.off('message', onMessage)
      cp.off('exit', onExit)
      resolve(value)
    }
    const onMessage = (message: unknown): void => {
      if (isChildMessage(message) && message.type === 'usage') finish(message)
    }
    const onExit = (): void => finish(null)
    const timer = setTimeout(() => finish(null), USAGE_TIMEOUT)
    cp.on('message', onMessage)
    cp.once('exit', onExit)
    cp.send({ type: 'usage' }, (err) => { if (err !== null) finish(null) })
  })
}

/** Peak RSS from /proc, for a child that does not answer over IPC. */
async function procPeakRss (pid: number | undefined): Promise<number | null> {
  if (pid === undefined) return null
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8')
    const m = /^VmHWM:\s*(\d+)\s*kB/m.exec(status)
    return m === null ? null : Number(m[1])
  } catch {
    return null
  }
}

async function stopChild (child: Child): Promise<void> {
  const cp = child.process
  if (child.exit === null) {
    const exited = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        cp.kill('SIGKILL')
        resolve()
      }, STOP_TIMEOUT)
      cp.once('exit', () => {
        clearTimeout(timer)
        resolve()
      })
    })
    if (cp.connected) cp.send({ type: 'stop' }, () => {})
    else cp.kill('SIGTERM')
    await exited
  }
  children.delete(cp)
}

/** Kills a child at once and waits for it to be gone. */
async function killChild (child: Child): Promise<void> {
  const cp = child.process
  if (child.exit === null) {
    const exited = new Promise<void>((resolve) => { cp.once('exit', () => resolve()) })
    cp.kill('SIGKILL')
    await exited
  }
  children.delete(cp)
}

/** A port nothing listens on: taken from the OS, then let go. */
async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, HOST, () => resolve())
  })
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

interface UpstreamUsage { pid: number | undefined, usage: UsageMessage | null }

async function usageOf (slots: Slot[]): Promise<UpstreamUsage[]> {
  const out: UpstreamUsage[] = []
  for (const slot of slots) {
    if (slot.child === null) continue
    out.push({ pid: slot.child.process.pid, usage: await askUsage(slot.child) })
  }
  return out
}

/**
 * New connections the upstreams accepted between two snapshots, counting
 * a restarted one's from both of its processes; null when a count is missing.
 */
function acceptedBetween (before: UpstreamUsage[], after: UpstreamUsage[], restart: DisruptionRecord | null): number | null {
  if (before.length !== after.length) return null
  let n = 0
  for (const [i, b] of before.entries()) {
    const a = after[i]!
    if (b.usage?.connections === undefined || a.usage?.connections === undefined) return null
    if (a.pid === b.pid) {
      n += a.usage.connections - b.usage.connections
    } else if (restart !== null && restart.killedPid === b.pid && restart.killedConnections !== null) {
      n += restart.killedConnections - b.usage.connections + a.usage.connections
    } else {
      return null
    }
  }
  return n
}

function upstreamConfig (slot: Slot, standby: boolean): UpstreamConfig {
  if (slot.spec.kind === 'dead') throw new Error(`target ${slot.index + 1} is dead: it has no process`)
  return { behaviour: slot.spec, keepAliveTimeout: UPSTREAM_KEEP_ALIVE, port: slot.port, ...(standby ? { standby } : {}) }
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Readies the restart of a target (a child in standby for its port) before a
 * run; `run()` then kills the target and has the standby take its port over.
 */
async function prepareRestart (slot: Slot, disruption: Disruption): Promise<{ run: (durationMs: number, startedAt: number) => Promise<DisruptionRecord> }> {
  const spare = forkChild(`upstream ${slot.index + 1} (restarted)`, './upstream.js', upstreamConfig(slot, true))
  try {
    await waitFor(spare, 'standby')
  } catch (err) {
    await killChild(spare)
    throw err
  }
  const target = `http://${HOST}:${slot.port}`
  return {
    run: async (durationMs, startedAt) => {
      try {
        await sleep(Math.max(0, startedAt + disruption.killAt * durationMs - performance.now()))
        const old = slot.child
        const last = old === null ? null : await askUsage(old)
        const killedAt = performance.now() - startedAt
        if (old !== null) await killChild(old)
        await sleep(Math.max(0, startedAt + disruption.backAt * durationMs - performance.now()))
        const ready = waitFor(spare, 'ready')
        spare.process.send({ type: 'listen' }, () => {})
        const message = await ready
        if (message.type === 'ready') spare.port = message.port
        slot.child = spare
        const listeningAt = performance.now() - startedAt
        return { target, killedAt, listeningAt, down: listeningAt - killedAt, killedPid: old?.process.pid, killedConnections: last?.connections ?? null }
      } catch (err) {
        await killChild(spare)
        throw err
      }
    }
  }
}

async function measure (arm: Arm, slots: Slot[], plan: Plan): Promise<Omit<Run, 'round'>> {
  const before = arm.gateway === null ? null : await askUsage(arm.gateway)
  const upBefore = await usageOf(slots)
  const d = plan.scenario.disruption
  const restart = d === undefined ? null : await prepareRestart(slots[d.target]!, d)
  const startedAt = performance.now()
  const [load, disruption] = await Promise.allSettled([
    runLoad({
      urls: arm.urls,
      request: plan.scenario.request,
      connections: plan.connections,
      pipelining: plan.pipelining,
      duration: plan.duration
    }),
    restart === null ? Promise.resolve(null) : restart.run(plan.duration * 1000, startedAt)
  ])
  if (disruption.status === 'rejected') throw new Error(`restart of a target failed: ${errorLine(disruption.reason)}`)
  if (load.status === 'rejected') throw load.reason
  const result = load.value
  const upAfter = await usageOf(slots)
  const after = arm.gateway === null ? null : await askUsage(arm.gateway)
  let gatewayCpuPerResponse: number | null = null
  if (before !== null && after !== null && result.responses > 0) {
    const cpu = (after.cpuUser + after.cpuSystem) - (before.cpuUser + before.cpuSystem)
    gatewayCpuPerResponse = cpu / result.responses
  }
  return { ...result, gatewayCpuPerResponse, upstreamConnections: acceptedBetween(upBefore, upAfter, disruption.value), disruption: disruption.value }
}

function checkAlive (arm: Arm, when: string): void {
  if (arm.error === null && arm.gateway !== null && arm.gateway.exit !== null) {
    arm.error = `gateway ${arm.gateway.exit} ${when}`
  }
}

function median (values: number[]): number | null {
  if (values.length === 0) return null
  const s = [...values].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

function fmt (value: number | null | undefined, digits: number): string {
  return value === null || value === undefined ? '-' : value.toFixed(digits)
}

function fmtRatio (value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `x${value.toFixed(3)}`
}

/** A success ratio as a percentage, never rounded up to 100% unless it is. */
function fmtSuccess (value: number | null | undefined): string {
  if (value === null || value === undefined) return '-'
  if (value === 1) return '100%'
  return `${(Math.floor(value * 10_000) / 100).toFixed(2)}%`
}

function errorLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.split('\n')[0] ?? text
}

interface Summary {
  arm: string
  via: string
  /** where the load went */
  urls: string[]
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
  peakRssKiB: number | null
}

function summarize (arm: Arm): Summary {
  const pick = (f: (r: Run) => number | null): number | null =>
    median(arm.runs.map(f).filter((v): v is number => v !== null))
  const sum = (f: (r: Run) => number): number => arm.runs.reduce((n, r) => n + f(r), 0)
  const statusCodes: Record<string, number> = {}
  for (const r of arm.runs) {
    for (const [code, n] of Object.entries(r.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + n
  }
  const responses = sum((r) => r.responses)
  const ok = sum((r) => r.ok)
  const errors = sum((r) => r.errors)
  const dropped = sum((r) => r.dropped)
  const attempts = responses + errors + dropped
  return {
    arm: arm.definition.name,
    via: arm.definition.via,
    urls: arm.urls,
    status: arm.error === null && arm.runs.length > 0 ? 'ok' : 'failed',
    error: arm.error,
    rps: pick((r) => r.rps),
    p50: pick((r) => r.latency.p50),
    p99: pick((r) => r.latency.p99),
    p999: pick((r) => r.latency.p999),
    success: attempts > 0 ? ok / attempts : null,
    responses,
    ok,
    errors,
    timeouts: sum((r) => r.timeouts),
    non2xx: sum((r) => r.non2xx),
    dropped,
    statusCodes,
    gatewayCpuPerResponse: pick((r) => r.gatewayCpuPerResponse),
    upstreamConnections: pick((r) => r.upstreamConnections),
    peakRssKiB: arm.peakRssKiB
  }
}

interface PairRatios {
  plain: string
  plugin: string
  /** plugin / plain */
  rps: number | null
  p99: number | null
  p999Plain: number | null
  p999Plugin: number | null
  successPlain: number | null
  successPlugin: number | null
}

interface Noise {
  a: string
  b: string
  /** A' / A */
  rps: number | null
  p99: number | null
}

function ratio (a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b
}

function ok (s: Summary | undefined): s is Summary {
  return s !== undefined && s.status === 'ok'
}

function pairRatios (summaries: Summary[], plainName: string, pluginName: string): PairRatios {
  const plain = summaries.find((s) => s.arm === plainName)
  const plugin = summaries.find((s) => s.arm === pluginName)
  const both = ok(plain) && ok(plugin)
  return {
    plain: plainName,
    plugin: pluginName,
    rps: both ? ratio(plugin.rps, plain.rps) : null,
    p99: both ? ratio(plugin.p99, plain.p99) : null,
    p999Plain: ok(plain) ? plain.p999 : null,
    p999Plugin: ok(plugin) ? plugin.p999 : null,
    successPlain: ok(plain) ? plain.success : null,
    successPlugin: ok(plugin) ? plugin.success : null
  }
}

function noiseOf (summaries: Summary[], [aName, bName]: [string, string]): Noise {
  const a = summaries.find((s) => s.arm === aName)
  const b = summaries.find((s) => s.arm === bName)
  const both = ok(a) && ok(b)
  return { a: aName, b: bName, rps: both ? ratio(b.rps, a.rps) : null, p99: both ? ratio(b.p99, a.p99) : null }
}

function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ').trimEnd()).join('\n')
}

interface ScenarioResult {
  scenario: Scenario
  plan: Omit<Plan, 'scenario'>
  targets: string[]
  error: string | null
  summaries: Summary[]
  pairs: PairRatios[]
  noise: Noise
  arms: Array<{ arm: string, via: string, urls: string[], error: string | null, peakRssKiB: number | null, runs: Run[] }>
}

/** Runs one scenario: its upstreams and gateways, the warm-up, the rounds; prints its table. */
async function runScenario (plan: Plan): Promise<ScenarioResult> {
  const { scenario } = plan
  const definitions = scenario.arms.map((name) => {
    const def = armDefinitions.find((a) => a.name === name)
    if (def === undefined) throw new Error(`scenario ${scenario.name}: unknown arm ${JSON.stringify(name)}`)
    return def
  })

  console.log('')
  console.log(`scenario ${scenario.name}: ${scenario.description}`)
  console.log(`${plan.connections} connections, pipelining ${plan.pipelining}, ${plan.rounds} rounds x ${plan.duration} s per arm, warm-up ${plan.warmup} s per arm, ${scenario.request.method} ${scenario.request.path}${scenario.request.body !== undefined ? ` with a ${scenario.request.body.length}-byte body` : ''}`)

  const slots: Slot[] = []
  const arms: Arm[] = []
  let error: string | null = null
  try {
    for (const [index, spec] of scenario.targets.entries()) {
      const slot: Slot = { index, spec, port: 0, child: null }
      slots.push(slot)
      if (spec.kind === 'dead') {
        slot.port = await freePort()
        continue
      }
      slot.child = await startChild(`upstream ${index + 1}`, './upstream.js', upstreamConfig(slot, false))
      slot.port = slot.child.port
    }
    const targets = slots.map((s) => `http://${HOST}:${s.port}`)
    console.log(`target${targets.length > 1 ? 's' : ''}: ${slots.map((s, i) => `${targets[i]!} (${describeTarget(s.spec)})`).join(', ')}`)

    for (const definition of definitions) {
      const armTargets = definition.targets === 'one' ? [targets[0]!] : targets
      const arm: Arm = { definition, urls: [], gateway: null, error: null, runs: [], peakRssKiB: null }
      arms.push(arm)
      if (definition.via === 'direct') {
        arm.urls = armTargets
        continue
      }
      const config: GatewayConfig = { kind: definition.via, targets: armTargets, prefix: scenario.prefix }
      try {
        arm.gateway = await startChild(`gateway ${definition.name}`, './gateway.js', config)
        arm.urls = [`http://${HOST}:${arm.gateway.port}`]
        console.log(`${definition.name}: ${definition.description}, on ${arm.urls[0]!} (pid ${arm.gateway.process.pid ?? '?'})`)
      } catch (err) {
        arm.error = `did not start: ${errorLine(err)}`
        console.log(`${definition.name}: FAILED to start: ${err instanceof Error ? err.message : String(err)}`)
      }
    }

    const live = (): Arm[] => arms.filter((a) => a.error === null)
    const upstreamDown = (): string | null => {
      const slot = slots.find((s) => s.child !== null && s.child.exit !== null)
      return slot === undefined ? null : `${slot.child!.name} ${slot.child!.exit!}`
    }
    const width = Math.max(...arms.map((a) => a.definition.name.length))

    if (plan.warmup > 0) {
      for (const arm of live()) {
        try {
          const w = await runLoad({ urls: arm.urls, request: scenario.request, connections: plan.connections, pipelining: plan.pipelining, duration: plan.warmup })
          console.log(`warm-up     ${arm.definition.name.padEnd(width)} ${w.rps.toFixed(0).padStart(7)} req/s`)
        } catch (err) {
          arm.error = `warm-up failed: ${errorLine(err)}`
        }
        checkAlive(arm, 'during warm-up')
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }

    for (let round = 1; round <= plan.rounds; round++) {
      // the order turns each round, so no arm always runs first or after the same one
      const order = live()
      const turned = [...order.slice((round - 1) % Math.max(1, order.length)), ...order.slice(0, (round - 1) % Math.max(1, order.length))]
      for (const arm of turned) {
        if (arm.error !== null) continue
        const down = upstreamDown()
        if (down !== null) throw new Error(`the upstream ${down}`)
        try {
          const r = await measure(arm, slots, plan)
          arm.runs.push({ round, ...r })
          const d = r.disruption === null ? '' : `  target down ${(r.disruption.killedAt / 1000).toFixed(1)}-${(r.disruption.listeningAt / 1000).toFixed(1)} s`
          console.log(`round ${round}/${plan.rounds} ${arm.definition.name.padEnd(width)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.latency.p50.toFixed(2)} ms  p99 ${r.latency.p99.toFixed(2)} ms  p99.9 ${r.latency.p999.toFixed(2)} ms  success ${fmtSuccess(r.success)}  errors ${r.errors}  non-2xx ${r.non2xx}  dropped ${r.dropped}  upstream conns ${fmt(r.upstreamConnections, 0)}${d}`)
        } catch (err) {
          arm.error = `round ${round} failed: ${errorLine(err)}`
          if (errorLine(err).startsWith('restart of a target failed')) throw err
        }
        checkAlive(arm, `in round ${round}`)
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }
  } catch (err) {
    error = errorLine(err)
    stopAllLoad()
  } finally {
    for (const arm of arms) {
      if (arm.gateway === null) continue
      const usage = await askUsage(arm.gateway)
      arm.peakRssKiB = usage?.maxRSS ?? await procPeakRss(arm.gateway.process.pid)
    }
    await Promise.all([
      ...arms.flatMap((a) => a.gateway === null ? [] : [stopChild(a.gateway)]),
      ...slots.flatMap((s) => s.child === null ? [] : [stopChild(s.child)])
    ])
  }

  const summaries = arms.map(summarize)
  const pairs = scenario.pairs.map(([plain, plugin]) => pairRatios(summaries, plain, plugin))
  const noise = noiseOf(summaries, scenario.noise)
  const versus = (name: string): PairRatios | undefined => pairs.find((p) => p.plugin === name)

  console.log('')
  console.log(table([
    ['arm', 'req/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'success', 'errors', 'non-2xx', 'dropped', 'upstream conns', 'gw CPU us/req', 'gw peak RSS MiB', 'req/s vs plain', 'p99 vs plain', 'status'],
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
      fmt(s.gatewayCpuPerResponse, 1),
      s.peakRssKiB === null ? '-' : (s.peakRssKiB / 1024).toFixed(1),
      fmtRatio(versus(s.arm)?.rps),
      fmtRatio(versus(s.arm)?.p99),
      s.status === 'ok' ? 'ok' : 'FAILED'
    ])
  ]))
  console.log(`(medians of ${plan.rounds} rounds; success: 2xx over answers, errors (timeouts included) and dropped requests, pooled over the rounds; errors, non-2xx and dropped summed; latency of every answer, any status; upstream conns: new connections to the upstreams per run)`)
  for (const s of summaries) {
    if (s.error !== null) console.log(`${s.arm} FAILED: ${s.error}`)
  }
  for (const s of summaries) {
    const failures = Object.entries(s.statusCodes).filter(([code]) => !code.startsWith('2')).map(([code, n]) => `${code} x${n}`)
    if (s.errors > 0) failures.push(`errors x${s.errors}${s.timeouts > 0 ? ` (timeouts x${s.timeouts})` : ''}`)
    if (s.dropped > 0) failures.push(`dropped x${s.dropped}`)
    if (failures.length > 0) console.log(`${s.arm} failures: ${failures.join(', ')}`)
  }
  for (const p of pairs) {
    if (p.rps !== null || p.p99 !== null) {
      console.log(`${p.plugin}/${p.plain}: req/s ${fmtRatio(p.rps)}, p99 ${fmtRatio(p.p99)}, p99.9 ${fmt(p.p999Plain, 2)} / ${fmt(p.p999Plugin, 2)} ms, success ${fmtSuccess(p.successPlain)} / ${fmtSuccess(p.successPlugin)}`)
    } else {
      console.log(`${p.plugin}/${p.plain}: no ratio, an arm failed`)
    }
  }
  console.log(`noise, ${noise.b}/${noise.a} (the same arm twice): req/s ${fmtRatio(noise.rps)}, p99 ${fmtRatio(noise.p99)}`)
  if (error !== null) console.log(`scenario ${scenario.name} FAILED: ${error}`)

  return {
    scenario,
    plan: { duration: plan.duration, connections: plan.connections, pipelining: plan.pipelining, rounds: plan.rounds, warmup: plan.warmup },
    targets: slots.map((s) => `http://${HOST}:${s.port}`),
    error,
    summaries,
    pairs,
    noise,
    arms: arms.map((a) => ({ arm: a.definition.name, via: a.definition.via, urls: a.urls, error: a.error, peakRssKiB: a.peakRssKiB, runs: a.runs }))
  }
}

function describeTarget (spec: TargetSpec): string {
  switch (spec.kind) {
    case 'ok': return `${spec.bodyBytes} B`
    case 'dead': return 'dead'
    case 'slow': return `${spec.bodyBytes} B after ${spec.delayMs} ms`
    case 'flaky': return `${spec.status} to 1 in ${spec.every}`
  }
}

async function main (): Promise<number> {
  const settings = readSettings()
  const plans = settings.scenarios.map((s) => planFor(s, settings))

  // bounded: the whole run, with generous slack, or it stops itself
  const budget = plans.reduce((ms, p) => ms + (p.scenario.arms.length * (p.warmup + 1 + p.rounds * (p.duration + 4)) + 30) * 1000, 60_000)
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: still running after ${Math.round(budget / 1000)} s, giving up\n`)
    stopAllLoad()
    killChildren()
    process.exit(1)
  }, budget)

  const cores = os.availableParallelism()
  const loadAverage = os.loadavg()[0]!
  console.log(`scenarios: ${plans.map((p) => p.scenario.name).join(', ')}`)
  console.log(`node ${process.version}, ${cores} cores (${os.cpus()[0]?.model.trim() ?? 'unknown cpu'}), load average ${loadAverage.toFixed(2)}`)
  if (cores < 4) console.log(`note: ${cores} cores are shared by the load generator, the gateway and the upstreams: compare arms, not absolute numbers`)

  const results: ScenarioResult[] = []
  try {
    for (const plan of plans) results.push(await runScenario(plan))
  } finally {
    clearTimeout(watchdog)
  }

  const rows: string[][] = [['scenario', 'plain arm', 'plugin arm', 'req/s x', 'p99 x', 'p99.9 ms plain/plugin', 'success plain/plugin', "A'/A req/s", "A'/A p99"]]
  const summary: Array<PairRatios & { scenario: string, noise: Noise, error: string | null }> = []
  for (const r of results) {
    for (const p of r.pairs) {
      summary.push({ scenario: r.scenario.name, ...p, noise: r.noise, error: r.error })
      rows.push([
        r.scenario.name + (r.error !== null ? ' (FAILED)' : ''),
        p.plain,
        p.plugin,
        fmtRatio(p.rps),
        fmtRatio(p.p99),
        `${fmt(p.p999Plain, 2)} / ${fmt(p.p999Plugin, 2)}`,
        `${fmtSuccess(p.successPlain)} / ${fmtSuccess(p.successPlugin)}`,
        fmtRatio(r.noise.rps),
        fmtRatio(r.noise.p99)
      ])
    }
  }
  console.log('')
  console.log('summary (plugin / plain; A\'/A: the same plain arm run twice, the noise of each scenario)')
  console.log(table(rows))

  const report = {
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cores,
    cpuModel: os.cpus()[0]?.model.trim() ?? null,
    loadAverage,
    settings: { ...settings, scenarios: plans.map((p) => p.scenario.name) },
    summary,
    scenarios: results
  }
  const dir = fileURLToPath(new URL('../../.bench/', import.meta.url))
  await mkdir(dir, { recursive: true })
  const file = `${dir}last.json`
  await writeFile(file, JSON.stringify(report, null, 2) + '\n')
  console.log(`results written to ${file}`)

  const failed = results.some((r) => r.error !== null || r.summaries.some((s) => s.status !== 'ok'))
  return failed ? 1 : 0
}

main().then((code) => {
  process.exitCode = code
}, (err: unknown) => {
  console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  killChildren()
  process.exitCode = 1
})

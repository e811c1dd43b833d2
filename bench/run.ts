// The project's benchmark: this plugin against plain @fastify/http-proxy, with
// one target and balanced over three, healthy and with a target dead, dying,
// slow or flaky, and with large bodies; the one-target arms also against the
// upstream reached directly (the limit). Upstreams and gateways each run in
// their own child process on 127.0.0.1; the load comes from this process.
// Where there are two cores or more, every gateway is pinned to a core of its
// own (BENCH_PIN). Arms are interleaved round by round (the order turning each
// round); each cell is the median of the rounds, and each ratio the median of
// the rounds' ratios, so the machine's drift between rounds cancels. Each
// scenario also runs one plain arm twice (A and A', two processes): their
// ratio is its noise.
//
// Each run is saturated (autocannon, closed loop: as fast as the connections
// go), and the small-GET scenarios follow each one with a fixed-rate run (open
// loop, BENCH_RATE requests a second, latency counted from the moment each
// request was due): the tails a client sees short of saturation. Then the
// pairs a scenario names run side by side: the plain and the plugin gateway
// loaded at once, on the core they share, so the machine's moods between
// rounds fall on both alike (the A-vs-A pair shows what is left of them).
//
//   npm run bench
//   BENCH_SCENARIOS=steady,slow BENCH_ROUNDS=7 npm run bench
//
// Environment: BENCH_SCENARIOS (all: steady, dead, dying, slow, flaky, stalls,
// post64k, big), BENCH_DURATION (s per run; 3, dying 5), BENCH_CONNECTIONS (50, big 10),
// BENCH_PIPELINING (1), BENCH_ROUNDS (3), BENCH_WARMUP (s per arm, 1),
// BENCH_RATE (requests/s of the fixed-rate runs, 1000; 0: none),
// BENCH_RATE_DURATION (s, 6), BENCH_RATE_CONNECTIONS (most connections of the
// fixed-rate client, 512), BENCH_PIN (auto or off).
// BENCH_DURATION and BENCH_CONNECTIONS, when set, apply to every scenario.
// Results also go to .bench/last.json.
import { fork, spawnSync } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { childrenKilledOnExit, isChildMessage } from './protocol.js'
import { askUsage, next, stopChild, track } from './children.js'
import type { Child } from './children.js'
import type { ChildMessage, UsageMessage } from './protocol.js'
import { runLoad, stopAllLoad } from './load.js'
import { runAtRate, stopAllRate } from './open-loop.js'
import { fmt, fmtSuccess, noiseOf, pairRatios, scenarioLines, summarize, summaryLines, targetChecks, targetLines, total } from './report.js'
import type { ArmRecord, DisruptionRecord, DuelRecord, DuelRound, Phase, Run, ScenarioFigures } from './report.js'
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
/** the load generator's scheduling priority, when pinned (children run at 0) */
const LOAD_PRIORITY = -10
const DEFAULT_RATE = 1000
/** seconds of each fixed-rate run before its measure starts (a scenario's `rateLeadIn` apart) */
const RATE_LEAD_IN = 1
const DEFAULT_RATE_DURATION = 6
const DEFAULT_RATE_CONNECTIONS = 512

interface Settings {
  scenarios: Scenario[]
  /** BENCH_DURATION when set, for every scenario */
  duration: number | null
  warmup: number
  /** BENCH_CONNECTIONS when set, for every scenario */
  connections: number | null
  pipelining: number
  rounds: number
  /** the fixed-rate phase: requests per second (0: none) */
  rate: number
  rateDuration: number
  rateConnections: number
}

/** What one scenario runs with. */
interface Plan {
  scenario: Scenario
  duration: number
  connections: number
  pipelining: number
  rounds: number
  warmup: number
  /** the fixed-rate phase, when the scenario has one */
  rate: { rate: number, duration: number, connections: number, leadIn: number } | null
}

/** One target of a scenario: its port and, unless it is dead, its upstream child. */
interface Slot {
  index: number
  spec: TargetSpec
  port: number
  child: Child | null
}

interface Arm {
  definition: ArmDefinition
  urls: string[]
  gateway: Child | null
  error: string | null
  runs: Run[]
  rateRuns: Run[]
  /** requests each target received during the warm-up (where a pool learns which target to avoid) */
  warmupRequests: number[] | null
  peakRssKiB: number | null
}

const { children, killChildren } = childrenKilledOnExit('bench', () => {
  stopAllLoad()
  stopAllRate()
})

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
    rounds: numberFromEnv('BENCH_ROUNDS', 3, { min: 1, max: 50, integer: true }),
    rate: numberFromEnv('BENCH_RATE', DEFAULT_RATE, { min: 0, max: 100_000, integer: true }),
    rateDuration: numberFromEnv('BENCH_RATE_DURATION', DEFAULT_RATE_DURATION, { min: 1, max: 600 }),
    rateConnections: numberFromEnv('BENCH_RATE_CONNECTIONS', DEFAULT_RATE_CONNECTIONS, { min: 1, max: 10_000, integer: true })
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
    warmup: settings.warmup,
    rate: scenario.rate === true && settings.rate > 0
      ? { rate: settings.rate, duration: settings.rateDuration, connections: settings.rateConnections, leadIn: scenario.rateLeadIn ?? RATE_LEAD_IN }
      : null
  }
}

/**
 * CPU pinning: on a machine of few cores the load generator, the upstreams
 * and the gateway otherwise take turns on the same cores, and the gateway's
 * numbers move with the scheduler's mood. Pinned, every gateway gets the last
 * core to itself and everything else shares the others.
 */
interface Pinning {
  /** the gateway's core list, as taskset takes it */
  gateway: string
  /** the cores of this process (the load) and the upstreams */
  rest: string
}

function taskset (cpus: string, pid: number): string | null {
  // -a: every thread of the process (libuv's pool and V8's helpers too)
  const r = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' })
  if (r.error !== undefined) return r.error.message
  return r.status === 0 ? null : (r.stderr.trim() || `exit code ${String(r.status)}`)
}

function setupPinning (cores: number): { pinning: Pinning | null, why: string } {
  const mode = (process.env.BENCH_PIN ?? 'auto').trim()
  if (mode === 'off' || mode === '0') return { pinning: null, why: 'BENCH_PIN=off' }
  if (mode !== 'auto' && mode !== '' && mode !== 'on' && mode !== '1') {
    throw new Error(`BENCH_PIN: ${JSON.stringify(mode)} is not auto, on or off`)
  }
  if (cores < 2) return { pinning: null, why: 'one core' }
  const pinning: Pinning = { gateway: String(cores - 1), rest: cores === 2 ? '0' : `0-${cores - 2}` }
  const failed = taskset(pinning.rest, process.pid)
  if (failed !== null) return { pinning: null, why: `taskset failed: ${failed}` }
  // the load generator shares its core with the upstreams: it goes first, so
  // its own lag stays out of the latencies (its children are set back to 0)
  let priority = ''
  try {
    os.setPriority(0, LOAD_PRIORITY)
    priority = `, the load at priority ${LOAD_PRIORITY}`
  } catch {
    priority = ', the load at the usual priority (no permission to raise it)'
  }
  return { pinning, why: `gateway on core ${pinning.gateway}, load and upstreams on ${pinning.rest}${priority}` }
}

let pinning: Pinning | null = null

/** Forks a child script; it reports over IPC (see protocol.ts). A gateway is pinned to its core. */
function forkChild (name: string, script: string, config: GatewayConfig | UpstreamConfig): Child {
  const cp = fork(fileURLToPath(new URL(script, import.meta.url)), [JSON.stringify(config)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: []
  })
  const child = track(name, cp, children)
  if (pinning !== null && cp.pid !== undefined) {
    if ('kind' in config) {
      const failed = taskset(pinning.gateway, cp.pid)
      if (failed !== null) process.stderr.write(`bench: could not pin ${name}: ${failed}\n`)
    }
    try {
      if (os.getPriority(cp.pid) !== 0) os.setPriority(cp.pid, 0)
    } catch {}
  }
  return child
}

/** Waits for a child's `ready` or `standby` message; rejects on its failure, exit or silence. */
async function waitFor (child: Child, type: 'ready' | 'standby'): Promise<ChildMessage> {
  return await next(child, (m) => isChildMessage(m) && m.type === type ? m : undefined, START_TIMEOUT, type === 'ready' ? 'listening' : 'standing by')
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

/** A target's usage snapshot; a dead target (no process) has none. */
interface UpstreamUsage { pid: number | undefined, usage: UsageMessage | null, dead: boolean }

async function usageOf (slots: Slot[]): Promise<UpstreamUsage[]> {
  const out: UpstreamUsage[] = []
  for (const slot of slots) {
    if (slot.child === null) out.push({ pid: undefined, usage: null, dead: true })
    else out.push({ pid: slot.child.process.pid, usage: await askUsage(slot.child, USAGE_TIMEOUT), dead: false })
  }
  return out
}

/**
 * What each target counted (connections accepted, requests received) between
 * two snapshots, a restarted one's from both of its processes and a dead one's
 * as 0; null when a count is missing.
 */
function countedBetween (before: UpstreamUsage[], after: UpstreamUsage[], restart: DisruptionRecord | null, what: 'connections' | 'requests'): number[] | null {
  if (before.length !== after.length) return null
  const killed = restart === null ? null : what === 'connections' ? restart.killedConnections : restart.killedRequests
  const out: number[] = []
  for (const [i, b] of before.entries()) {
    const a = after[i]!
    if (b.dead && a.dead) {
      out.push(0)
      continue
    }
    const was = b.usage?.[what]
    const is = a.usage?.[what]
    if (was === undefined || is === undefined) return null
    if (a.pid === b.pid) {
      out.push(is - was)
    } else if (restart !== null && restart.killedPid === b.pid && killed !== null) {
      out.push(killed - was + is)
    } else {
      return null
    }
  }
  return out
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
        const last = old === null ? null : await askUsage(old, USAGE_TIMEOUT)
        const killedAt = performance.now() - startedAt
        if (old !== null) await killChild(old)
        await sleep(Math.max(0, startedAt + disruption.backAt * durationMs - performance.now()))
        const ready = waitFor(spare, 'ready')
        spare.process.send({ type: 'listen' }, () => {})
        const message = await ready
        if (message.type === 'ready') spare.port = message.port
        slot.child = spare
        const listeningAt = performance.now() - startedAt
        return { target, killedAt, listeningAt, down: listeningAt - killedAt, killedPid: old?.process.pid, killedConnections: last?.connections ?? null, killedRequests: last?.requests ?? null }
      } catch (err) {
        await killChild(spare)
        throw err
      }
    }
  }
}

async function measure (arm: Arm, slots: Slot[], plan: Plan, phase: Phase): Promise<Omit<Run, 'round'>> {
  const before = arm.gateway === null ? null : await askUsage(arm.gateway, USAGE_TIMEOUT)
  const upBefore = await usageOf(slots)
  const d = plan.scenario.disruption
  const restart = d === undefined ? null : await prepareRestart(slots[d.target]!, d)
  const fixed = phase === 'rate' ? plan.rate : null
  const duration = fixed === null ? plan.duration : fixed.duration
  const startedAt = performance.now()
  const [load, disruption] = await Promise.allSettled([
    fixed === null
      ? runLoad({
        urls: arm.urls,
        request: plan.scenario.request,
        connections: plan.connections,
        pipelining: plan.pipelining,
        duration
      }).then((r) => ({ ...r, lagP999: null, leadInSent: 0 }))
      : runAtRate({
        urls: arm.urls,
        request: plan.scenario.request,
        rate: fixed.rate,
        duration,
        leadIn: fixed.leadIn,
        connections: fixed.connections
      }).then((r) => ({ ...r, lagP999: r.lag.p999, leadInSent: r.leadInSent })),
    restart === null ? Promise.resolve(null) : restart.run(duration * 1000, startedAt + (fixed === null ? 0 : fixed.leadIn * 1000))
  ])
  if (disruption.status === 'rejected') throw new Error(`restart of a target failed: ${errorLine(disruption.reason)}`)
  if (load.status === 'rejected') throw load.reason
  const result = load.value
  const upAfter = await usageOf(slots)
  const after = arm.gateway === null ? null : await askUsage(arm.gateway, USAGE_TIMEOUT)
  let gatewayCpuPerResponse: number | null = null
  if (before !== null && after !== null && result.responses > 0) {
    const cpu = (after.cpuUser + after.cpuSystem) - (before.cpuUser + before.cpuSystem)
    gatewayCpuPerResponse = cpu / result.responses
  }
  return {
    ...result,
    phase,
    gatewayCpuPerResponse,
    upstreamConnections: total(countedBetween(upBefore, upAfter, disruption.value, 'connections')),
    upstreamRequests: countedBetween(upBefore, upAfter, disruption.value, 'requests'),
    disruption: disruption.value
  }
}

/** Loads two gateways at once, each with the scenario's connections, for one run. */
async function sideBySide (a: Child, b: Child, aUrls: string[], bUrls: string[], plan: Plan, bFirst: boolean): Promise<Omit<DuelRound, 'round'>> {
  const before = [await askUsage(a, USAGE_TIMEOUT), await askUsage(b, USAGE_TIMEOUT)]
  const load = (urls: string[]): Promise<LoadResult> => runLoad({ urls, request: plan.scenario.request, connections: plan.connections, pipelining: plan.pipelining, duration: plan.duration })
  let ra: LoadResult
  let rb: LoadResult
  if (bFirst) [rb, ra] = await Promise.all([load(bUrls), load(aUrls)])
  else [ra, rb] = await Promise.all([load(aUrls), load(bUrls)])
  const after = [await askUsage(a, USAGE_TIMEOUT), await askUsage(b, USAGE_TIMEOUT)]
  const cpu = (i: number, responses: number): number | null => {
    const x = before[i]
    const y = after[i]
    if (x === null || x === undefined || y === null || y === undefined || responses === 0) return null
    return ((y.cpuUser + y.cpuSystem) - (x.cpuUser + x.cpuSystem)) / responses
  }
  if (ra.errors > 0 || rb.errors > 0) throw new Error(`connection errors: ${ra.errors} and ${rb.errors}`)
  return { aRps: ra.rps, bRps: rb.rps, aCpu: cpu(0, ra.responses), bCpu: cpu(1, rb.responses), aSuccess: ra.success, bSuccess: rb.success }
}

function checkAlive (arm: Arm, when: string): void {
  if (arm.error === null && arm.gateway !== null && arm.gateway.exit !== null) {
    arm.error = `gateway ${arm.gateway.exit} ${when}`
  }
}

function errorLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.split('\n')[0] ?? text
}

interface ScenarioResult extends ScenarioFigures {
  plan: Omit<Plan, 'scenario'>
  targets: string[]
  arms: ArmRecord[]
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
  const duels: DuelRecord[] = []
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
      const arm: Arm = { definition, urls: [], gateway: null, error: null, runs: [], rateRuns: [], warmupRequests: null, peakRssKiB: null }
      arms.push(arm)
      if (definition.via === 'direct') {
        arm.urls = armTargets
        continue
      }
      const config: GatewayConfig = { kind: definition.via, targets: armTargets, prefix: scenario.prefix, ...(definition.upstream === undefined ? {} : { upstream: definition.upstream }) }
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
          const upBefore = await usageOf(slots)
          const w = await runLoad({ urls: arm.urls, request: scenario.request, connections: plan.connections, pipelining: plan.pipelining, duration: plan.warmup })
          arm.warmupRequests = countedBetween(upBefore, await usageOf(slots), null, 'requests')
          console.log(`warm-up     ${arm.definition.name.padEnd(width)} ${w.rps.toFixed(0).padStart(7)} req/s  per target ${arm.warmupRequests?.join('/') ?? '-'}`)
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
          // the saturated run, then (when the scenario has one) the fixed-rate run right after it
          for (const phase of plan.rate === null ? ['saturated' as const] : ['saturated' as const, 'rate' as const]) {
            if (phase === 'rate') await sleep(PAUSE_BETWEEN_RUNS)
            const r = await measure(arm, slots, plan, phase)
            ;(phase === 'rate' ? arm.rateRuns : arm.runs).push({ round, ...r })
            const d = r.disruption === null ? '' : `  target down ${(r.disruption.killedAt / 1000).toFixed(1)}-${(r.disruption.listeningAt / 1000).toFixed(1)} s`
            const label = phase === 'rate' ? '  at rate ' : ''
            const lag = r.lagP999 === null ? '' : `  sender lag p99.9 ${r.lagP999.toFixed(2)} ms`
            console.log(`round ${round}/${plan.rounds} ${arm.definition.name.padEnd(width)}${label} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.latency.p50.toFixed(2)} ms  p99 ${r.latency.p99.toFixed(2)} ms  p99.9 ${r.latency.p999.toFixed(2)} ms  success ${fmtSuccess(r.success)}  errors ${r.errors}  non-2xx ${r.non2xx}  dropped ${r.dropped}  upstream conns ${fmt(r.upstreamConnections, 0)}  per target ${r.upstreamRequests?.join('/') ?? '-'}${d}${lag}`)
          }
        } catch (err) {
          arm.error = `round ${round} failed: ${errorLine(err)}`
          if (errorLine(err).startsWith('restart of a target failed')) throw err
        }
        checkAlive(arm, `in round ${round}`)
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }

    // Side by side: two gateways loaded at once on the one core they share, so
    // whatever the machine does between rounds, it does to both.
    for (const [aName, bName] of scenario.duels ?? []) {
      const a = arms.find((x) => x.definition.name === aName)
      const b = arms.find((x) => x.definition.name === bName)
      const record: DuelRecord = { a: aName, b: bName, rounds: [], error: null }
      duels.push(record)
      if (a === undefined || b === undefined || a.error !== null || b.error !== null || a.gateway === null || b.gateway === null) {
        record.error = 'an arm failed'
        continue
      }
      for (let round = 1; round <= plan.rounds; round++) {
        try {
          // which of the two starts first turns round by round
          const r = await sideBySide(a.gateway, b.gateway, a.urls, b.urls, plan, round % 2 === 0)
          record.rounds.push({ round, ...r })
          console.log(`side by side ${round}/${plan.rounds} ${aName} ${r.aRps.toFixed(0)} req/s, ${bName} ${r.bRps.toFixed(0)} req/s: x${(r.bRps / r.aRps).toFixed(3)}`)
        } catch (err) {
          record.error = `round ${round} failed: ${errorLine(err)}`
          break
        }
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }
  } catch (err) {
    error = errorLine(err)
    stopAllLoad()
    stopAllRate()
  } finally {
    for (const arm of arms) {
      if (arm.gateway === null) continue
      const usage = await askUsage(arm.gateway, USAGE_TIMEOUT)
      arm.peakRssKiB = usage?.maxRSS ?? await procPeakRss(arm.gateway.process.pid)
    }
    await Promise.all([
      ...arms.flatMap((a) => a.gateway === null ? [] : [stopChild(a.gateway, children, STOP_TIMEOUT)]),
      ...slots.flatMap((s) => s.child === null ? [] : [stopChild(s.child, children, STOP_TIMEOUT)])
    ])
  }

  const records: ArmRecord[] = arms.map((a) => ({
    name: a.definition.name,
    via: a.definition.via,
    urls: a.urls,
    error: a.error,
    runs: a.runs,
    rateRuns: a.rateRuns,
    warmupRequests: a.warmupRequests,
    peakRssKiB: a.peakRssKiB
  }))
  const summaries = records.map((a) => summarize(a, 'saturated'))
  const rateSummaries = plan.rate === null ? [] : records.map((a) => summarize(a, 'rate'))
  const figures: ScenarioFigures = {
    name: scenario.name,
    error,
    summaries,
    rateSummaries,
    pairs: scenario.pairs.map(([plain, plugin]) => pairRatios(records, summaries, rateSummaries, plain, plugin)),
    noise: noiseOf(records, scenario.noise),
    duels
  }
  for (const line of scenarioLines(figures, plan.rounds, plan.rate, records)) console.log(line)
  if (error !== null) console.log(`scenario ${scenario.name} FAILED: ${error}`)

  return {
    ...figures,
    plan: { duration: plan.duration, connections: plan.connections, pipelining: plan.pipelining, rounds: plan.rounds, warmup: plan.warmup, rate: plan.rate },
    targets: slots.map((s) => `http://${HOST}:${s.port}`),
    arms: records
  }
}

function describeTarget (spec: TargetSpec): string {
  switch (spec.kind) {
    case 'ok': return `${spec.bodyBytes} B`
    case 'dead': return 'dead'
    case 'slow': return `${spec.bodyBytes} B after ${spec.delayMs} ms`
    case 'flaky': return `${spec.status} to 1 in ${spec.every}`
    case 'stalls': return `1 in ${spec.every} after ${spec.delayMs} ms`
    case 'capacity': return `${spec.capacity} at a time, ${spec.serviceMs} ± ${spec.spreadMs} ms each`
  }
}

async function main (): Promise<number> {
  const settings = readSettings()
  const plans = settings.scenarios.map((s) => planFor(s, settings))

  // bounded: the whole run, with generous slack, or it stops itself
  const budget = plans.reduce((ms, p) => ms + (p.scenario.arms.length * (p.warmup + 1 + p.rounds * (p.duration + 4 + (p.rate === null ? 0 : p.rate.duration + 14))) + (p.scenario.duels?.length ?? 0) * p.rounds * (p.duration + 4) + 30) * 1000, 60_000)
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: still running after ${Math.round(budget / 1000)} s, giving up\n`)
    stopAllLoad()
    stopAllRate()
    killChildren()
    process.exit(1)
  }, budget)

  const cores = os.availableParallelism()
  const loadAverage = os.loadavg()[0]!
  console.log(`scenarios: ${plans.map((p) => p.scenario.name).join(', ')}`)
  console.log(`node ${process.version}, ${cores} cores (${os.cpus()[0]?.model.trim() ?? 'unknown cpu'}), load average ${loadAverage.toFixed(2)}`)
  const pin = setupPinning(cores)
  pinning = pin.pinning
  console.log(`pinning: ${pinning === null ? `none (${pin.why})` : pin.why}`)
  if (cores < 4) console.log(`note: ${cores} cores are shared by the load generator, the gateway and the upstreams: compare arms, not absolute numbers`)

  const results: ScenarioResult[] = []
  try {
    for (const plan of plans) results.push(await runScenario(plan))
  } finally {
    clearTimeout(watchdog)
  }

  for (const line of summaryLines(results)) console.log(line)
  const checks = targetChecks(results)
  for (const line of targetLines(checks)) console.log(line)

  const report = {
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cores,
    cpuModel: os.cpus()[0]?.model.trim() ?? null,
    loadAverage,
    settings: { ...settings, scenarios: plans.map((p) => p.scenario.name), pinning },
    summary: results.map((r) => ({ scenario: r.name, error: r.error, pairs: r.pairs, noise: r.noise })),
    targets: checks,
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

// The project's benchmark: this plugin against plain @fastify/http-proxy, and
// both against the upstream reached directly (the limit). Upstreams and
// gateways each run in their own child process on 127.0.0.1; the load comes
// from autocannon in this process. Arms are interleaved round by round and
// each cell is the median of the rounds.
//
//   npm run bench
//   BENCH_DURATION=10 BENCH_CONNECTIONS=100 BENCH_ROUNDS=5 npm run bench
//
// Environment: BENCH_DURATION (s per run, 5), BENCH_CONNECTIONS (50),
// BENCH_PIPELINING (1), BENCH_ROUNDS (3), BENCH_WARMUP (s per arm, 1),
// BENCH_SCENARIO (baseline). Results also go to .bench/last.json.
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { isChildMessage } from './protocol.js'
import type { UsageMessage } from './protocol.js'
import { runLoad, stopAllLoad } from './load.js'
import type { LoadResult } from './load.js'
import { arms as armDefinitions, scenarios } from './scenarios.js'
import type { ArmDefinition, GatewayConfig, Scenario, UpstreamConfig } from './scenarios.js'

const HOST = '127.0.0.1'
const START_TIMEOUT = 15_000
const USAGE_TIMEOUT = 2_000
const STOP_TIMEOUT = 3_000
const PAUSE_BETWEEN_RUNS = 250
const UPSTREAM_KEEP_ALIVE = 65_000

interface Settings {
  scenario: Scenario
  duration: number
  warmup: number
  connections: number
  pipelining: number
  rounds: number
}

interface Child {
  name: string
  process: ChildProcess
  port: number
  /** set once the process is gone */
  exit: string | null
}

interface Run extends LoadResult {
  round: number
  /** CPU time the gateway process used during the run, per response, µs */
  gatewayCpuPerResponse: number | null
  /** connections the upstreams accepted during the run */
  upstreamConnections: number | null
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
  const name = process.env.BENCH_SCENARIO ?? 'baseline'
  const scenario = scenarios.find((s) => s.name === name)
  if (scenario === undefined) {
    throw new Error(`BENCH_SCENARIO: ${JSON.stringify(name)} is not one of ${scenarios.map((s) => s.name).join(', ')}`)
  }
  return {
    scenario,
    duration: numberFromEnv('BENCH_DURATION', 5, { min: 1, max: 600 }),
    warmup: numberFromEnv('BENCH_WARMUP', 1, { min: 0, max: 60 }),
    connections: numberFromEnv('BENCH_CONNECTIONS', 50, { min: 1, max: 10_000, integer: true }),
    pipelining: numberFromEnv('BENCH_PIPELINING', 1, { min: 1, max: 100, integer: true }),
    rounds: numberFromEnv('BENCH_ROUNDS', 3, { min: 1, max: 50, integer: true })
  }
}

function numberFromEnv (name: string, fallback: number, rule: { min: number, max: number, integer?: boolean }): number {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value < rule.min || value > rule.max || (rule.integer === true && !Number.isInteger(value))) {
    throw new Error(`${name}: ${JSON.stringify(raw)} is not ${rule.integer === true ? 'an integer' : 'a number'} from ${rule.min} to ${rule.max}`)
  }
  return value
}

/** Forks a child script and waits for it to listen (or to fail). */
async function startChild (name: string, script: string, config: GatewayConfig | UpstreamConfig): Promise<Child> {
  const cp = fork(fileURLToPath(new URL(script, import.meta.url)), [JSON.stringify(config)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: []
  })
  children.add(cp)
  const child: Child = { name, process: cp, port: 0, exit: null }
  cp.once('exit', (code, signal) => {
    child.exit = signal !== null ? `killed by ${signal}` : `exited with code ${String(code)}`
  })
  return await new Promise<Child>((resolve, reject) => {
    const done = (err: Error | null): void => {
      clearTimeout(timer)
      cp.off('message', onMessage)
      cp.off('exit', onExit)
      cp.off('error', onError)
      if (err === null) {
        resolve(child)
      } else {
        cp.kill('SIGKILL')
        reject(err)
      }
    }
    const onMessage = (message: unknown): void => {
      if (!isChildMessage(message)) return
      if (message.type === 'ready') {
        child.port = message.port
        done(null)
      } else if (message.type === 'failed') {
        done(new Error(message.error))
      }
    }
    const onExit = (): void => done(new Error(`${name} ${child.exit ?? 'exited'} before listening`))
    const onError = (err: Error): void => done(err)
    const timer = setTimeout(() => done(new Error(`${name} did not listen within ${START_TIMEOUT} ms`)), START_TIMEOUT)
    cp.on('message', onMessage)
    cp.once('exit', onExit)
    cp.once('error', onError)
  })
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

async function usageOf (list: Child[]): Promise<Array<UsageMessage | null>> {
  const out: Array<UsageMessage | null> = []
  for (const child of list) out.push(await askUsage(child))
  return out
}

/** New connections the upstreams accepted between two usage snapshots. */
function acceptedBetween (before: Array<UsageMessage | null>, after: Array<UsageMessage | null>): number | null {
  let n = 0
  for (const [i, b] of before.entries()) {
    const a = after[i]
    if (b?.connections === undefined || a?.connections === undefined) return null
    n += a.connections - b.connections
  }
  return n
}

async function measure (arm: Arm, upstreams: Child[], settings: Settings, duration: number): Promise<Omit<Run, 'round'>> {
  const before = arm.gateway === null ? null : await askUsage(arm.gateway)
  const upBefore = await usageOf(upstreams)
  const result = await runLoad({
    urls: arm.urls,
    request: settings.scenario.request,
    connections: settings.connections,
    pipelining: settings.pipelining,
    duration
  })
  const upAfter = await usageOf(upstreams)
  const after = arm.gateway === null ? null : await askUsage(arm.gateway)
  let gatewayCpuPerResponse: number | null = null
  if (before !== null && after !== null && result.responses > 0) {
    const cpu = (after.cpuUser + after.cpuSystem) - (before.cpuUser + before.cpuSystem)
    gatewayCpuPerResponse = cpu / result.responses
  }
  return { ...result, gatewayCpuPerResponse, upstreamConnections: acceptedBetween(upBefore, upAfter) }
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

function fmt (value: number | null, digits: number): string {
  return value === null ? '-' : value.toFixed(digits)
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function errorLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.split('\n')[0] ?? text
}

interface Summary {
  arm: string
  via: string
  status: 'ok' | 'failed'
  error: string | null
  rps: number | null
  p50: number | null
  p99: number | null
  errors: number
  non2xx: number
  gatewayCpuPerResponse: number | null
  upstreamConnections: number | null
  peakRssKiB: number | null
}

function summarize (arm: Arm): Summary {
  const pick = (f: (r: Run) => number | null): number | null =>
    median(arm.runs.map(f).filter((v): v is number => v !== null))
  return {
    arm: arm.definition.name,
    via: arm.definition.via,
    status: arm.error === null && arm.runs.length > 0 ? 'ok' : 'failed',
    error: arm.error,
    rps: pick((r) => r.rps),
    p50: pick((r) => r.latency.p50),
    p99: pick((r) => r.latency.p99),
    errors: arm.runs.reduce((n, r) => n + r.errors, 0),
    non2xx: arm.runs.reduce((n, r) => n + r.non2xx, 0),
    gatewayCpuPerResponse: pick((r) => r.gatewayCpuPerResponse),
    upstreamConnections: pick((r) => r.upstreamConnections),
    peakRssKiB: arm.peakRssKiB
  }
}

function table (rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows.map((r) => r.map((cell, i) => i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)).join('  ').trimEnd()).join('\n')
}

async function main (): Promise<number> {
  const settings = readSettings()
  const { scenario } = settings
  const definitions = scenario.arms.map((name) => {
    const def = armDefinitions.find((a) => a.name === name)
    if (def === undefined) throw new Error(`scenario ${scenario.name}: unknown arm ${JSON.stringify(name)}`)
    return def
  })

  // bounded: the whole run, with generous slack, or it stops itself
  const budget = (definitions.length * (settings.warmup + settings.rounds * (settings.duration + 3)) + 60) * 1000
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: still running after ${Math.round(budget / 1000)} s, giving up\n`)
    stopAllLoad()
    killChildren()
    process.exit(1)
  }, budget)

  const cores = os.availableParallelism()
  console.log(`scenario ${scenario.name}: ${scenario.description}`)
  console.log(`node ${process.version}, ${cores} cores (${os.cpus()[0]?.model.trim() ?? 'unknown cpu'}), load average ${os.loadavg()[0]!.toFixed(2)}`)
  console.log(`${settings.connections} connections, pipelining ${settings.pipelining}, ${settings.rounds} rounds x ${settings.duration} s per arm, warm-up ${settings.warmup} s per arm, ${scenario.request.method} ${scenario.request.path}`)
  if (cores < 4) console.log(`note: ${cores} cores are shared by the load generator, the gateway and the upstream: compare arms, not absolute numbers`)

  const upstreams: Child[] = []
  const arms: Arm[] = []
  try {
    for (const [i, behaviour] of scenario.upstreams.entries()) {
      const config: UpstreamConfig = { behaviour, keepAliveTimeout: UPSTREAM_KEEP_ALIVE }
      upstreams.push(await startChild(`upstream ${i + 1}`, './upstream.js', config))
    }
    const targets = upstreams.map((u) => `http://${HOST}:${u.port}`)
    console.log(`upstream${targets.length > 1 ? 's' : ''}: ${targets.join(', ')}`)

    for (const definition of definitions) {
      const arm: Arm = { definition, urls: [], gateway: null, error: null, runs: [], peakRssKiB: null }
      arms.push(arm)
      if (definition.via === 'direct') {
        arm.urls = targets
        continue
      }
      const config: GatewayConfig = { kind: definition.via, targets, prefix: scenario.prefix }
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
    const upstreamDown = (): string | null => upstreams.find((u) => u.exit !== null)?.exit ?? null

    if (settings.warmup > 0) {
      for (const arm of live()) {
        try {
          const w = await runLoad({ urls: arm.urls, request: scenario.request, connections: settings.connections, pipelining: settings.pipelining, duration: settings.warmup })
          console.log(`warm-up     ${arm.definition.name.padEnd(12)} ${w.rps.toFixed(0).padStart(7)} req/s`)
        } catch (err) {
          arm.error = `warm-up failed: ${errorLine(err)}`
        }
        checkAlive(arm, 'during warm-up')
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }

    for (let round = 1; round <= settings.rounds; round++) {
      for (const arm of live()) {
        const down = upstreamDown()
        if (down !== null) throw new Error(`the upstream ${down}`)
        try {
          const r = await measure(arm, upstreams, settings, settings.duration)
          arm.runs.push({ round, ...r })
          console.log(`round ${round}/${settings.rounds} ${arm.definition.name.padEnd(12)} ${r.rps.toFixed(0).padStart(7)} req/s  p50 ${r.latency.p50.toFixed(2)} ms  p99 ${r.latency.p99.toFixed(2)} ms  errors ${r.errors}  non-2xx ${r.non2xx}  upstream conns ${fmt(r.upstreamConnections, 0)}`)
        } catch (err) {
          arm.error = `round ${round} failed: ${errorLine(err)}`
        }
        checkAlive(arm, `in round ${round}`)
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }

    for (const arm of arms) {
      if (arm.gateway === null) continue
      const usage = await askUsage(arm.gateway)
      arm.peakRssKiB = usage?.maxRSS ?? await procPeakRss(arm.gateway.process.pid)
    }
  } finally {
    await Promise.all([...arms.flatMap((a) => a.gateway === null ? [] : [stopChild(a.gateway)]), ...upstreams.map(stopChild)])
    clearTimeout(watchdog)
  }

  const summaries = arms.map(summarize)
  console.log('')
  console.log(table([
    ['arm', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'upstream conns', 'gw CPU us/req', 'gw peak RSS MiB', 'status'],
    ...summaries.map((s) => [
      s.arm,
      fmt(s.rps, 0),
      fmt(s.p50, 2),
      fmt(s.p99, 2),
      String(s.errors),
      String(s.non2xx),
      fmt(s.upstreamConnections, 0),
      fmt(s.gatewayCpuPerResponse, 1),
      s.peakRssKiB === null ? '-' : (s.peakRssKiB / 1024).toFixed(1),
      s.status === 'ok' ? 'ok' : 'FAILED'
    ])
  ]))
  console.log(`(medians of ${settings.rounds} rounds; errors and non-2xx summed over them; latency of every response; upstream conns: new connections to the upstream per run)`)
  for (const s of summaries) {
    if (s.error !== null) console.log(`${s.arm} FAILED: ${s.error}`)
  }

  const base = summaries.find((s) => s.arm === scenario.baseline)
  const cmp = summaries.find((s) => s.arm === scenario.compare)
  const ratio = (a: number | null | undefined, b: number | null | undefined): number | null =>
    a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b
  const ratios = {
    name: `${scenario.compare}/${scenario.baseline}`,
    rps: ok(cmp) && ok(base) ? ratio(cmp.rps, base.rps) : null,
    p99: ok(cmp) && ok(base) ? ratio(cmp.p99, base.p99) : null
  }
  if (ratios.rps !== null || ratios.p99 !== null) {
    console.log(`${ratios.name}: req/s x${fmt(ratios.rps, 3)}, p99 x${fmt(ratios.p99, 3)}`)
  } else {
    console.log(`${ratios.name}: no ratio, an arm failed`)
  }

  const report = {
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cores,
    cpuModel: os.cpus()[0]?.model.trim() ?? null,
    settings: { ...settings, scenario: scenario.name },
    scenario,
    summary: summaries,
    ratios,
    arms: arms.map((a) => ({ arm: a.definition.name, via: a.definition.via, urls: a.urls, error: a.error, peakRssKiB: a.peakRssKiB, runs: a.runs }))
  }
  const dir = fileURLToPath(new URL('../../.bench/', import.meta.url))
  await mkdir(dir, { recursive: true })
  const file = `${dir}last.json`
  await writeFile(file, JSON.stringify(report, null, 2) + '\n')
  console.log(`results written to ${file}`)

  return summaries.every((s) => s.status === 'ok') ? 0 : 1
}

function ok (s: Summary | undefined): s is Summary {
  return s !== undefined && s.status === 'ok'
}

main().then((code) => {
  process.exitCode = code
}, (err: unknown) => {
  console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  killChildren()
  process.exitCode = 1
})

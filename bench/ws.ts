// The WebSocket benchmark: echo messages through this plugin's `websocket: true`
// route against plain @fastify/http-proxy with `websocket: true` and against
// the upstream reached directly, side by side in one run; then each gateway's
// memory with many idle tunnels open. Loopback only: the echo upstream
// (ws-upstream.ts), each gateway (gateway.ts, the same child as `npm run
// bench`) and the client (ws-client.ts) each run in a process of their own,
// every one stopped by its PID. Placement is left to the scheduler: the load
// side (a `ws` client masking every message, a `ws` server unmasking it)
// costs more than a gateway, and pinned to one core beside the upstream it
// becomes the limit and hides the gateways' differences. WSBENCH_PIN=on gives
// the gateway the last core and everything else the others, as `npm run
// bench` does.
//
// 1. Messages per second: WSBENCH_TUNNELS WebSockets (64), each keeping
//    WSBENCH_WINDOW binary messages in flight (1: it sends one and waits for
//    its echo), for each size of WSBENCH_SIZES (64 B and 16 KiB). The arms run
//    interleaved, WSBENCH_ROUNDS rounds (3), the order turning each round; each
//    run opens its tunnels, warms up WSBENCH_WARMUP s (1), counts echoes for
//    WSBENCH_DURATION s (3) and closes them; the gateway's CPU time over the
//    run's echoes is its cost of a message. Then the plugin and http-proxy
//    run side by side, both loaded at once on the cores they share (the
//    one whose tunnels start first turning each round), so whatever the
//    machine does meanwhile falls on both alike; and http-proxy beside
//    http-proxy'. http-proxy' is http-proxy again in a process of its own: its
//    ratio to http-proxy is the noise.
// 2. Memory: for each gateway arm, a fresh gateway (--expose-gc) opens and
//    closes 200 tunnels, then WSBENCH_IDLE tunnels (10,000; 0: skip) are opened
//    through it and left idle; its RSS after two collections, before and
//    after, over the tunnels is the cost of one. The upstream has to count them
//    all open.
//
//   npm run bench:ws
//   WSBENCH_ROUNDS=5 WSBENCH_IDLE=2000 npm run bench:ws
//
// File descriptors: 10,000 tunnels hold 20,000 sockets in the gateway and
// 10,000 each in the client and the upstream. Each child is started under
// `ulimit -n` raised to what it needs (within the hard limit, or above it
// where the user may raise that, as root may); where that fails, the run
// says so and opens as many tunnels as the limit allows.
//
// Environment: WSBENCH_TUNNELS (64), WSBENCH_SIZES (bytes, comma-separated:
// 64,16384), WSBENCH_WINDOW (1), WSBENCH_ROUNDS (3), WSBENCH_DURATION (s, 3),
// WSBENCH_WARMUP (s, 1), WSBENCH_IDLE (10000), WSBENCH_IDLE_CONCURRENCY
// (handshakes at a time, 200), WSBENCH_ARMS (direct,http-proxy,http-proxy',sssonector),
// WSBENCH_PIN (off or on). Results also go to .bench/ws-last.json.
import { spawn, spawnSync } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { childrenKilledOnExit, intFromEnv, isChildMessage } from './protocol.js'
import { next, stopChild as stopChildOf, track } from './children.js'
import type { Child } from './children.js'
import type { MemoryMessage, UsageMessage } from './protocol.js'
import { median, table } from './report.js'
import type { GatewayConfig, GatewayKind } from './scenarios.js'
import type { ClientAnswer, ClientCommand, EchoGroup, OpenResult } from './ws-client.js'
import type { WsUpstreamConfig } from './ws-upstream.js'

const HOST = '127.0.0.1'
const PREFIX = '/echo'
const START_TIMEOUT = 15_000
const ANSWER_TIMEOUT = 5_000
const STOP_TIMEOUT = 3_000
const PAUSE_BETWEEN_RUNS = 250
const LOAD_PRIORITY = -10
/** tunnels opened and closed on a fresh gateway before its memory is read */
const MEMORY_WARMUP_TUNNELS = 200
/** file descriptors a process needs beside its sockets */
const FD_SPARE = 100

interface WsArm {
  name: string
  description: string
  via: 'direct' | GatewayKind
}

const ARMS: WsArm[] = [
  { name: 'direct', description: 'the client straight to the upstream: the limit', via: 'direct' },
  { name: 'http-proxy', description: 'Fastify + @fastify/http-proxy, websocket: true (a frame relay: ws server and ws client)', via: 'http-proxy' },
  { name: "http-proxy'", description: 'the same as http-proxy, in a process of its own: the noise figure', via: 'http-proxy' },
  { name: 'sssonector', description: 'Fastify + fastify-sssonector, a websocket: true route', via: 'sssonector' }
]
const PLAIN = 'http-proxy'
const PLAIN_AGAIN = "http-proxy'"
const PLUGIN = 'sssonector'
/** [A, B] loaded side by side; ratios are B / A */
const DUELS: Array<[string, string]> = [[PLAIN, PLUGIN], [PLAIN, PLAIN_AGAIN]]

interface Settings {
  tunnels: number
  sizes: number[]
  window: number
  rounds: number
  duration: number
  warmup: number
  idle: number
  idleConcurrency: number
  arms: WsArm[]
  pin: boolean
}

function readSettings (): Settings {
  const sizes = (process.env.WSBENCH_SIZES ?? '64,16384').split(',').map((s) => s.trim()).filter((s) => s !== '').map((s) => {
    const n = Number(s)
    if (!Number.isInteger(n) || n < 2 || n > 16 * 1024 * 1024) throw new Error(`WSBENCH_SIZES: ${JSON.stringify(s)} is not a size from 2 to 16777216 bytes`)
    return n
  })
  const names = (process.env.WSBENCH_ARMS ?? ARMS.map((a) => a.name).join(',')).split(',').map((s) => s.trim()).filter((s) => s !== '')
  const arms = names.map((name) => {
    const arm = ARMS.find((a) => a.name === name)
    if (arm === undefined) throw new Error(`WSBENCH_ARMS: ${JSON.stringify(name)} is not one of ${ARMS.map((a) => a.name).join(', ')}`)
    return arm
  })
  const pin = (process.env.WSBENCH_PIN ?? 'off').trim()
  if (!['on', '1', '', 'off', '0'].includes(pin)) throw new Error(`WSBENCH_PIN: ${JSON.stringify(pin)} is not on or off`)
  return {
    tunnels: intFromEnv('WSBENCH_TUNNELS', 64, 1, 10_000),
    sizes,
    window: intFromEnv('WSBENCH_WINDOW', 1, 1, 1000),
    rounds: intFromEnv('WSBENCH_ROUNDS', 3, 1, 50),
    duration: intFromEnv('WSBENCH_DURATION', 3, 1, 600),
    warmup: intFromEnv('WSBENCH_WARMUP', 1, 0, 60),
    idle: intFromEnv('WSBENCH_IDLE', 10_000, 0, 200_000),
    idleConcurrency: intFromEnv('WSBENCH_IDLE_CONCURRENCY', 200, 1, 5000),
    arms,
    pin: pin === 'on' || pin === '1'
  }
}

// ---------------------------------------------------------------- processes

const { children, killChildren } = childrenKilledOnExit('bench:ws')

/** The soft and hard limits of open files of this process (`Infinity` for unlimited). */
async function fileLimits (): Promise<{ soft: number, hard: number }> {
  const text = await readFile('/proc/self/limits', 'utf8').catch(() => '')
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  const num = (s: string | undefined): number => s === undefined || s === 'unlimited' ? Infinity : Number(s)
  return m === null ? { soft: Infinity, hard: Infinity } : { soft: num(m[1]), hard: num(m[2]) }
}

/** Whether a child may be started under `ulimit -n files` (raising the hard limit too needs root). */
function canRaiseTo (files: number): boolean {
  return spawnSync('sh', ['-c', `ulimit -n ${files}`]).status === 0
}

let pinning: { gateway: string, rest: string } | null = null

function taskset (cpus: string, pid: number): string | null {
  const r = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' })
  if (r.error !== undefined) return r.error.message
  return r.status === 0 ? null : (r.stderr.trim() || `exit code ${String(r.status)}`)
}

/**
 * Starts a node script of this directory under `ulimit -n files` (when that
 * is above this process's own limit), with an IPC channel; a gateway is
 * pinned to its core.
 */
function spawnChild (name: string, script: string, args: string[], opts: { files: number, gateway: boolean, execArgv?: string[] }): Child {
  const path = fileURLToPath(new URL(script, import.meta.url))
  const node = [...(opts.execArgv ?? []), path, ...args]
  const cp = opts.files > ownFiles
    ? spawn('sh', ['-c', `ulimit -n ${opts.files} && exec "$0" "$@"`, process.execPath, ...node], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    : spawn(process.execPath, node, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const child = track(name, cp, children)
  if (pinning !== null && cp.pid !== undefined) {
    const failed = taskset(opts.gateway ? pinning.gateway : pinning.rest, cp.pid)
    if (failed !== null) process.stderr.write(`bench:ws: could not pin ${name}: ${failed}\n`)
  }
  return child
}

let ownFiles = Infinity

async function startServer (name: string, script: string, config: GatewayConfig | WsUpstreamConfig, files: number, gateway: boolean, execArgv?: string[]): Promise<Child> {
  const child = spawnChild(name, script, [JSON.stringify(config)], { files, gateway, execArgv })
  try {
    child.port = await next(child, (m) => isChildMessage(m) && m.type === 'ready' ? m.port : undefined, START_TIMEOUT, 'listening')
    return child
  } catch (err) {
    await stopChild(child)
    throw err
  }
}

async function ask (child: Child, type: 'usage'): Promise<UsageMessage>
async function ask (child: Child, type: 'memory'): Promise<MemoryMessage>
async function ask (child: Child, type: 'usage' | 'memory'): Promise<UsageMessage | MemoryMessage> {
  const answer = next(child, (m) => isChildMessage(m) && (m.type === 'usage' || m.type === 'memory') && m.type === type ? m : undefined, ANSWER_TIMEOUT, `a ${type} answer`)
  child.process.send({ type })
  return await answer
}

async function stopChild (child: Child): Promise<void> {
  await stopChildOf(child, children, STOP_TIMEOUT)
}

/** The client child: runs one command at a time. */
class Client {
  constructor (readonly child: Child) {}

  static async start (files: number): Promise<Client> {
    const child = spawnChild('client', './ws-client.js', [], { files, gateway: false })
    try {
      await next(child, (m) => (m as ClientAnswer | null)?.type === 'ready' ? true : undefined, START_TIMEOUT, 'ready')
    } catch (err) {
      await stopChild(child)
      throw err
    }
    if (child.process.pid !== undefined) {
      try { os.setPriority(child.process.pid, LOAD_PRIORITY) } catch {}
    }
    return new Client(child)
  }

  async run<A extends ClientAnswer['type']> (cmd: ClientCommand, type: A, timeout: number): Promise<Extract<ClientAnswer, { type: A }>> {
    const answer = next(this.child, (m) => {
      const a = m as ClientAnswer | null
      if (a?.type === 'error') return new Error(`client: ${a.error}`)
      return a?.type === type ? a : undefined
    }, timeout, `an answer to ${cmd.type}`)
    this.child.process.send(cmd)
    const got = await answer
    if (got instanceof Error) throw got
    return got as Extract<ClientAnswer, { type: A }>
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** Polls the upstream until `open` tunnels are open there (or `timeout` ms pass); what it counted last. */
async function upstreamOpen (upstream: Child, want: number, timeout: number): Promise<number> {
  const until = performance.now() + timeout
  let open = -1
  while (true) {
    open = (await ask(upstream, 'usage')).open ?? -1
    if (open === want || performance.now() > until) return open
    await sleep(50)
  }
}

// ---------------------------------------------------------------- figures

interface EchoRun extends Omit<EchoGroup, 'url'> {
  round: number
  seconds: number
  /** echoes a second in the measured window */
  rate: number
  /** the gateway's CPU time (user + system) over every echo of the run, µs a message; null for the direct arm */
  cpu: number | null
}

/** Two gateways loaded at once, each with its own tunnels: one round. */
interface DuelRound { round: number, bytes: number, aRate: number, bRate: number }

interface Duel { a: string, b: string, rounds: DuelRound[], error: string | null }

interface ArmState {
  arm: WsArm
  url: string
  gateway: Child | null
  error: string | null
  /** runs per message size */
  runs: Map<number, EchoRun[]>
}

interface MemoryFigures {
  arm: string
  tunnels: number
  before: MemoryMessage
  after: MemoryMessage
  peakRssKiB: number
  openSeconds: number
  upstreamOpen: number
  error: string | null
}

function range (values: number[], digits = 0): string {
  if (values.length === 0) return '-'
  const lo = Math.min(...values)
  const hi = Math.max(...values)
  return `${lo.toFixed(digits)}-${hi.toFixed(digits)}`
}

function ratios (a: EchoRun[], b: EchoRun[]): number[] {
  const out: number[] = []
  for (const x of a) {
    const y = b.find((r) => r.round === x.round)
    if (y !== undefined && x.rate > 0) out.push(y.rate / x.rate)
  }
  return out
}

const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1)
const x = (v: number | null): string => v === null ? '-' : `x${v.toFixed(3)}`

// ---------------------------------------------------------------- the run

async function echoPhase (settings: Settings, upstream: Child, client: Client, files: number): Promise<{ states: ArmState[], duels: Duel[] }> {
  const states: ArmState[] = []
  for (const arm of settings.arms) {
    const state: ArmState = { arm, url: '', gateway: null, error: null, runs: new Map(settings.sizes.map((s) => [s, []])) }
    states.push(state)
    if (arm.via === 'direct') {
      state.url = `ws://${HOST}:${upstream.port}${PREFIX}`
      continue
    }
    try {
      state.gateway = await startServer(`gateway ${arm.name}`, './gateway.js', { kind: arm.via, targets: [`http://${HOST}:${upstream.port}`], prefix: PREFIX, websocket: true }, files, true)
      state.url = `ws://${HOST}:${state.gateway.port}${PREFIX}`
      console.log(`${arm.name}: ${arm.description}, on ${state.url} (pid ${state.gateway.process.pid ?? '?'})`)
    } catch (err) {
      state.error = `did not start: ${firstLine(err)}`
      console.log(`${arm.name}: FAILED to start: ${firstLine(err)}`)
    }
  }
  const width = Math.max(...states.map((s) => s.arm.name.length))
  const runTimeout = (settings.warmup + settings.duration) * 1000 + 30_000
  for (let round = 1; round <= settings.rounds; round++) {
    const live = states.filter((s) => s.error === null)
    const turn = (round - 1) % Math.max(1, live.length)
    const order = [...live.slice(turn), ...live.slice(0, turn)]
    for (const bytes of settings.sizes) {
      for (const state of order) {
        if (state.error !== null) continue
        try {
          const before = state.gateway === null ? null : await ask(state.gateway, 'usage')
          const r = await client.run({ type: 'echo', urls: [state.url], tunnels: settings.tunnels, bytes, window: settings.window, warmup: settings.warmup, duration: settings.duration }, 'echo', runTimeout)
          const after = state.gateway === null ? null : await ask(state.gateway, 'usage')
          const g = r.groups[0]!
          const rate = g.messages / r.seconds
          const cpu = before === null || after === null || g.total === 0 ? null : (after.cpuUser + after.cpuSystem - before.cpuUser - before.cpuSystem) / g.total
          state.runs.get(bytes)!.push({ ...g, seconds: r.seconds, round, rate, cpu })
          console.log(`round ${round}/${settings.rounds} ${String(bytes).padStart(6)} B ${state.arm.name.padEnd(width)} ${rate.toFixed(0).padStart(7)} msg/s  p50 ${g.p50.toFixed(2)} ms  p99 ${g.p99.toFixed(2)} ms  gateway CPU ${cpu === null ? '-' : `${cpu.toFixed(1)} µs`}/msg  errors ${g.errors}${g.firstError === null ? '' : ` (${g.firstError})`}`)
          if (g.errors > 0) state.error = `round ${round}, ${bytes} B: ${g.errors} errors, the first: ${g.firstError ?? '?'}`
        } catch (err) {
          state.error = `round ${round}, ${bytes} B: ${firstLine(err)}`
          console.log(`round ${round}/${settings.rounds} ${String(bytes).padStart(6)} B ${state.arm.name.padEnd(width)} FAILED: ${firstLine(err)}`)
        }
        if (state.gateway?.exit != null && state.error === null) state.error = `gateway ${state.gateway.exit}`
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }
  }
  // Side by side: two gateways loaded at once, sharing the same cores, so
  // whatever the machine does meanwhile falls on both alike.
  const duels: Duel[] = []
  for (const [aName, bName] of DUELS) {
    const a = states.find((s) => s.arm.name === aName)
    const b = states.find((s) => s.arm.name === bName)
    if (a === undefined || b === undefined) continue
    const duel: Duel = { a: aName, b: bName, rounds: [], error: null }
    duels.push(duel)
    for (let round = 1; round <= settings.rounds && duel.error === null; round++) {
      for (const bytes of settings.sizes) {
        if (a.error !== null || b.error !== null) {
          duel.error = 'an arm failed'
          break
        }
        try {
          // which one's tunnels open and start first turns round by round
          const bFirst = round % 2 === 0
          const r = await client.run({ type: 'echo', urls: bFirst ? [b.url, a.url] : [a.url, b.url], tunnels: settings.tunnels, bytes, window: settings.window, warmup: settings.warmup, duration: settings.duration }, 'echo', runTimeout)
          const [ga, gb] = bFirst ? [r.groups[1]!, r.groups[0]!] : [r.groups[0]!, r.groups[1]!]
          if (ga.errors + gb.errors > 0) throw new Error(`${ga.errors + gb.errors} errors, the first: ${ga.firstError ?? gb.firstError ?? '?'}`)
          const d: DuelRound = { round, bytes, aRate: ga.messages / r.seconds, bRate: gb.messages / r.seconds }
          duel.rounds.push(d)
          console.log(`side by side ${round}/${settings.rounds} ${String(bytes).padStart(6)} B ${aName} ${d.aRate.toFixed(0)} msg/s, ${bName} ${d.bRate.toFixed(0)} msg/s: x${(d.bRate / d.aRate).toFixed(3)}`)
        } catch (err) {
          duel.error = `round ${round}, ${bytes} B: ${firstLine(err)}`
          console.log(`side by side ${aName} and ${bName} FAILED: ${duel.error}`)
          break
        }
        await sleep(PAUSE_BETWEEN_RUNS)
      }
    }
  }
  await Promise.all(states.flatMap((s) => s.gateway === null ? [] : [stopChild(s.gateway)]))
  return { states, duels }
}

async function memoryPhase (settings: Settings, tunnels: number, upstream: Child, client: Client, files: number): Promise<MemoryFigures[]> {
  const out: MemoryFigures[] = []
  for (const arm of settings.arms) {
    if (arm.via === 'direct') continue
    let gateway: Child | null = null
    try {
      gateway = await startServer(`gateway ${arm.name} (memory)`, './gateway.js', { kind: arm.via, targets: [`http://${HOST}:${upstream.port}`], prefix: PREFIX, websocket: true }, files, true, ['--expose-gc'])
      const url = `ws://${HOST}:${gateway.port}${PREFIX}`
      const warm = await client.run({ type: 'open', url, count: MEMORY_WARMUP_TUNNELS, concurrency: settings.idleConcurrency }, 'open', 60_000)
      if (warm.failed > 0) throw new Error(`warm-up: ${warm.failed} of ${MEMORY_WARMUP_TUNNELS} handshakes failed: ${warm.firstError ?? '?'}`)
      await client.run({ type: 'close' }, 'closed', 60_000)
      const settled = await upstreamOpen(upstream, 0, 10_000)
      if (settled !== 0) throw new Error(`${settled} tunnels still open at the upstream after the warm-up's closed`)
      const before = await ask(gateway, 'memory')
      const opened: OpenResult = await client.run({ type: 'open', url, count: tunnels, concurrency: settings.idleConcurrency }, 'open', 300_000)
      const open = await upstreamOpen(upstream, opened.opened, 10_000)
      const after = await ask(gateway, 'memory')
      const peak = (await ask(gateway, 'usage')).maxRSS
      const error = opened.failed > 0
        ? `${opened.failed} of ${tunnels} handshakes failed, the first: ${opened.firstError ?? '?'}`
        : open !== opened.opened ? `the upstream counts ${open} open, not ${opened.opened}` : null
      const figures: MemoryFigures = { arm: arm.name, tunnels: opened.opened, before, after, peakRssKiB: peak, openSeconds: opened.seconds, upstreamOpen: open, error }
      out.push(figures)
      console.log(`memory ${arm.name}: ${opened.opened} tunnels opened in ${opened.seconds.toFixed(1)} s, the upstream counts ${open} open; RSS ${mib(before.rss)} -> ${mib(after.rss)} MiB, heap ${mib(before.heapUsed)} -> ${mib(after.heapUsed)} MiB: ${perTunnel(figures, 'rss')} B of RSS a tunnel${error === null ? '' : `; ${error}`}`)
      await client.run({ type: 'close' }, 'closed', 120_000)
      await upstreamOpen(upstream, 0, 20_000)
    } catch (err) {
      console.log(`memory ${arm.name}: FAILED: ${firstLine(err)}`)
      out.push({ arm: arm.name, tunnels: 0, before: emptyMemory, after: emptyMemory, peakRssKiB: 0, openSeconds: 0, upstreamOpen: 0, error: firstLine(err) })
      await client.run({ type: 'close' }, 'closed', 120_000).catch(() => {})
    } finally {
      if (gateway !== null) await stopChild(gateway)
    }
    await sleep(PAUSE_BETWEEN_RUNS)
  }
  return out
}

const emptyMemory: MemoryMessage = { type: 'memory', rss: 0, heapUsed: 0, external: 0, arrayBuffers: 0, collected: false }

function perTunnel (m: MemoryFigures, what: 'rss' | 'heapUsed' | 'external'): number {
  return m.tunnels === 0 ? Number.NaN : Math.round((m.after[what] - m.before[what]) / m.tunnels)
}

function firstLine (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.split('\n')[0] ?? text
}

async function main (): Promise<number> {
  const settings = readSettings()
  const cores = os.availableParallelism()
  const load = os.loadavg()
  const limits = await fileLimits()
  ownFiles = limits.soft

  // what the idle tunnels need: the gateway holds two sockets a tunnel
  let idle = settings.idle
  let fdNote = ''
  const need = (n: number, perTunnel: number): number => n * perTunnel + FD_SPARE
  if (idle > 0 && !canRaiseTo(need(idle, 2))) {
    const most = Math.floor(((Number.isFinite(limits.hard) ? limits.hard : limits.soft) - FD_SPARE) / 2)
    fdNote = `: ${idle} idle tunnels need ulimit -n ${need(idle, 2)} in the gateway, and the hard limit here is ${limits.hard}, so ${most} are opened (raise the hard limit, e.g. as root, for more)`
    idle = Math.max(0, most)
  }
  const gatewayFiles = Math.max(need(idle, 2), need(settings.tunnels, 2))
  const peerFiles = Math.max(need(idle, 1), need(settings.tunnels, 1))

  // bounded: every run, with generous slack, or it stops itself
  const runs = (settings.arms.length + DUELS.length) * settings.sizes.length * settings.rounds
  const budget = (runs * (settings.warmup + settings.duration + 5) + settings.arms.length * (idle > 0 ? 30 + idle / 200 : 0) + 60) * 1000
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench:ws: still running after ${Math.round(budget / 1000)} s, giving up\n`)
    killChildren()
    process.exit(1)
  }, budget)
  watchdog.unref()

  console.log(`node ${process.version}, ${cores} cores (${os.cpus()[0]?.model.trim() ?? 'unknown cpu'}), load average ${load.map((l) => l.toFixed(2)).join(' ')}`)
  if (settings.pin && cores >= 2) {
    pinning = { gateway: String(cores - 1), rest: cores === 2 ? '0' : `0-${cores - 2}` }
    const failed = taskset(pinning.rest, process.pid)
    if (failed !== null) {
      console.log(`pinning: none (taskset failed: ${failed})`)
      pinning = null
    } else {
      console.log(`pinning: gateway on core ${pinning.gateway}, client and upstream on ${pinning.rest}, the client at priority ${LOAD_PRIORITY}`)
    }
  } else {
    console.log(`pinning: none (${settings.pin ? 'one core' : 'the scheduler places every process; WSBENCH_PIN=on pins the gateway'})`)
  }
  console.log(`open files: this process ${limits.soft} (hard ${limits.hard}); children started with ulimit -n ${gatewayFiles} (gateways), ${peerFiles} (client, upstream)${fdNote}`)
  console.log(`echo: ${settings.tunnels} tunnels, ${settings.window} message${settings.window === 1 ? '' : 's'} in flight on each (closed loop), binary messages of ${settings.sizes.join(' and ')} B; ${settings.rounds} rounds x ${settings.duration} s per arm and size after ${settings.warmup} s of warm-up, the arm order turning each round`)

  let upstream: Child | null = null
  let client: Client | null = null
  let states: ArmState[] = []
  let duels: Duel[] = []
  let memory: MemoryFigures[] = []
  try {
    upstream = await startServer('upstream', './ws-upstream.js', { port: 0 }, peerFiles, false)
    client = await Client.start(peerFiles)
    console.log(`upstream: ws echo on ws://${HOST}:${upstream.port} (pid ${upstream.process.pid ?? '?'}), client pid ${client.child.process.pid ?? '?'}`)
    ;({ states, duels } = await echoPhase(settings, upstream, client, gatewayFiles))
    if (idle > 0) {
      console.log('')
      console.log(`memory: ${idle} idle tunnels through each gateway, a fresh one each (--expose-gc), after ${MEMORY_WARMUP_TUNNELS} opened and closed; ${settings.idleConcurrency} handshakes at a time`)
      memory = await memoryPhase(settings, idle, upstream, client, gatewayFiles)
    }
  } finally {
    clearTimeout(watchdog)
    if (client !== null) await stopChild(client.child)
    if (upstream !== null) await stopChild(upstream)
  }

  // ---- the tables
  const byName = (name: string): ArmState | undefined => states.find((s) => s.arm.name === name)
  const checks: Array<{ target: string, measured: string, met: boolean | null }> = []
  const echoSummary: Array<Record<string, unknown>> = []
  const duelRatios = (a: string, b: string, bytes: number): number[] =>
    duels.find((d) => d.a === a && d.b === b)?.rounds.filter((r) => r.bytes === bytes && r.aRate > 0).map((r) => r.bRate / r.aRate) ?? []
  const cpuRatios = (plain: EchoRun[], other: EchoRun[]): number[] => {
    const out: number[] = []
    for (const p of plain) {
      const o = other.find((r) => r.round === p.round)
      if (o?.cpu != null && p.cpu !== null && p.cpu > 0) out.push(o.cpu / p.cpu)
    }
    return out
  }
  const fmtRange = (values: number[]): string => values.length === 0 ? '-' : `${x(median(values))} (${range(values, 3)})`
  for (const bytes of settings.sizes) {
    console.log('')
    console.log(`echo messages per second, ${bytes}-byte messages, ${settings.tunnels} tunnels x ${settings.window} in flight: median of ${settings.rounds} interleaved rounds, their range; ratios to http-proxy are medians of the rounds' ratios`)
    const plain = byName(PLAIN)?.runs.get(bytes) ?? []
    const rows = [['arm', 'msg/s', 'range', 'p50 ms', 'p99 ms', 'vs http-proxy (range)', 'gateway CPU µs/msg', 'CPU vs http-proxy (range)', 'side by side with http-proxy (range)', 'status']]
    for (const s of states) {
      const runs = s.runs.get(bytes)!
      const rates = runs.map((r) => r.rate)
      const cpus = runs.flatMap((r) => r.cpu === null ? [] : [r.cpu])
      const mine = s.arm.name !== PLAIN
      const vs = mine ? ratios(plain, runs) : []
      const cpuVs = mine ? cpuRatios(plain, runs) : []
      const side = mine ? duelRatios(PLAIN, s.arm.name, bytes) : []
      rows.push([
        s.arm.name,
        (median(rates) ?? 0).toFixed(0),
        range(rates),
        (median(runs.map((r) => r.p50)) ?? Number.NaN).toFixed(2),
        (median(runs.map((r) => r.p99)) ?? Number.NaN).toFixed(2),
        fmtRange(vs),
        cpus.length === 0 ? '-' : `${(median(cpus) ?? 0).toFixed(1)} (${range(cpus, 1)})`,
        fmtRange(cpuVs),
        fmtRange(side),
        s.error === null ? 'ok' : 'FAILED'
      ])
      echoSummary.push({
        bytes,
        arm: s.arm.name,
        median: median(rates),
        range: rates.length === 0 ? null : [Math.min(...rates), Math.max(...rates)],
        vsPlain: median(vs),
        vsPlainRange: vs.length === 0 ? null : [Math.min(...vs), Math.max(...vs)],
        cpuPerMessage: median(cpus),
        cpuVsPlain: median(cpuVs),
        sideBySide: median(side),
        sideBySideRange: side.length === 0 ? null : [Math.min(...side), Math.max(...side)],
        error: s.error
      })
    }
    console.log(table(rows))
    for (const s of states) if (s.error !== null) console.log(`${s.arm.name} FAILED: ${s.error}`)
    for (const d of duels) if (d.error !== null) console.log(`side by side ${d.a} and ${d.b} FAILED: ${d.error}`)
    const plugin = byName(PLUGIN)
    if (plugin !== undefined) {
      const side = duelRatios(PLAIN, PLUGIN, bytes)
      const noise = duelRatios(PLAIN, PLAIN_AGAIN, bytes)
      const interleaved = ratios(plain, plugin.runs.get(bytes)!)
      const m = median(side)
      checks.push({
        target: `${bytes} B: msg/s at least plain http-proxy's (side by side)`,
        measured: plugin.error !== null ? 'the arm failed' : `${fmtRange(side)}; A'/A side by side ${fmtRange(noise)}; interleaved ${fmtRange(interleaved)}; gateway CPU a message ${fmtRange(cpuRatios(plain, plugin.runs.get(bytes)!))}`,
        met: plugin.error !== null || m === null ? false : m >= 1
      })
    }
  }

  if (memory.length > 0) {
    console.log('')
    console.log('gateway memory with idle tunnels (after two collections; per tunnel: after minus before, over the tunnels)')
    const rows = [['arm', 'tunnels', 'RSS before MiB', 'RSS after MiB', 'RSS per tunnel B', 'heap per tunnel B', 'external per tunnel B', 'peak RSS MiB', 'status']]
    for (const m of memory) {
      rows.push([m.arm, String(m.tunnels), mib(m.before.rss), mib(m.after.rss), String(perTunnel(m, 'rss')), String(perTunnel(m, 'heapUsed')), String(perTunnel(m, 'external')), mib(m.peakRssKiB * 1024), m.error === null ? 'ok' : 'FAILED'])
    }
    console.log(table(rows))
    for (const m of memory) if (m.error !== null) console.log(`${m.arm} FAILED: ${m.error}`)
    const plain = memory.find((m) => m.arm === PLAIN)
    const again = memory.find((m) => m.arm === PLAIN_AGAIN)
    const plugin = memory.find((m) => m.arm === PLUGIN)
    if (plain !== undefined && plugin !== undefined) {
      const r = perTunnel(plugin, 'rss') / perTunnel(plain, 'rss')
      const noise = again === undefined ? '' : `; A'/A x${(perTunnel(again, 'rss') / perTunnel(plain, 'rss')).toFixed(3)}`
      checks.push({
        target: 'RSS per idle tunnel at most plain http-proxy\'s',
        measured: plugin.error !== null ? 'the arm failed' : `${perTunnel(plugin, 'rss')} B against ${perTunnel(plain, 'rss')} B: x${r.toFixed(3)}${noise}`,
        met: plugin.error !== null || plain.error !== null ? false : r <= 1
      })
    }
  }

  if (checks.length > 0) {
    console.log('')
    console.log('targets (issue 17)')
    console.log(table([['target', 'measured', ''], ...checks.map((c) => [c.target, c.measured, c.met === true ? 'met' : 'NOT met'])]))
  }

  const dir = fileURLToPath(new URL('../../.bench/', import.meta.url))
  await mkdir(dir, { recursive: true })
  const file = `${dir}ws-last.json`
  await writeFile(file, JSON.stringify({
    date: new Date().toISOString(),
    node: process.version,
    cpus: cores,
    cpuModel: os.cpus()[0]?.model.trim() ?? null,
    loadAverage: load,
    settings: { ...settings, arms: settings.arms.map((a) => a.name), idle, pinning },
    echo: echoSummary,
    sideBySide: duels,
    runs: states.map((s) => ({ arm: s.arm.name, error: s.error, runs: Object.fromEntries(s.runs) })),
    memory: memory.map((m) => ({ ...m, rssPerTunnel: perTunnel(m, 'rss'), heapPerTunnel: perTunnel(m, 'heapUsed') })),
    targets: checks
  }, null, 2) + '\n')
  console.log(`results written to ${file}`)
  const failed = states.some((s) => s.error !== null) || memory.some((m) => m.error !== null)
  return failed ? 1 : 0
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  console.error(`bench:ws: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  killChildren()
  process.exitCode = 1
})

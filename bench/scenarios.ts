// What the benchmark measures: arms (how a request reaches the upstreams) and
// scenarios (what the upstreams do and what the load sends). A new arm is one
// entry in `arms` plus, for a new kind of gateway, one builder in gateway.ts;
// a new scenario is one entry in `scenarios` plus, for a new upstream
// behaviour, one case in upstream.ts.
import type { BalancePolicy } from '../types/index.js'

/** The gateways a child process can run (see gateway.ts). */
export type GatewayKind = 'http-proxy' | 'sssonector' | 'bare'

export interface ArmDefinition {
  name: string
  description: string
  /** `direct`: the load goes straight to the upstream target */
  via: 'direct' | GatewayKind
  /** `one`: the scenario's first target (always a healthy one); `all`: every target */
  targets: 'one' | 'all'
  /** the plugin's upstream options beyond its targets (a sssonector arm) */
  upstream?: Record<string, unknown>
}

export const arms: readonly ArmDefinition[] = [
  { name: 'direct', description: 'load generator straight to the first upstream: the limit', via: 'direct', targets: 'one' },
  { name: 'http-proxy', description: 'Fastify + @fastify/http-proxy, one target', via: 'http-proxy', targets: 'one' },
  { name: "http-proxy'", description: 'the same as http-proxy, in a process of its own: the noise figure', via: 'http-proxy', targets: 'one' },
  { name: 'sssonector', description: 'Fastify + fastify-sssonector, one target', via: 'sssonector', targets: 'one' },
  { name: 'http-proxy-balanced', description: 'Fastify + @fastify/http-proxy over undici BalancedPool, three targets', via: 'http-proxy', targets: 'all' },
  { name: "http-proxy-balanced'", description: 'the same as http-proxy-balanced, in a process of its own: the noise figure', via: 'http-proxy', targets: 'all' },
  { name: 'sssonector-balanced', description: 'Fastify + fastify-sssonector, three targets, default options', via: 'sssonector', targets: 'all' },
  { name: 'bare', description: 'node:http + an undici Pool, no framework (bench/bare.ts), one target: Node\'s ceiling', via: 'bare', targets: 'one' },
  { name: 'bare-balanced', description: 'node:http + one undici Pool per target, round robin, three targets: Node\'s ceiling', via: 'bare', targets: 'all' },
  { name: 'sssonector-hedged', description: "Fastify + fastify-sssonector, three targets, hedge: {} (delay 'p95', budget 5%)", via: 'sssonector', targets: 'all', upstream: { hedge: {} } },
  { name: 'sssonector-hedged-p99', description: "Fastify + fastify-sssonector, three targets, hedge: { delay: 'p99' } (budget 5%)", via: 'sssonector', targets: 'all', upstream: { hedge: { delay: 'p99' } } }
]

/** What one upstream child does with each request (see upstream.ts). */
export type UpstreamBehaviour =
  | { kind: 'ok', bodyBytes: number }
  /** answers after `delayMs` */
  | { kind: 'slow', bodyBytes: number, delayMs: number }
  /** answers `status` to one request in `every`, the others as `ok` */
  | { kind: 'flaky', bodyBytes: number, status: number, every: number }
  /** answers one request in `every` after `delayMs`, the others as `ok` */
  | { kind: 'stalls', bodyBytes: number, every: number, delayMs: number }
  /**
   * a fixed concurrency capacity: serves `capacity` requests at a time, each
   * for `serviceMs` ± `spreadMs` (uniform), and queues the rest itself (FIFO),
   * so its latency grows with the requests sent to it (bench/concurrency.ts)
   */
  | { kind: 'capacity', bodyBytes: number, capacity: number, serviceMs: number, spreadMs: number }

/** One target of a scenario: an upstream child, or a port nothing listens on. */
export type TargetSpec = UpstreamBehaviour | { kind: 'dead' }

/**
 * A target killed during every measured run and started again on the same
 * port: killed at `killAt` of the run's duration, listening again at `backAt`.
 */
export interface Disruption {
  kind: 'restart'
  target: number
  killAt: number
  backAt: number
}

export interface RequestSpec {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  path: string
  headers?: Record<string, string>
  body?: string
}

export interface Scenario {
  name: string
  description: string
  /** one target per entry; the first one is always healthy (the one-target arms use it) */
  targets: TargetSpec[]
  /** the route prefix every gateway proxies */
  prefix: string
  request: RequestSpec
  /** the arms this scenario runs (interleaved within each round, the order turning round by round) */
  arms: string[]
  /** [plain, plugin]: ratios are printed as plugin / plain */
  pairs: Array<[string, string]>
  /** [A, A']: the same arm twice, whose ratio is the noise of this scenario */
  noise: [string, string]
  /** connections of the load generator, when not BENCH_CONNECTIONS' default */
  connections?: number
  /** seconds per run, when BENCH_DURATION is not set */
  duration?: number
  disruption?: Disruption
  /** also run each arm at a fixed rate (BENCH_RATE), for the tails a client sees short of saturation */
  rate?: boolean
  /** seconds at that rate before its measure starts, when not 1 (see `stalls`) */
  rateLeadIn?: number
  /** [plain, plugin] pairs also loaded side by side, both at once (the plugin and plain http-proxy against the bare proxy, Node's ceiling, and the A-vs-A pair, too) */
  duels?: Array<[string, string]>
}

const SMALL = 100
const ONE_TARGET = ['direct', 'http-proxy', 'sssonector', 'bare', "http-proxy'"]
/** The plugin against plain http-proxy, and against the bare Node proxy (its ceiling). */
const ONE_TARGET_PAIRS: Array<[string, string]> = [['http-proxy', 'sssonector'], ['bare', 'sssonector']]
const THREE_TARGETS = ['http-proxy-balanced', 'sssonector-balanced', "http-proxy-balanced'"]
const BALANCED_PAIR: Array<[string, string]> = [['http-proxy-balanced', 'sssonector-balanced']]
const BALANCED_NOISE: [string, string] = ['http-proxy-balanced', "http-proxy-balanced'"]
const ok = { kind: 'ok', bodyBytes: SMALL } as const
const stalls = { kind: 'stalls', bodyBytes: SMALL, every: 100, delayMs: 100 } as const
/** What the scenarios with one odd target among three share. */
const ONE_OF_THREE = {
  prefix: '/',
  request: { method: 'GET', path: '/hello' },
  arms: THREE_TARGETS,
  pairs: BALANCED_PAIR,
  noise: BALANCED_NOISE,
  rate: true
} satisfies Partial<Scenario>

export const scenarios: readonly Scenario[] = [
  {
    name: 'steady',
    description: 'healthy keep-alive targets, GET with a ~100-byte answer',
    targets: [ok, ok, ok],
    prefix: '/',
    request: { method: 'GET', path: '/hello' },
    arms: ['direct', 'http-proxy', 'sssonector', 'bare', 'http-proxy-balanced', 'sssonector-balanced', 'bare-balanced', "http-proxy'"],
    pairs: [...ONE_TARGET_PAIRS, ...BALANCED_PAIR, ['bare-balanced', 'sssonector-balanced']],
    noise: ['http-proxy', "http-proxy'"],
    rate: true,
    duels: [['http-proxy', 'sssonector'], ['http-proxy-balanced', 'sssonector-balanced'], ['bare', 'sssonector'], ['bare-balanced', 'sssonector-balanced'], ['http-proxy', 'bare'], ['http-proxy-balanced', 'bare-balanced'], ['http-proxy', "http-proxy'"]]
  },
  {
    name: 'dead',
    description: 'one of three targets is a port nothing listens on, for the whole run',
    targets: [ok, ok, { kind: 'dead' }],
    ...ONE_OF_THREE
  },
  {
    name: 'dying',
    description: 'one of three targets is killed in every run (at 20% of it) and listens again on its port at 70%',
    targets: [ok, ok, ok],
    ...ONE_OF_THREE,
    duration: 5,
    disruption: { kind: 'restart', target: 2, killAt: 0.2, backAt: 0.7 }
  },
  {
    name: 'slow',
    description: 'one of three targets answers after 200 ms',
    targets: [ok, ok, { kind: 'slow', bodyBytes: SMALL, delayMs: 200 }],
    ...ONE_OF_THREE
  },
  {
    name: 'flaky',
    description: 'one of three targets answers 503 to every second request',
    targets: [ok, ok, { kind: 'flaky', bodyBytes: SMALL, status: 503, every: 2 }],
    ...ONE_OF_THREE
  },
  {
    name: 'stalls',
    description: 'every target answers 1% of its requests (one in 100) 100 ms late',
    targets: [stalls, stalls, stalls],
    prefix: '/',
    request: { method: 'GET', path: '/hello' },
    arms: ['http-proxy-balanced', 'sssonector-balanced', 'sssonector-hedged', 'sssonector-hedged-p99', "http-proxy-balanced'"],
    pairs: [...BALANCED_PAIR, ['http-proxy-balanced', 'sssonector-hedged'], ['http-proxy-balanced', 'sssonector-hedged-p99']],
    noise: BALANCED_NOISE,
    rate: true,
    // A hedge's 'p95' delay reads its target's last 10 s (once a second): measured
    // after 1 s at the rate, it still held the saturated run just before, and the
    // hedges went out at that run's p95, not at the rate's. 11 s at the rate
    // first: the window holds the rate's own latencies when the measure starts.
    rateLeadIn: 11
  },
  {
    name: 'post64k',
    description: 'POST with a 64 KiB body, read in full by the upstream, small answer',
    targets: [ok],
    prefix: '/',
    request: {
      method: 'POST',
      path: '/upload',
      headers: { 'content-type': 'application/octet-stream' },
      body: 'x'.repeat(64 * 1024)
    },
    arms: ONE_TARGET,
    pairs: ONE_TARGET_PAIRS,
    noise: ['http-proxy', "http-proxy'"],
    duels: [['http-proxy', 'sssonector'], ['bare', 'sssonector'], ['http-proxy', 'bare'], ['http-proxy', "http-proxy'"]]
  },
  {
    name: 'big',
    description: 'GET with a 1 MiB answer, 10 connections',
    targets: [{ kind: 'ok', bodyBytes: 1024 * 1024 }],
    prefix: '/',
    request: { method: 'GET', path: '/big' },
    arms: ONE_TARGET,
    pairs: ONE_TARGET_PAIRS,
    noise: ['http-proxy', "http-proxy'"],
    duels: [['http-proxy', 'sssonector'], ['bare', 'sssonector'], ['http-proxy', 'bare'], ['http-proxy', "http-proxy'"]],
    connections: 10
  }
]

/** The config a gateway child gets as its argv[2], in JSON. */
export interface GatewayConfig {
  kind: GatewayKind
  targets: string[]
  prefix: string
  /** the plugin's upstream options beyond its targets (ArmDefinition#upstream, bench/concurrency.ts) */
  upstream?: Record<string, unknown>
  /** proxy WebSocket upgrades on the prefix too (http-proxy's `websocket: true`; bench/ws.ts) */
  websocket?: boolean
  /** the plugin's balance policy, when not its default (bench/cold.ts) */
  balance?: BalancePolicy
}

/** The config an upstream child gets as its argv[2], in JSON. */
export interface UpstreamConfig {
  behaviour: UpstreamBehaviour
  keepAliveTimeout: number
  /** the port to listen on (0: any free one) */
  port: number
  /** wait for the parent's `listen` message before listening (a restart ready to take over a port) */
  standby?: boolean
}

// What the benchmark measures: arms (how a request reaches the upstream) and
// scenarios (what the upstreams do and what the load sends). A new arm is one
// entry in `arms` plus, for a new kind of gateway, one builder in gateway.ts;
// a new scenario is one entry in `scenarios` plus, for a new upstream
// behaviour, one case in upstream.ts.

/** The gateways a child process can run (see gateway.ts). */
export type GatewayKind = 'http-proxy' | 'sssonector'

export interface ArmDefinition {
  name: string
  description: string
  /** `direct`: the load goes straight to the upstream targets */
  via: 'direct' | GatewayKind
}

export const arms: readonly ArmDefinition[] = [
  { name: 'direct', description: 'load generator straight to the upstream: the limit', via: 'direct' },
  { name: 'http-proxy', description: 'Fastify + @fastify/http-proxy', via: 'http-proxy' },
  { name: 'sssonector', description: 'Fastify + fastify-sssonector', via: 'sssonector' }
]

/** What one upstream child does with each request (see upstream.ts). */
export type UpstreamBehaviour =
  | { kind: 'ok', bodyBytes: number }

export interface RequestSpec {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  path: string
  headers?: Record<string, string>
  body?: string
}

export interface Scenario {
  name: string
  description: string
  /** one upstream child process per entry; each one is a target */
  upstreams: UpstreamBehaviour[]
  /** the route prefix both gateways proxy */
  prefix: string
  request: RequestSpec
  /** the arms this scenario runs, in this order within each round */
  arms: string[]
  /** ratios are printed as `compare / baseline` */
  baseline: string
  compare: string
}

export const scenarios: readonly Scenario[] = [
  {
    name: 'baseline',
    description: 'one healthy keep-alive target, GET with a ~100-byte answer',
    upstreams: [{ kind: 'ok', bodyBytes: 100 }],
    prefix: '/',
    request: { method: 'GET', path: '/hello' },
    arms: ['direct', 'http-proxy', 'sssonector'],
    baseline: 'http-proxy',
    compare: 'sssonector'
  }
]

/** The config a gateway child gets as its argv[2], in JSON. */
export interface GatewayConfig {
  kind: GatewayKind
  targets: string[]
  prefix: string
}

/** The config an upstream child gets as its argv[2], in JSON. */
export interface UpstreamConfig {
  behaviour: UpstreamBehaviour
  keepAliveTimeout: number
}

// Messages between the chaos runner and its children (the upstream servers and
// the gateway), over the fork() IPC channel. The upstream servers also write one
// line per request to stdout (see chaos-upstream.ts), so the runner knows which
// request reached which process, even for a process killed with SIGKILL.

/** The fault modes of one upstream process; the runner sends the whole set at each change. */
export interface UpstreamModes {
  /** the listener is closed (connects are refused), the process alive */
  refuse: boolean
  /**
   * sockets destroyed mid-response: `head` after part of the status line and
   * headers, `body` after the headers and half the body
   */
  reset: 'head' | 'body' | null
  /** every answer delayed by a random time in [min, max] ms */
  slow: [number, number] | null
  /** every answer is a 503 */
  burst503: boolean
  /**
   * stray bytes after an answer: each 200 answer written twice, each 204
   * answer followed by body bytes; `same`: in the same write as the answer,
   * `late`: a moment (2-40 ms) later
   */
  stray: 'same' | 'late' | null
}

export const noModes: UpstreamModes = { refuse: false, reset: null, slow: null, burst503: false, stray: null }

export interface UpstreamConfig {
  /** ports to listen on, 0 for any; one server per port, all alike */
  ports: number[]
  /** wait for `{ type: 'listen' }` before listening (a restart then takes milliseconds) */
  standby: boolean
  /** Node's keepAliveTimeout of the servers (ms) */
  keepAliveTimeout: number
  /** seed of the child's own random draws (delays) */
  seed: number
}

export type ToUpstream =
  | { type: 'listen', ports?: number[] }
  | { type: 'modes', seq: number, modes: UpstreamModes }

export type FromUpstream =
  | { type: 'standby' }
  /** `at`: when it listened, ms since the epoch (sub-millisecond, comparable across processes) */
  | { type: 'ready', ports: number[], at: number }
  | { type: 'ack', seq: number }
  /** after SIGTERM: the listeners are closed (the port is free), requests in flight still finishing */
  | { type: 'closed', at: number }
  | { type: 'failed', error: string }

export interface GatewayConfig {
  /** the plugin's options, JSON-safe (upstreams, routes and all) */
  options: Record<string, unknown>
  /** Fastify logger level, or null for no logger */
  log: string | null
}

/** `live`: after the collections, a heap snapshot's too, for `heapLive` (costly; its native memory stays resident, so taken last). */
export type ToGateway = { type: 'sample', seq: number, gc: boolean, live?: boolean }

export interface GatewaySample {
  type: 'sample'
  seq: number
  /** resident set size, V8 heap in use and committed, bytes */
  rss: number
  heapUsed: number
  /** heapUsed after a heap snapshot's collection when asked (`live`), else heapUsed. */
  heapLive: number
  heapTotal: number
  /** memory of C++ objects bound to JS objects, Buffers and ArrayBuffers included (`process.memoryUsage().external`) */
  external: number
  /** the process's active resources by type (`process.getActiveResourcesInfo()`) */
  resources: Record<string, number>
  /** whether global.gc ran before the sample */
  gc: boolean
}

export type FromGateway =
  | { type: 'ready', port: number }
  | { type: 'failed', error: string }
  | GatewaySample

/** Sends a message to the parent, if there still is one. */
export function send (message: FromUpstream | FromGateway): void {
  if (process.send !== undefined && process.connected) process.send(message)
}

/** Reports a start failure to the parent, then exits 1. */
export function failed (err: unknown): void {
  const error = err instanceof Error ? (err.stack ?? err.message) : String(err)
  const exit = (): never => process.exit(1)
  setTimeout(exit, 1000).unref()
  if (process.send !== undefined && process.connected) process.send({ type: 'failed', error }, exit)
  else exit()
}

/** Now, in ms since the epoch, with the sub-millisecond part. */
export function epoch (): number {
  return performance.timeOrigin + performance.now()
}

/** mulberry32: a seeded uniform source in [0, 1). */
export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

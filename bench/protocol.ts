// Messages between the benchmark's parent process and its children (the
// upstream servers and the gateways), sent over the fork() IPC channel.

/** Sent by a child once it listens on 127.0.0.1. */
export interface ReadyMessage {
  type: 'ready'
  port: number
}

/** Sent by a child that could not start; it exits right after. */
export interface FailedMessage {
  type: 'failed'
  error: string
}

/** A child's answer to `{ type: 'usage' }`. */
export interface UsageMessage {
  type: 'usage'
  /** peak resident set size, KiB (`process.resourceUsage().maxRSS`) */
  maxRSS: number
  /** CPU time used so far, microseconds */
  cpuUser: number
  cpuSystem: number
  /** connections accepted so far (servers that count them) */
  connections?: number
  /** requests received so far (servers that count them) */
  requests?: number
  /** connections open now (servers that count them) */
  open?: number
}

/**
 * A child's answer to `{ type: 'memory' }`: what it holds now, after two
 * collections when it runs with --expose-gc. Bytes.
 */
export interface MemoryMessage {
  type: 'memory'
  rss: number
  heapUsed: number
  external: number
  arrayBuffers: number
  /** whether the figures follow a full collection */
  collected: boolean
}

/** Sent by a child started in standby: it waits for `{ type: 'listen' }` before listening. */
export interface StandbyMessage {
  type: 'standby'
}

export type ChildMessage = ReadyMessage | FailedMessage | UsageMessage | StandbyMessage | MemoryMessage

export type ParentMessage = { type: 'usage' } | { type: 'stop' } | { type: 'listen' } | { type: 'memory' }

export function isChildMessage (value: unknown): value is ChildMessage {
  if (typeof value !== 'object' || value === null) return false
  const type = (value as { type?: unknown }).type
  return type === 'ready' || type === 'failed' || type === 'usage' || type === 'standby' || type === 'memory'
}

export function isParentMessage (value: unknown): value is ParentMessage {
  if (typeof value !== 'object' || value === null) return false
  const type = (value as { type?: unknown }).type
  return type === 'usage' || type === 'stop' || type === 'listen' || type === 'memory'
}

/** Sends a message to the parent, if there still is one. */
export function toParent (message: ChildMessage): void {
  if (process.send !== undefined && process.connected) process.send(message)
}

/** The usage numbers of this process, as sent to the parent. */
export function usage (connections?: number, requests?: number, open?: number): UsageMessage {
  const cpu = process.cpuUsage()
  return {
    type: 'usage',
    maxRSS: process.resourceUsage().maxRSS,
    cpuUser: cpu.user,
    cpuSystem: cpu.system,
    ...(connections !== undefined ? { connections } : {}),
    ...(requests !== undefined ? { requests } : {}),
    ...(open !== undefined ? { open } : {})
  }
}

/** What this process holds now; collected twice first when `gc` is exposed (--expose-gc). */
export async function memory (): Promise<MemoryMessage> {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc !== undefined) {
    gc()
    // a turn of the loop between the two, for what the first one's finalizers let go
    await new Promise((resolve) => setImmediate(resolve))
    gc()
  }
  const m = process.memoryUsage()
  return { type: 'memory', rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, collected: gc !== undefined }
}

/** Tells the parent this child is in standby, and resolves on its `listen` message. */
export async function standby (): Promise<void> {
  await new Promise<void>((resolve) => {
    const onMessage = (message: unknown): void => {
      if (!isParentMessage(message) || message.type !== 'listen') return
      process.off('message', onMessage)
      resolve()
    }
    process.on('message', onMessage)
    toParent({ type: 'standby' })
  })
}

/**
 * The common life of a child: reads its JSON config from argv[2], answers
 * usage requests, and exits when told to stop or when the parent goes away
 * (so no child outlives the benchmark, even when the parent is killed).
 */
export interface Started {
  port: number
  close: () => Promise<void>
  /** connections accepted so far, reported with the usage numbers */
  connections?: () => number
  /** requests received so far, reported with the usage numbers */
  requests?: () => number
  /** connections open now, reported with the usage numbers */
  open?: () => number
}

export function childMain<T> (start: (config: T) => Promise<Started>): void {
  let close: (() => Promise<void>) | null = null
  let connections: (() => number) | undefined
  let requests: (() => number) | undefined
  let open: (() => number) | undefined
  let stopping = false

  const stop = (): void => {
    if (stopping) return
    stopping = true
    setTimeout(() => process.exit(0), 2000).unref()
    const done = close === null ? Promise.resolve() : close()
    done.then(() => process.exit(0), () => process.exit(0))
  }

  process.on('disconnect', stop)
  process.on('SIGTERM', stop)
  process.on('message', (message: unknown) => {
    if (!isParentMessage(message)) return
    if (message.type === 'usage') toParent(usage(connections?.(), requests?.(), open?.()))
    else if (message.type === 'memory') memory().then(toParent, () => {})
    else if (message.type === 'stop') stop()
  })

  let config: T
  try {
    config = JSON.parse(process.argv[2] ?? '{}') as T
  } catch (err) {
    fail(err)
    return
  }
  start(config).then((started) => {
    close = started.close
    connections = started.connections
    requests = started.requests
    open = started.open
    if (stopping) {
      stopping = false
      stop()
      return
    }
    toParent({ type: 'ready', port: started.port })
  }, fail)
}

function fail (err: unknown): void {
  const error = err instanceof Error ? (err.stack ?? err.message) : String(err)
  const exit = (): never => process.exit(1)
  setTimeout(exit, 1000)
  if (process.send !== undefined && process.connected) process.send({ type: 'failed', error } satisfies FailedMessage, exit)
  else exit()
}

/**
 * Asks a child to stop (a `stop` message over IPC, else SIGTERM) and waits for
 * its exit; past `timeout` ms it is killed by its PID.
 */
export async function stopProcess (cp: import('node:child_process').ChildProcess, timeout: number): Promise<void> {
  const exited = new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      cp.kill('SIGKILL')
      resolve()
    }, timeout)
    cp.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
  })
  if (cp.connected) cp.send({ type: 'stop' }, () => {})
  else cp.kill('SIGTERM')
  await exited
}

/** An integer from the environment variable `name`, `fallback` when it is unset or blank; a value outside [min, max] throws, naming it. */
export function intFromEnv (name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name}: ${JSON.stringify(raw)} is not an integer from ${min} to ${max}`)
  return n
}

/**
 * The child processes of a bench run (add each one started), killed by their
 * PIDs when the run exits, or on SIGINT/SIGTERM (after `before`, with a line
 * naming `label`, then exit 130).
 */
export function childrenKilledOnExit (label: string, before: () => void = () => {}): { children: Set<import('node:child_process').ChildProcess>, killChildren: () => void } {
  const children = new Set<import('node:child_process').ChildProcess>()
  const killChildren = (): void => {
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
  }
  process.on('exit', killChildren)
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${label}: ${signal}, stopping\n`)
      before()
      killChildren()
      process.exit(130)
    })
  }
  return { children, killChildren }
}

// The load of `npm run bench:ws`, run in its own process by ws.ts (so it can
// be given a core, a priority and a file descriptor limit of its own): `ws`
// clients, told what to do over IPC.
//
// - `echo`: opens `tunnels` WebSockets to each of `urls` (two URLs: two
//   gateways loaded at once, side by side), then each keeps `window` messages
//   of `bytes` bytes in flight (closed loop: a message is sent when an echo
//   comes back), binary; after `warmup` seconds it counts the echoes for
//   `duration` seconds, checks each echo's length and first and last byte, and
//   closes every tunnel with 1000.
// - `open`: opens `count` WebSockets to `url`, `concurrency` handshakes at a
//   time, and keeps them open and silent.
// - `close`: closes the ones `open` opened, and answers once each is closed.
// - `stop`: exits.
import { WebSocket } from 'ws'

export type ClientCommand =
  | { type: 'echo', urls: string[], tunnels: number, bytes: number, window: number, warmup: number, duration: number }
  | { type: 'open', url: string, count: number, concurrency: number }
  | { type: 'close' }

/** What one URL's tunnels did. */
export interface EchoGroup {
  url: string
  /** echoes counted in the measured window */
  messages: number
  /** echoes from the first message to the last, warm-up included */
  total: number
  /** round trip of a message, ms: median and 99th percentile of the measured window */
  p50: number
  p99: number
  /** echoes of the wrong length or content, closes before the end */
  errors: number
  firstError: string | null
}

export interface EchoResult {
  type: 'echo'
  /** the measured window, s */
  seconds: number
  /** one per URL, in order */
  groups: EchoGroup[]
}

interface Group extends Omit<EchoGroup, 'p50' | 'p99'> {
  sockets: WebSocket[]
  rtts: Float64Array
  n: number
}

export interface OpenResult {
  type: 'open'
  opened: number
  failed: number
  firstError: string | null
  seconds: number
}

export type ClientAnswer = EchoResult | OpenResult | { type: 'closed', count: number } | { type: 'error', error: string } | { type: 'ready' }

const OPTIONS = { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 }
/** a handshake that takes longer than this fails */
const HANDSHAKE_TIMEOUT = 15_000

function reply (answer: ClientAnswer): void {
  if (process.send !== undefined && process.connected) process.send(answer)
}

function describe (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

async function connect (url: string): Promise<WebSocket> {
  const ws = new WebSocket(url, { ...OPTIONS, handshakeTimeout: HANDSHAKE_TIMEOUT })
  return await new Promise<WebSocket>((resolve, reject) => {
    ws.once('open', () => {
      ws.off('error', reject)
      ws.on('error', () => {})
      resolve(ws)
    })
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => {
      reject(new Error(`handshake answered ${String(res.statusCode)}`))
      ws.terminate()
    })
  })
}

async function closeAll (sockets: WebSocket[]): Promise<void> {
  await Promise.all(sockets.map(async (ws) => {
    if (ws.readyState === WebSocket.CLOSED) return
    await new Promise<void>((resolve) => {
      ws.once('close', () => resolve())
      // a peer that does not answer the close is cut after 5 s
      const timer = setTimeout(() => ws.terminate(), 5000)
      ws.once('close', () => clearTimeout(timer))
      if (ws.readyState === WebSocket.OPEN) ws.close(1000)
      else ws.terminate()
    })
  }))
}

function percentile (sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

async function echo (cmd: Extract<ClientCommand, { type: 'echo' }>): Promise<EchoResult> {
  const groups: Group[] = []
  try {
    for (const url of cmd.urls) {
      const sockets: WebSocket[] = []
      groups.push({ url, sockets, messages: 0, total: 0, rtts: new Float64Array(1 << 16), n: 0, errors: 0, firstError: null })
      for (let i = 0; i < cmd.tunnels; i++) sockets.push(await connect(url))
    }
  } catch (err) {
    await closeAll(groups.flatMap((g) => g.sockets))
    throw err
  }
  let counting = false
  let sending = true
  let inFlight = 0
  let drained: (() => void) | null = null
  /** each tunnel's send, by group */
  const senders: Array<Array<() => void>> = []
  for (const g of groups) {
    const mine: Array<() => void> = []
    senders.push(mine)
    const fail = (why: string): void => {
      g.errors++
      g.firstError ??= why
    }
    for (const [i, ws] of g.sockets.entries()) {
      // every tunnel's messages start with its own byte, so an echo on the wrong tunnel shows
      const payload = Buffer.alloc(cmd.bytes, i % 251)
      // send times of the messages in flight, oldest first
      const sent: number[] = []
      const send = (): void => {
        sent.push(performance.now())
        inFlight++
        ws.send(payload, { binary: true })
      }
      mine.push(send)
      ws.on('message', (data: Buffer) => {
        const at = sent.shift()
        inFlight--
        g.total++
        if (data.length !== cmd.bytes || data[0] !== payload[0] || data[data.length - 1] !== payload[0]) fail(`tunnel ${i}: an echo of ${data.length} bytes, not the ${cmd.bytes} sent`)
        if (counting) {
          g.messages++
          if (at !== undefined) {
            if (g.n === g.rtts.length) {
              const bigger = new Float64Array(g.rtts.length * 2)
              bigger.set(g.rtts)
              g.rtts = bigger
            }
            g.rtts[g.n++] = performance.now() - at
          }
        }
        if (sending) send()
        else if (inFlight === 0) drained?.()
      })
      ws.on('close', (code) => { if (sending) fail(`tunnel ${i} closed (${code}) during the run`) })
    }
  }
  // the first messages go out on every group's tunnels in turn
  for (let k = 0; k < cmd.window; k++) {
    for (let i = 0; i < cmd.tunnels; i++) {
      for (const mine of senders) mine[i]!()
    }
  }
  await new Promise((resolve) => setTimeout(resolve, cmd.warmup * 1000))
  counting = true
  const started = performance.now()
  await new Promise((resolve) => setTimeout(resolve, cmd.duration * 1000))
  const seconds = (performance.now() - started) / 1000
  counting = false
  sending = false
  // the echoes still in flight come back before the tunnels close (2 s at most)
  if (inFlight > 0) {
    await new Promise<void>((resolve) => {
      drained = resolve
      setTimeout(resolve, 2000)
    })
  }
  await closeAll(groups.flatMap((g) => g.sockets))
  return {
    type: 'echo',
    seconds,
    groups: groups.map((g) => {
      const sorted = g.rtts.subarray(0, g.n).sort()
      return { url: g.url, messages: g.messages, total: g.total, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), errors: g.errors, firstError: g.firstError }
    })
  }
}

const idle = new Set<WebSocket>()

async function open (cmd: Extract<ClientCommand, { type: 'open' }>): Promise<OpenResult> {
  const started = performance.now()
  let next = 0
  let failed = 0
  let firstError: string | null = null
  await Promise.all(Array.from({ length: Math.min(cmd.concurrency, cmd.count) }, async () => {
    while (next < cmd.count) {
      next++
      try {
        const ws = await connect(cmd.url)
        ws.on('close', () => { idle.delete(ws) })
        idle.add(ws)
      } catch (err) {
        failed++
        firstError ??= describe(err)
      }
    }
  }))
  return { type: 'open', opened: cmd.count - failed, failed, firstError, seconds: (performance.now() - started) / 1000 }
}

async function handle (cmd: ClientCommand): Promise<ClientAnswer> {
  switch (cmd.type) {
    case 'echo': return await echo(cmd)
    case 'open': return await open(cmd)
    case 'close': {
      const count = idle.size
      await closeAll([...idle])
      return { type: 'closed', count }
    }
  }
}

process.on('disconnect', () => process.exit(0))
process.on('message', (cmd: ClientCommand | { type: 'stop' }) => {
  if (cmd.type === 'stop') {
    // the tunnels go with the process
    process.exit(0)
  }
  handle(cmd).then(reply, (err: unknown) => reply({ type: 'error', error: describe(err) }))
})
reply({ type: 'ready' })

// The load of `npm run bench:h2`, run in its own process by h2.ts (so its
// cost stays apart from the gateway's and the upstreams'), told what to do
// over IPC, one command at a time. Both loads are closed loops: `concurrency`
// workers, each sending a request (a call) and waiting for its answer before
// the next; after `warmup` seconds the answers that end within the next
// `duration` seconds are counted and timed (from the request's start to its
// answer's end, ms).
// - `http`: GET `path` of `origin` over HTTP/1.1, an undici Pool of
//   `concurrency` keep-alive connections (pipelining 1); an answer counts when
//   it is a 200 of `bodyBytes` bytes.
// - `grpc`: unary Echo calls (test/fixtures/echo.proto) to `address` with
//   @grpc/grpc-js (one channel, its calls multiplexed on one HTTP/2
//   connection); a call counts when it echoes its text.
// - `stop`: exits (so does losing the parent).
import { fileURLToPath } from 'node:url'
import { Pool } from 'undici'

export type ClientCommand =
  | { type: 'http', origin: string, path: string, bodyBytes: number, concurrency: number, warmup: number, duration: number }
  | { type: 'grpc', address: string, concurrency: number, warmup: number, duration: number }

export interface LoadResult {
  type: 'result'
  /** the measured window, s */
  seconds: number
  /** good answers that ended in the measured window */
  answers: number
  /** good answers from the first request to the last, warm-up included */
  total: number
  /** latency of the measured window's good answers, ms */
  p50: number
  p99: number
  /** failed requests and wrong answers, warm-up included */
  errors: number
  firstError: string | null
  /** this process's CPU time (user + system) over the whole run, µs */
  cpu: number
}

export type ClientAnswer = LoadResult | { type: 'error', error: string } | { type: 'ready' }

/** The Echo service's proto file, where this file's source tree keeps it. */
const ECHO_PROTO = fileURLToPath(new URL('../../test/fixtures/echo.proto', import.meta.url))
/** one request (call) that takes longer than this fails */
const REQUEST_TIMEOUT = 10_000
/** a worker whose request failed waits this long before its next one, so a refused port is not a busy loop */
const ERROR_PAUSE = 10

function reply (answer: ClientAnswer): void {
  if (process.send !== undefined && process.connected) process.send(answer)
}

function describe (err: unknown): string {
  const text = err instanceof Error ? `${(err as { code?: string }).code ?? err.name}: ${err.message}` : String(err)
  return text.split('\n')[0] ?? text
}

/** Nearest-rank percentile of sorted values. */
function percentile (sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.ceil((p / 100) * sorted.length - 1e-9)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/**
 * Runs `concurrency` workers calling `once` until the window closes; `once`
 * resolves with null for a good answer, else with what was wrong.
 */
async function closedLoop (concurrency: number, warmup: number, duration: number, once: () => Promise<string | null>): Promise<LoadResult> {
  let latencies = new Float64Array(1 << 16)
  let n = 0
  let total = 0
  let errors = 0
  let firstError: string | null = null
  const cpu = process.cpuUsage()
  const start = performance.now()
  const from = start + warmup * 1000
  const until = from + duration * 1000
  const worker = async (): Promise<void> => {
    while (performance.now() < until) {
      const t0 = performance.now()
      let wrong: string | null
      try {
        wrong = await once()
      } catch (err) {
        wrong = describe(err)
      }
      const t1 = performance.now()
      if (wrong !== null) {
        errors++
        firstError ??= wrong
        await sleep(ERROR_PAUSE)
        continue
      }
      total++
      if (t1 >= from && t1 <= until) {
        if (n === latencies.length) {
          const bigger = new Float64Array(latencies.length * 2)
          bigger.set(latencies)
          latencies = bigger
        }
        latencies[n++] = t1 - t0
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const used = process.cpuUsage(cpu)
  const sorted = latencies.subarray(0, n).sort()
  return { type: 'result', seconds: duration, answers: n, total, p50: percentile(sorted, 50), p99: percentile(sorted, 99), errors, firstError, cpu: used.user + used.system }
}

async function http (cmd: Extract<ClientCommand, { type: 'http' }>): Promise<LoadResult> {
  const pool = new Pool(cmd.origin, { connections: cmd.concurrency, pipelining: 1, headersTimeout: REQUEST_TIMEOUT, bodyTimeout: REQUEST_TIMEOUT })
  try {
    return await closedLoop(cmd.concurrency, cmd.warmup, cmd.duration, async () => {
      const res = await pool.request({ method: 'GET', path: cmd.path })
      const body = Buffer.from(await res.body.arrayBuffer())
      if (res.statusCode !== 200) return `status ${res.statusCode}: ${body.toString('utf8', 0, 200)}`
      if (body.length !== cmd.bodyBytes) return `a body of ${body.length} bytes, not ${cmd.bodyBytes}`
      return null
    })
  } finally {
    await pool.destroy().catch(() => {})
  }
}

interface EchoClient {
  Unary: (req: { text: string }, opts: { deadline: number }, cb: (err: Error | null, res?: { text: string }) => void) => unknown
  close: () => void
}

async function grpcLoad (cmd: Extract<ClientCommand, { type: 'grpc' }>): Promise<LoadResult> {
  const { default: grpc } = await import('@grpc/grpc-js')
  const { default: protoLoader } = await import('@grpc/proto-loader')
  const def = protoLoader.loadSync([ECHO_PROTO], { keepCase: true, defaults: true })
  const proto = grpc.loadPackageDefinition(def) as unknown as { echo: { Echo: new (address: string, creds: unknown) => EchoClient } }
  const client = new proto.echo.Echo(cmd.address, grpc.credentials.createInsecure())
  let i = 0
  try {
    return await closedLoop(cmd.concurrency, cmd.warmup, cmd.duration, async () => {
      const text = `hello ${i++ % 1000}`
      return await new Promise<string | null>((resolve) => {
        client.Unary({ text }, { deadline: Date.now() + REQUEST_TIMEOUT }, (err, res) => {
          if (err !== null) resolve(`${(err as { code?: number }).code ?? '?'} ${(err as { details?: string }).details ?? err.message}`)
          else resolve(res?.text === text ? null : `echoed ${JSON.stringify(res?.text)}, not ${JSON.stringify(text)}`)
        })
      })
    })
  } finally {
    client.close()
  }
}

async function handle (cmd: ClientCommand): Promise<ClientAnswer> {
  switch (cmd.type) {
    case 'http': return await http(cmd)
    case 'grpc': return await grpcLoad(cmd)
  }
}

process.on('disconnect', () => process.exit(0))
process.on('message', (cmd: ClientCommand | { type: 'stop' }) => {
  if (cmd.type === 'stop') process.exit(0)
  handle(cmd).then(reply, (err: unknown) => reply({ type: 'error', error: describe(err) }))
})
reply({ type: 'ready' })

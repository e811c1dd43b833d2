// The cost of a proxied request in CPU instructions, counted by valgrind's
// callgrind: plain @fastify/http-proxy against this plugin, each gateway the
// same bench/gateway.js child as in `npm run bench`. Instruction counts do
// not move with the machine's load or clock the way req/s does, so this is
// the like-for-like overhead without the noise of a shared machine.
//
// Each arm runs twice under callgrind: once serving W + N requests, then once
// serving W and staying idle as long as the N took; the difference over N is
// the cost of one request on a warm gateway. Start, warm-up, shutdown and the
// work timers do by the second (under valgrind a second is a hundred times
// fewer requests) cancel out. Runs go two at a time. Loopback only.
//
//   npm run bench:cost
//   COST_REQUESTS=4000 COST_WARMUP=2000 npm run bench:cost
//
// Environment: COST_REQUESTS (N, 4000), COST_WARMUP (W, 4000),
// COST_CONNECTIONS (8), COST_BODY (bytes: POSTs with a body that large, 0: GETs),
// COST_ANSWER (bytes of each answer, 100), COST_ARMS (http-proxy,sssonector; also
// http-proxy-balanced,sssonector-balanced, and bare, bare-balanced: the bare
// Node proxy of bench/bare.ts), COST_KEEP (1: keep the callgrind
// files, for callgrind_annotate).
import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import http from 'node:http'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Pool } from 'undici'
import { intFromEnv, isChildMessage } from './protocol.js'
import { table } from './report.js'
import type { GatewayConfig, GatewayKind } from './scenarios.js'

const HOST = '127.0.0.1'
/** one valgrind run, start to exit, at most */
const RUN_TIMEOUT = 20 * 60_000

interface CostArm { name: string, kind: GatewayKind, targets: 1 | 3 }

const ARMS: CostArm[] = [
  { name: 'http-proxy', kind: 'http-proxy', targets: 1 },
  { name: 'sssonector', kind: 'sssonector', targets: 1 },
  { name: 'http-proxy-balanced', kind: 'http-proxy', targets: 3 },
  { name: 'sssonector-balanced', kind: 'sssonector', targets: 3 },
  { name: 'bare', kind: 'bare', targets: 1 },
  { name: 'bare-balanced', kind: 'bare', targets: 3 }
]

const children = new Set<ChildProcess>()
process.on('exit', () => { for (const c of children) c.kill('SIGKILL') })

/** Upstreams in this process: plain node:http, the same ~100-byte answer as the bench's. */
async function startUpstreams (n: number, answerBytes: number): Promise<{ targets: string[], close: () => Promise<void> }> {
  const body = Buffer.from('{"ok":true,"pad":"'.padEnd(Math.max(answerBytes - 2, 18), 'x') + '"}')
  const headers = { 'content-type': 'application/json', 'content-length': String(body.length) }
  const servers: http.Server[] = []
  for (let i = 0; i < n; i++) {
    const server = http.createServer((req, res) => {
      req.resume()
      req.once('end', () => {
        res.writeHead(200, headers)
        res.end(body)
      })
    })
    server.keepAliveTimeout = 65_000
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve))
    servers.push(server)
  }
  return {
    targets: servers.map((s) => `http://${HOST}:${(s.address() as AddressInfo).port}`),
    close: async () => {
      await Promise.all(servers.map(async (s) => {
        s.closeAllConnections()
        await new Promise<void>((resolve) => s.close(() => resolve()))
      }))
    }
  }
}

interface Counted {
  /** every thread */
  instructions: number
  /** the main thread: the event loop, where a gateway's throughput is decided */
  main: number
  /** how long the requests after the first `warm` took, ms */
  measuredMs: number
}

/**
 * Runs one gateway under callgrind: sends it `warm` requests, then `more`
 * (timed), then waits `idleMs`, then stops it; its instruction count.
 */
async function countRun (config: GatewayConfig, warm: number, more: number, idleMs: number, connections: number, body: Buffer | null, dir: string, label: string): Promise<Counted> {
  const script = fileURLToPath(new URL('./gateway.js', import.meta.url))
  const out = path.join(dir, `${label}.callgrind`)
  const cp = spawn('valgrind', ['--tool=callgrind', '--separate-threads=yes', `--callgrind-out-file=${out}`, process.execPath, script, JSON.stringify(config)], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc']
  })
  children.add(cp)
  let stderr = ''
  cp.stderr!.setEncoding('utf8')
  cp.stderr!.on('data', (d: string) => { stderr += d })
  const exited = new Promise<number | null>((resolve) => cp.once('exit', (code) => resolve(code)))
  const timer = setTimeout(() => cp.kill('SIGKILL'), RUN_TIMEOUT)
  try {
    const port = await new Promise<number>((resolve, reject) => {
      cp.on('message', (m: unknown) => {
        if (!isChildMessage(m)) return
        if (m.type === 'ready') resolve(m.port)
        else if (m.type === 'failed') reject(new Error(m.error))
      })
      exited.then((code) => reject(new Error(`${label}: valgrind exited (${String(code)}) before the gateway listened\n${stderr.slice(-2000)}`)), () => {})
    })
    const pool = new Pool(`http://${HOST}:${port}`, { connections, pipelining: 1 })
    let failed = 0
    const send = async (requests: number): Promise<void> => {
      let sent = 0
      await Promise.all(Array.from({ length: connections }, async () => {
        while (sent < requests) {
          sent++
          const res = body === null
            ? await pool.request({ path: '/hello', method: 'GET' })
            : await pool.request({ path: '/upload', method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body })
          await res.body.dump()
          if (res.statusCode !== 200) failed++
        }
      }))
    }
    await send(warm)
    const started = performance.now()
    if (more > 0) await send(more)
    const measuredMs = performance.now() - started
    if (idleMs > 0) await new Promise((resolve) => setTimeout(resolve, idleMs))
    await pool.close()
    if (failed > 0) throw new Error(`${label}: ${failed} of ${warm + more} requests did not get 200`)
    cp.send({ type: 'stop' }, () => {})
    const code = await exited
    const m = /Collected\s*:\s*(\d+)/.exec(stderr)
    if (code !== 0 || m === null) throw new Error(`${label}: valgrind exited with ${String(code)} and no count\n${stderr.slice(-2000)}`)
    // one file per thread, the main thread's first (-01)
    const main = /^summary:\s*(\d+)/m.exec(await readFile(`${out}-01`, 'utf8'))
    if (main === null) throw new Error(`${label}: no summary in ${out}-01`)
    return { instructions: Number(m[1]), main: Number(main[1]), measuredMs }
  } finally {
    clearTimeout(timer)
    if (cp.exitCode === null && cp.signalCode === null) cp.kill('SIGKILL')
    children.delete(cp)
  }
}

async function main (): Promise<number> {
  if (spawnSync('valgrind', ['--version']).status !== 0) {
    console.error('bench:cost needs valgrind (Debian: apt-get install valgrind)')
    return 1
  }
  const measured = intFromEnv('COST_REQUESTS', 4000, 100, 1_000_000)
  const warmup = intFromEnv('COST_WARMUP', 4000, 100, 1_000_000)
  const connections = intFromEnv('COST_CONNECTIONS', 8, 1, 256)
  const bodyBytes = intFromEnv('COST_BODY', 0, 0, 16 * 1024 * 1024)
  const answerBytes = intFromEnv('COST_ANSWER', 100, 20, 64 * 1024 * 1024)
  const body = bodyBytes === 0 ? null : Buffer.alloc(bodyBytes, 'x')
  const names = (process.env.COST_ARMS ?? 'http-proxy,sssonector').split(',').map((s) => s.trim()).filter((s) => s !== '')
  const arms = names.map((name) => {
    const arm = ARMS.find((a) => a.name === name)
    if (arm === undefined) throw new Error(`COST_ARMS: ${JSON.stringify(name)} is not one of ${ARMS.map((a) => a.name).join(', ')}`)
    return arm
  })

  console.log(`node ${process.version}, ${os.availableParallelism()} cores; callgrind, ${warmup} + ${measured} requests per arm over ${connections} connections, ${body === null ? 'GET' : `POST with a ${bodyBytes}-byte body`}, a ${answerBytes}-byte answer`)
  const upstreams = await startUpstreams(3, answerBytes)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'sssonector-cost-'))
  try {
    const parallel = Math.max(1, Math.min(2, os.availableParallelism()))
    const results = new Map<string, { full: Counted, idle: Counted }>()
    let next = 0
    await Promise.all(Array.from({ length: parallel }, async () => {
      while (next < arms.length) {
        const arm = arms[next++]!
        const config: GatewayConfig = { kind: arm.kind, targets: upstreams.targets.slice(0, arm.targets), prefix: '/' }
        let started = performance.now()
        const full = await countRun(config, warmup, measured, 0, connections, body, dir, `${arm.name}-full`)
        console.log(`${arm.name}, ${warmup} + ${measured} requests: ${full.instructions.toLocaleString('en-US')} instructions (${((performance.now() - started) / 1000).toFixed(0)} s, the last ${measured} in ${(full.measuredMs / 1000).toFixed(1)} s)`)
        started = performance.now()
        const idle = await countRun(config, warmup, 0, full.measuredMs, connections, body, dir, `${arm.name}-idle`)
        console.log(`${arm.name}, ${warmup} requests and ${(full.measuredMs / 1000).toFixed(1)} s idle: ${idle.instructions.toLocaleString('en-US')} instructions (${((performance.now() - started) / 1000).toFixed(0)} s)`)
        results.set(arm.name, { full, idle })
      }
    }))
    const perRequest = (arm: CostArm, which: 'main' | 'instructions'): number => {
      const r = results.get(arm.name)!
      return (r.full[which] - r.idle[which]) / measured
    }
    const plainOf = (arm: CostArm): CostArm | undefined => ARMS.find((a) => a.kind === 'http-proxy' && a.targets === arm.targets && arms.includes(a))
    const versus = (arm: CostArm, which: 'main' | 'instructions'): string => {
      const plain = plainOf(arm)
      return plain === undefined || plain === arm ? '-' : `x${(perRequest(arm, which) / perRequest(plain, which)).toFixed(3)}`
    }
    console.log('')
    console.log(table([
      ['arm', 'main thread per request', 'vs plain http-proxy', 'all threads per request', 'vs plain http-proxy'],
      ...arms.map((arm) => [
        arm.name,
        Math.round(perRequest(arm, 'main')).toLocaleString('en-US'),
        versus(arm, 'main'),
        Math.round(perRequest(arm, 'instructions')).toLocaleString('en-US'),
        versus(arm, 'instructions')
      ])
    ]))
    console.log(`(instructions per request: the difference of the two runs over ${measured} requests. The main thread runs the event loop and bounds a gateway's throughput; all threads add the JIT compiler's and the GC's helpers, which run on other cores)`)
  } finally {
    await upstreams.close()
    if (process.env.COST_KEEP === '1') console.log(`callgrind files kept in ${dir} (callgrind_annotate reads them)`)
    else await rm(dir, { recursive: true, force: true })
  }
  return 0
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  console.error(`bench:cost: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  process.exitCode = 1
})

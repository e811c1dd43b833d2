// `npm run soak`: load through the gateway for SOAK_DURATION seconds (default 600)
// while one of three targets at a time is killed and started again every
// SOAK_CHAOS seconds (default 5). Prints, each SOAK_REPORT seconds (default 60),
// the requests, the failures by kind and the gateway's RSS. Loopback only; it
// stops by itself. Exits 1 if any GET failed (a target was always healthy).
import http from 'node:http'
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { AddressInfo } from 'node:net'
import { readFileSync } from 'node:fs'
import { Agent, request } from 'undici'

const DURATION = Number(process.env.SOAK_DURATION ?? 600) * 1000
const CHAOS = Number(process.env.SOAK_CHAOS ?? 5) * 1000
const REPORT = Number(process.env.SOAK_REPORT ?? 60) * 1000
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY ?? 20)

function rssMiB (pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? 0 : Number(m[1]) / 1024
}

async function gatewayChild (): Promise<void> {
  const { default: Fastify } = await import('fastify')
  const { default: sssonectorPool } = await import('../lib/index.js')
  const targets = process.argv.slice(3)
  // SOAK_LOG=warn shows each failed last attempt and each target leaving rotation.
  const app = Fastify({ logger: process.env.SOAK_LOG === undefined ? false : { level: process.env.SOAK_LOG } })
  await app.register(sssonectorPool, {
    upstreams: { soak: { targets, healthCheck: { path: '/health', interval: '1s', timeout: '500ms' } } },
    routes: [{ prefix: '/', upstream: 'soak' }],
    metrics: false,
    gracefulClose: false
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  process.send!({ port: (app.server.address() as AddressInfo).port })
  process.on('disconnect', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}

class Target {
  server: http.Server | null = null
  port = 0
  async start (): Promise<void> {
    const server = http.createServer({ keepAliveTimeout: 65_000 }, (_req, res) => res.end('x'.repeat(100)))
    server.listen(this.port, '127.0.0.1')
    await once(server, 'listening')
    this.port = (server.address() as AddressInfo).port
    this.server = server
  }

  async kill (): Promise<void> {
    const s = this.server
    this.server = null
    if (s === null) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
  }
}

async function main (): Promise<void> {
  const targets = [new Target(), new Target(), new Target()]
  for (const t of targets) await t.start()
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['gateway', ...targets.map((t) => `http://127.0.0.1:${t.port}`)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const stop = (): void => { if (child.connected) child.disconnect() }
  process.on('SIGINT', () => { stop(); process.exit(130) })
  const [{ port }] = await once(child, 'message') as [{ port: number }]
  const url = `http://127.0.0.1:${port}/soak`
  const agent = new Agent({ connections: CONCURRENCY })
  const started = Date.now()
  const end = started + DURATION
  let requests = 0
  let total = 0
  const failures = new Map<string, number>()
  const rss: number[] = [rssMiB(child.pid!)]
  let down: Target | null = null
  let kills = 0

  const chaos = setInterval(() => {
    const prev = down
    down = targets[Math.floor(Math.random() * targets.length)]
    const next = down
    const swap = async (): Promise<void> => {
      if (prev !== null && prev !== next) await prev.start()
      if (prev !== next) {
        await next.kill()
        kills++
      }
    }
    swap().catch((err: Error) => { console.error('chaos:', err.message) })
  }, CHAOS)

  const report = setInterval(() => {
    const r = rssMiB(child.pid!)
    rss.push(r)
    const fails = [...failures].map(([k, v]) => `${k} ${v}`).join(', ') || 'none'
    console.log(`${Math.round((Date.now() - started) / 1000)}s: ${requests} requests this period (${total} in all), failures: ${fails}, gateway RSS ${r.toFixed(1)} MiB, kills so far ${kills}`)
    requests = 0
  }, REPORT)

  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (Date.now() < end) {
      try {
        const res = await request(url, { dispatcher: agent })
        if (res.statusCode !== 200) {
          const body = await res.body.text()
          const code = /"code":"([A-Z_]+)"/.exec(body)?.[1] ?? 'no code'
          const kind = `${res.statusCode} ${code}`
          failures.set(kind, (failures.get(kind) ?? 0) + 1)
        } else {
          await res.body.dump()
        }
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'error'
        failures.set(code, (failures.get(code) ?? 0) + 1)
      }
      requests++
      total++
    }
  }))
  clearInterval(chaos)
  clearInterval(report)
  const finalRss = rssMiB(child.pid!)
  rss.push(finalRss)
  const failed = [...failures.values()].reduce((a, b) => a + b, 0)
  console.log(`done: ${total} GETs in ${DURATION / 1000}s, ${kills} target kills, ${failed} failed; gateway RSS from ${rss[0].toFixed(1)} to ${finalRss.toFixed(1)} MiB (max ${Math.max(...rss).toFixed(1)})`)
  await agent.close()
  stop()
  await once(child, 'exit')
  for (const t of targets) await t.kill()
  process.exit(failed === 0 ? 0 : 1)
}

if (process.argv[2] === 'gateway') await gatewayChild()
else await main()

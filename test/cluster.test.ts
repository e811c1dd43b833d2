import t from 'tap'
import type { Test } from 'tap'
import { spawn } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { refusedPort, startUpstream } from './helpers/servers.js'
import { scrape, value } from './helpers/scrape.js'

const example = fileURLToPath(new URL('../dist/examples/cluster.js', import.meta.url))
const skip = existsSync(example) ? false : 'dist/ not built: run npm run build'

type Line = Record<string, unknown> & { pid: number, msg: string }

/** Whether a process with this PID is still there. */
function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

interface Cluster {
  lines: Line[]
  /** The first line the predicate holds for, as soon as it is written. */
  line: (predicate: (l: Line) => boolean) => Promise<Line>
  /** The primary's line saying where its metrics are, and the workers' PIDs. */
  primary: Line
  workers: number[]
  /** The gateway's URL (the port the workers share). */
  gateway: string
  /** SIGTERM to the primary; its exit code. */
  stop: () => Promise<number | null>
}

/** Starts examples/cluster.ts with `env`; every process is killed by its PID at teardown unless stopped cleanly. */
async function startCluster (t: Test, env: Record<string, string>): Promise<Cluster> {
  const child = spawn(process.execPath, [example], {
    env: { ...process.env, WORKERS: '2', HOST: '127.0.0.1', PORT: '0', METRICS_PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>
  const workers: number[] = []
  let stopped = false
  t.teardown(async () => {
    if (stopped) return
    // The test failed before the clean stop: every process, by its PID.
    for (const pid of workers) if (alive(pid)) process.kill(pid, 'SIGKILL')
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  const lines: Line[] = []
  const events = new EventEmitter()
  createInterface({ input: child.stdout! }).on('line', (text) => {
    try {
      lines.push(JSON.parse(text) as Line)
      events.emit('line')
    } catch {} // not a log line
  })
  async function line (predicate: (l: Line) => boolean): Promise<Line> {
    for (;;) {
      const found = lines.find(predicate)
      if (found !== undefined) return found
      await Promise.race([once(events, 'line'), exited.then(([code, signal]) => { throw new Error(`the cluster exited (${code ?? signal}) before: ${JSON.stringify(lines)}`) })])
    }
  }
  const primary = await line((l) => typeof l.metrics === 'string')
  workers.push(...(primary.workers as number[]))
  let gateway = ''
  for (const pid of workers) gateway = (await line((l) => l.pid === pid && /^Server listening at/.test(l.msg))).msg.replace('Server listening at ', '')
  return {
    lines,
    line,
    primary,
    workers,
    gateway,
    async stop () {
      child.kill('SIGTERM')
      const [code] = await exited
      stopped = true
      return code
    }
  }
}

t.test('examples/cluster.ts: the primary serves every worker\'s metrics, states kept 0 or 1, counters summed', { skip }, async (t) => {
  const live = await startUpstream(t)
  const deadA = `http://127.0.0.1:${await refusedPort()}`
  const deadB = `http://127.0.0.1:${await refusedPort()}`
  const { lines, line, primary, workers, gateway, stop } = await startCluster(t, { TARGETS: [live.url, deadA, deadB].join(','), HEALTH_PATH: '/health' })
  t.type(primary.metrics, 'string', 'the primary says where its metrics are')
  t.equal(workers.length, 2, 'two workers')

  // Requests on connections of their own, until each worker has served two (the primary hands connections round).
  const agent = new Agent()
  t.teardown(() => agent.close())
  const served = (pid: number): number => lines.filter((l) => l.pid === pid && l.msg === 'request completed').length
  let sent = 0
  while (sent < 40 && !workers.every((pid) => served(pid) >= 2)) {
    const res = await request(`${gateway}/api/x`, { dispatcher: agent, reset: true })
    await res.body.dump()
    if (res.statusCode !== 200) throw new Error(`the gateway answered ${res.statusCode}`)
    sent++
    await line((l) => l.msg === 'request completed' && lines.filter((m) => m.msg === 'request completed').length >= sent)
  }
  for (const pid of workers) t.ok(served(pid) >= 2, `worker ${pid} served ${served(pid)} of ${sent} requests`)

  const text = await scrape(primary.metrics as string)
  const upstream = { upstream: 'api' }
  // Both workers are in panic (one target healthy of three): the merged state is 1, not 2.
  t.equal(value(text, 'sssonector_upstream_panic', upstream), 1, 'panic: 1 (each worker is in panic)')
  t.equal(value(text, 'sssonector_target_healthy', { ...upstream, target: live.url }), 1, 'the live target: healthy 1')
  for (const dead of [deadA, deadB]) {
    t.equal(value(text, 'sssonector_target_healthy', { ...upstream, target: dead }), 0, `${dead}: healthy 0`)
    t.equal(value(text, 'sssonector_target_health_cause', { ...upstream, target: dead, cause: 'active_health' }), 1, `${dead}: active_health 1`)
    t.ok(value(text, 'sssonector_pool_health_check_failures', { ...upstream, target: dead })! >= 2, `${dead}: each worker's failed probes, added up`)
  }
  t.equal(value(text, 'sssonector_circuit_breaker_state', { ...upstream, target: live.url }), 0, 'the live target\'s breaker: closed')
  // Counters add up across the workers: the attempts answered by the live target are every request it saw.
  const proxied = live.seen.filter((r) => r.url !== '/health').length
  t.equal(proxied, sent, 'the live target saw every request')
  t.equal(value(text, 'sssonector_request_duration_seconds_count', { ...upstream, target: live.url, status_class: '2xx' }), proxied, `attempts answered 2xx: ${proxied}, summed over the workers`)
  t.equal(value(text, 'sssonector_upstream_active_requests', upstream), 0)

  // A signal to the primary stops the workers, then the primary.
  t.equal(await stop(), 0, 'the primary exited 0 after its workers')
  for (const pid of workers) t.notOk(alive(pid), `worker ${pid} is gone`)
})

t.test('examples/cluster.ts shares target state through the primary: a target one worker finds dead leaves the other\'s rotation with no request of its own', { skip }, async (t) => {
  const live = await startUpstream(t)
  const victim = await startUpstream(t)
  const { lines, line, primary, workers, gateway, stop } = await startCluster(t, { TARGETS: [live.url, victim.url].join(',') })

  victim.server.closeAllConnections()
  await victim.close()
  // Requests (each on a connection of its own, so the primary hands them round) until one worker takes the victim out.
  const agent = new Agent()
  t.teardown(() => agent.close())
  const out = (l: Line): boolean => l.msg === 'target out of rotation: connect_failed' && l.target === victim.url
  for (let sent = 0; sent < 200 && lines.find(out) === undefined; sent++) {
    const res = await request(`${gateway}/api/x`, { dispatcher: agent, reset: true })
    await res.body.dump()
    t.equal(res.statusCode, 200, 'answered by the live target')
  }
  const first = await line(out)
  // Not another request: the other worker learns it from the first, through the primary.
  const other = workers.find((pid) => pid !== first.pid)!
  const learned = await line((l) => l.pid === other && l.msg === 'target out of rotation: peer' && l.target === victim.url)
  t.match(learned.reason, new RegExp(`/${first.pid}/.*: connect_failed: connect_refused`), 'the other worker took it out on the first one\'s report')
  const lag = (learned.time as number) - (first.time as number)
  t.ok(lag <= 100, `within 100 ms (${lag} ms)`)
  const text = await scrape(primary.metrics as string)
  t.equal(value(text, 'sssonector_target_health_cause', { upstream: 'api', target: victim.url, cause: 'peer' }), 1, 'the merged metrics show the peer cause')
  t.equal(value(text, 'sssonector_shared_state_connected', {}), 1, 'both workers connected to the primary')

  t.equal(await stop(), 0)
})

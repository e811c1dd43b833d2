// Shared target state between gateway replicas, each a process of its own,
// through a real Redis (Debian's redis-server on a loopback port): a target
// killed under load leaves every replica's rotation within 100 ms of the first
// detection, for barely more failed connects than one replica alone pays;
// Redis killed and restarted under load costs no request.
import t from 'tap'
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import type { SharedStats, UpstreamStats } from '../types/index.js'
import { SharedState, MAX_SKEW, PEER_GRACE, VERSION } from '../lib/shared-state.js'
import type { Transport } from '../lib/shared-state.js'
import { noRedis, startRedis } from './helpers/redis.js'
import { registerFails, startUpstream } from './helpers/servers.js'
import type { Teardown, Upstream } from './helpers/servers.js'

const fixture = fileURLToPath(new URL('./fixtures/shared-gateway.mjs', import.meta.url))
const built = existsSync(new URL('../dist/lib/index.js', import.meta.url)) ? false : 'dist/ not built: run npm run build'
const skip = noRedis !== false ? noRedis : built

type Line = Record<string, unknown> & { msg: string, time: number }

interface Replica {
  child: ChildProcess
  url: string
  lines: Line[]
  /** The first log line (already written, or to come) that matches. */
  logged: (match: (l: Line) => boolean) => Promise<Line>
  stats: () => Promise<{ stats: UpstreamStats, shared: SharedStats | null }>
}

async function replica (t: Teardown, cfg: { targets: string[], redis?: string }): Promise<Replica> {
  const child = fork(fixture, [JSON.stringify(cfg)], { execArgv: [], stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    process.kill(child.pid!, 'SIGKILL')
    await exited
  })
  const lines: Line[] = []
  const waiters: Array<{ match: (l: Line) => boolean, resolve: (l: Line) => void }> = []
  let buf = ''
  child.stdout!.on('data', (c: Buffer) => {
    buf += c.toString()
    let i: number
    while ((i = buf.indexOf('\n')) !== -1) {
      const line = JSON.parse(buf.slice(0, i)) as Line
      buf = buf.slice(i + 1)
      lines.push(line)
      for (const w of waiters.filter((x) => x.match(line))) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(line)
      }
    }
  })
  const [{ port }] = await once(child, 'message') as [{ port: number }]
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    lines,
    async logged (match) {
      const seen = lines.find(match)
      if (seen !== undefined) return seen
      return await new Promise<Line>((resolve) => waiters.push({ match, resolve }))
    },
    async stats () {
      const answer = once(child, 'message')
      child.send('stats')
      return (await answer)[0] as { stats: UpstreamStats, shared: SharedStats | null }
    }
  }
}

/** Paced keep-alive load on each replica (a request, then `pace` ms, per loop) until stopped; every answer not 200 is a failure. */
function load (urls: string[], loops = 2, pace = 10): { stop: () => Promise<{ ok: number, failed: string[] }> } {
  const agent = new Agent({ keepAliveTimeout: 30_000 })
  const state = { stopped: false }
  let ok = 0
  const failed: string[] = []
  const all = urls.flatMap((url) => Array.from({ length: loops }, async () => {
    for (let i = 0; i < 100_000 && !state.stopped; i++) {
      try {
        const res = await request(`${url}/api/x`, { dispatcher: agent })
        const body = await res.body.text()
        if (res.statusCode === 200) ok++
        else failed.push(`${url}: ${res.statusCode} ${body.slice(0, 160)}`)
      } catch (err) {
        failed.push(`${url}: ${(err as Error).message}`)
      }
      await new Promise((resolve) => setTimeout(resolve, pace))
    }
  }))
  return {
    async stop () {
      state.stopped = true
      await Promise.all(all)
      await agent.close()
      return { ok, failed }
    }
  }
}

const outOf = (target: Upstream) => (l: Line): boolean => typeof l.msg === 'string' && l.msg.startsWith('target out of rotation') && l.target === target.url

/** Kills a target: in-flight requests cut, new connects refused. */
async function kill (target: Upstream): Promise<void> {
  target.server.closeAllConnections()
  await target.close()
}

/** The failed connects replicas made to a target, summed. */
async function failedConnects (replicas: Replica[], target: Upstream): Promise<number> {
  let n = 0
  for (const r of replicas) {
    const s = (await r.stats()).stats.targets.find((x) => x.url === target.url)!
    n += s.errors.connect_refused ?? 0
  }
  return n
}

/**
 * Runs load on the replicas (one loop each, a request every ~20 ms: about 45
 * a second per replica), kills `dead` once it took requests, keeps the load
 * on for `ms`: the failed connects to it and the requests that failed.
 */
async function outage (replicas: Replica[], dead: Upstream, ms: number): Promise<{ connects: number, failed: string[], ok: number, detections: Line[] }> {
  const run = load(replicas.map((r) => r.url), 1, 20)
  while (dead.seen.length < 10 * replicas.length) await once(dead.events, 'request')
  await kill(dead)
  const detections = await Promise.all(replicas.map(async (r) => await r.logged(outOf(dead))))
  await new Promise((resolve) => setTimeout(resolve, ms)) // the outage lasts this long, under load
  const { ok, failed } = await run.stop()
  return { connects: await failedConnects(replicas, dead), failed, ok, detections }
}

t.test('a target killed under load: out of rotation in every replica within 100 ms of the first detection; four replicas pay at most 1.25x the failed connects of one', { skip }, async (t) => {
  const redis = await startRedis(t)
  const live = [await startUpstream(t), await startUpstream(t)]
  const dead4 = await startUpstream(t)
  const dead1 = await startUpstream(t)

  // One replica alone, on its own state, and four replicas sharing through Redis, side by side (each its own dead target).
  const alone = await replica(t, { targets: [...live.map((u) => u.url), dead1.url] })
  const replicas = await Promise.all(Array.from({ length: 4 }, async () => await replica(t, { targets: [...live.map((u) => u.url), dead4.url], redis: redis.url })))
  await Promise.all(replicas.map(async (r) => await r.logged((l) => l.msg === 'shared state connected')))
  const [one, four] = await Promise.all([outage([alone], dead1, 3000), outage(replicas, dead4, 3000)])
  t.same(one.failed, [], 'one replica: no request failed')
  t.same(four.failed, [], 'four replicas: no request failed')
  t.ok(four.ok > 200, `under load (${four.ok} requests answered)`)

  const first = Math.min(...four.detections.map((l) => l.time))
  const last = Math.max(...four.detections.map((l) => l.time))
  const causes = four.detections.map((l) => l.cause)
  t.comment(`detections: ${four.detections.map((l) => `${String(l.cause)} +${l.time - first} ms`).join(', ')}`)
  t.ok(last - first <= 100, `every replica took it out within 100 ms of the first detection (${last - first} ms)`)
  t.ok(causes.filter((c) => c === 'peer').length >= 1, `replicas learned it from a peer (causes: ${causes.join(', ')})`)
  t.comment(`failed connects to the dead target over 3 s: one replica alone ${one.connects}, four sharing ${four.connects}`)
  t.ok(one.connects >= 3, 'the lone replica kept trying it (a trial per retryInterval)')
  t.ok(four.connects <= 1.25 * one.connects, `four replicas: ${four.connects} failed connects, at most 1.25 x ${one.connects}`)
  const shared = (await replicas[0].stats()).shared!
  t.equal(shared.mode, 'redis')
  t.equal(shared.connected, true)
})

t.test('Redis killed and restarted under load, a target dying meanwhile: no request fails; the replicas reconnect and share again', { skip }, async (t) => {
  const redis = await startRedis(t)
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  const c = await startUpstream(t)
  const targets = [a.url, b.url, c.url]
  const replicas = await Promise.all(Array.from({ length: 3 }, async () => await replica(t, { targets, redis: redis.url })))
  await Promise.all(replicas.map(async (r) => await r.logged((l) => l.msg === 'shared state connected')))
  const run = load(replicas.map((r) => r.url))
  /** Resolves once the live target c has taken n more requests: the load goes on through this phase. */
  const traffic = async (n: number): Promise<void> => {
    const from = c.seen.length
    while (c.seen.length < from + n) await once(c.events, 'request')
  }
  await traffic(30)

  await redis.stop('SIGKILL')
  await Promise.all(replicas.map(async (r) => await r.logged((l) => String(l.msg).startsWith('shared state disconnected'))))
  t.pass('every replica saw Redis go')
  await traffic(30)
  // With Redis gone, a target dies: each replica finds it out for itself.
  await kill(a)
  const alone = await Promise.all(replicas.map(async (r) => await r.logged(outOf(a))))
  t.same(alone.map((l) => l.cause), ['connect_failed', 'connect_failed', 'connect_failed'], 'without Redis each replica took the target out on its own failed connect')
  await traffic(30)

  await redis.restart()
  const back = await Promise.all(replicas.map(async (r) => await r.logged((l) => l.msg === 'shared state connected' && r.lines.indexOf(l) > r.lines.findIndex((x) => String(x.msg).startsWith('shared state disconnected')))))
  t.equal(back.length, 3, 'every replica reconnected')
  await traffic(30)
  // Sharing works again: the next death reaches the others as a peer's report. Under load each
  // replica may meet the dead target itself before a peer's report comes; the report still comes.
  const receivedBefore = await Promise.all(replicas.map(async (r) => (await r.stats()).shared!.received))
  await kill(b)
  const later = await Promise.all(replicas.map(async (r) => await r.logged(outOf(b))))
  let received = receivedBefore
  for (let i = 0; i < 200 && !received.every((n, k) => n > receivedBefore[k]); i++) {
    received = await Promise.all(replicas.map(async (r) => (await r.stats()).shared!.received))
  }
  t.ok(received.every((n, k) => n > receivedBefore[k]), `after the restart, reports flow again: every replica received its peers' (reports received ${receivedBefore.join(', ')} before, ${received.join(', ')} after; causes: ${later.map((l) => l.cause).join(', ')})`)

  const { ok, failed } = await run.stop()
  t.same(failed, [], 'no request failed: not while Redis was down, nor as targets died')
  t.ok(ok > 150, `requests answered (${ok})`)
  for (const r of replicas) {
    const s = (await r.stats()).shared!
    t.equal(s.connected, true)
  }
  const metrics = await (await request(`${replicas[0].url}/metrics`)).body.text()
  t.match(metrics, /\nsssonector_shared_state_connected 1\n/, 'the metric says connected')
  t.match(metrics, /sssonector_shared_reports_total\{event="sent"\} \d+/)
})

t.test('Redis hung (SIGSTOP) under load: no request waits for it or fails; reports flow again when it wakes', { skip }, async (t) => {
  const redis = await startRedis(t)
  const a = await startUpstream(t)
  const b = await startUpstream(t)
  const c = await startUpstream(t)
  const replicas = await Promise.all(Array.from({ length: 2 }, async () => await replica(t, { targets: [a.url, b.url, c.url], redis: redis.url })))
  await Promise.all(replicas.map(async (r) => await r.logged((l) => l.msg === 'shared state connected')))
  const run = load(replicas.map((r) => r.url))
  await once(a.events, 'request')
  process.kill(redis.pid!, 'SIGSTOP')
  t.teardown(() => { try { process.kill(redis.pid!, 'SIGCONT') } catch {} })
  // A target dies while Redis hangs: the reports cannot get through, each replica finds out for itself.
  await kill(a)
  const own = await Promise.all(replicas.map(async (r) => await r.logged(outOf(a))))
  t.same(own.map((l) => l.cause), ['connect_failed', 'connect_failed'], 'each replica took it out on its own failed connect')
  await new Promise((resolve) => setTimeout(resolve, 2000)) // Redis stays hung this long, under load
  process.kill(redis.pid!, 'SIGCONT')
  // Awake: a fresh report goes through.
  await kill(b)
  const fresh = await Promise.race(replicas.map(async (r) => { await r.logged((l) => outOf(b)(l) && l.cause === 'peer'); return r }))
  const { ok, failed } = await run.stop()
  t.same(failed, [], 'no request failed while Redis hung')
  t.ok(ok > 300, `requests went on being answered (${ok})`)
  t.equal((await fresh.stats()).shared!.connected, true, 'connected throughout: a hung Redis is not a lost one')
  const times = replicas.flatMap((r) => r.lines.filter((l) => l.msg === 'request completed').map((l) => l.responseTime as number))
  const slowest = Math.max(...times)
  t.ok(slowest < 1000, `no request waited on Redis (slowest of ${times.length}: ${slowest.toFixed(1)} ms)`)
  for (const r of replicas) {
    const html = await (await request(`${r.url}/status`, { headers: { accept: 'text/html' } })).body.text()
    t.match(html, /shared state \(redis\): /, 'the status page says how shared state stands')
  }
})

/** A transport the test drives: what is published, and a way to deliver. */
function testTransport (): Transport & { sent: string[], deliver: (m: string) => void, setState: (c: boolean) => void } {
  let onMessage: (m: string) => void = () => {}
  let onState: (c: boolean, e: string | null) => void = () => {}
  let connected = true
  const tr = {
    mode: 'redis' as const,
    sent: [] as string[],
    get connected () { return connected },
    publish (m: string) {
      if (!connected) return false
      tr.sent.push(m)
      return true
    },
    subscribe (m: (s: string) => void, s: (c: boolean, e: string | null) => void) {
      onMessage = m
      onState = s
      s(true, null)
    },
    async close () {},
    deliver: (m: string) => { onMessage(m) },
    setState: (c: boolean) => {
      connected = c
      onState(c, c ? null : 'gone')
    }
  }
  return tr
}

t.test('reports: own echoes, other versions, unknown targets and clocks off by more than 5 s are ignored; the deadline is the peer\'s remaining time plus the grace', async (t) => {
  let clock = 1_000_000
  const applied: Array<{ u: string, o: string, e: string, until: number, reason: string }> = []
  const tr = testTransport()
  const log = { info () {}, warn () {}, debug () {} }
  const s = new SharedState(tr, {
    peerReport (u, o, e, until, reason) {
      if (u !== 'api' || o !== 'http://127.0.0.1:1') return false
      applied.push({ u, o, e, until, reason })
      return true
    }
  }, log, () => clock)
  s.start()
  s.report('api', 'http://127.0.0.1:1', 'down', 'connect_failed', 'connect_refused', 5000)
  const mine = JSON.parse(tr.sent[0]) as Record<string, unknown>
  t.match(mine, { v: VERSION, from: s.replica, at: clock, u: 'api', t: 'http://127.0.0.1:1', e: 'down', c: 'connect_failed', r: 'connect_refused', ttl: 5000 }, 'a report: version, sender, time, target, event, cause, reason, ttl')
  tr.deliver(tr.sent[0])
  t.equal(applied.length, 0, 'its own echo is ignored')

  const peer = { v: VERSION, from: 'other', at: clock - 1000, u: 'api', t: 'http://127.0.0.1:1', e: 'down', c: 'circuit_open', r: 'failures: status 503', ttl: 3000 }
  tr.deliver(JSON.stringify(peer))
  t.same(applied[0], { u: 'api', o: 'http://127.0.0.1:1', e: 'down', until: clock + 2000 + PEER_GRACE, reason: 'other: circuit_open: failures: status 503' }, 'applied with the peer\'s remaining time plus the grace')
  tr.deliver(JSON.stringify({ ...peer, v: VERSION + 1 }))
  tr.deliver(JSON.stringify({ ...peer, at: clock - MAX_SKEW - 1 }))
  tr.deliver(JSON.stringify({ ...peer, at: clock + MAX_SKEW + 1 }))
  tr.deliver(JSON.stringify({ ...peer, t: 'http://127.0.0.1:2' }))
  tr.deliver('not json')
  t.equal(applied.length, 1, 'another version, a skewed clock, an unknown target, garbage: none applied')
  t.match(s.stats(), { received: 5, applied: 1, ignored: 5, sent: 1, dropped: 0 })
  clock += 10
  tr.deliver(JSON.stringify({ ...peer, at: clock, e: 'up', c: null, r: '', ttl: 0 }))
  t.match(applied[1], { e: 'up', reason: 'other: back in rotation' })
  tr.setState(false)
  s.report('api', 'http://127.0.0.1:1', 'up', null, '', 0)
  t.match(s.stats(), { connected: false, dropped: 1 }, 'disconnected: a report is dropped, never queued')
})

t.test('bad shared options fail register naming the option and value', async (t) => {
  const up = { upstreams: { u: { targets: [] } } }
  await registerFails(t, { ...up, shared: { redis: 'http://127.0.0.1:6379' } }, 'shared.redis: "http://127.0.0.1:6379" is not a redis:// or rediss:// URL')
  await registerFails(t, { ...up, shared: {} }, /shared: .* needs redis/)
  await registerFails(t, { ...up, shared: { redis: 'redis://127.0.0.1:1', cluster: true } }, /gives redis and cluster/)
  await registerFails(t, { ...up, shared: { cluster: 1 } }, 'shared.cluster: 1 is not true')
  await registerFails(t, { ...up, shared: { redis: 'redis://127.0.0.1:1', key: 'a b' } }, /shared\.key: "a b" is not a plain key/)
  await registerFails(t, { ...up, shared: { redis: 'redis://127.0.0.1:1', ttl: 5 } }, /shared\.ttl: unknown option/)
  await registerFails(t, { ...up, shared: { cluster: true } }, /shared\.cluster: this process is not a node:cluster worker/)
})

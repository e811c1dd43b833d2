import t from 'tap'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import net from 'node:net'
import { rawRequest, startGateway } from './helpers/servers.js'
import { scrape, series, value } from './helpers/scrape.js'
import type { Teardown } from './helpers/servers.js'
import { seeded } from './helpers/random.js'

/** How long the upstream keeps an idle keep-alive socket before it closes it, with no hint. */
const IDLE_CLOSE = 20
const fixture = fileURLToPath(new URL('./fixtures/silent-upstream.mjs', import.meta.url))

interface SilentUpstream {
  url: string
  port: number
  /** Idle sockets it closed, and requests it answered, so far. */
  stats (): Promise<{ idleCloses: number, requests: number }>
  /** Changes how long it keeps idle sockets. */
  setIdleClose (ms: number): Promise<void>
}

/** The silent upstream (fixtures/silent-upstream.mjs), in a process of its own, stopped at teardown. */
async function silentUpstream (t: Teardown): Promise<SilentUpstream> {
  const child = fork(fixture, [String(IDLE_CLOSE)], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  t.teardown(async () => {
    if (!child.connected) return
    const exited = once(child, 'exit')
    child.send('close')
    await exited
  })
  const [{ port }] = await once(child, 'message') as [{ port: number }]
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async stats () {
      const answer = once(child, 'message')
      child.send('stats')
      return (await answer)[0] as { idleCloses: number, requests: number }
    },
    async setIdleClose (ms: number) {
      const answer = once(child, 'message')
      child.send({ idleClose: ms })
      await answer
    }
  }
}

t.test('the silent upstream: its answers carry no Keep-Alive hint, and it closes the idle socket', async (t) => {
  const up = await silentUpstream(t)
  const wire = await rawRequest(up.port, 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi')
  const head = wire.slice(0, wire.indexOf('\r\n\r\n'))
  t.match(head, /^HTTP\/1\.1 200 OK\r\n/)
  t.match(head, /\r\nconnection: keep-alive/i, 'it keeps the connection open')
  t.notMatch(head, /\r\nkeep-alive:/i, 'no Keep-Alive header on the wire')
  t.equal(wire.slice(wire.indexOf('\r\n\r\n') + 4), 'ok')
  t.equal((await up.stats()).idleCloses, 1, 'the socket was closed by the upstream, idle (rawRequest reads until the close)')
})

t.test('1,000 POSTs spaced 10-30 ms apart against an upstream that silently closes idle sockets after 20 ms: none fails', async (t) => {
  const seed = Number(process.env.KEEPALIVE_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.comment(`spacing seed ${seed} (replay with KEEPALIVE_SEED=${seed})`)
  const random = seeded(seed)
  const up = await silentUpstream(t)
  // One upstream per sequence of POSTs: each pool sees one request at a time,
  // so its connection sits idle for the whole gap (a shared pool's LIFO would
  // hand the youngest idle connection to whichever sequence asks next).
  const SEQUENCES = 10
  const PER_SEQUENCE = 100
  const upstreams: Record<string, { targets: string[] }> = {}
  const routes = []
  for (let i = 0; i < SEQUENCES; i++) {
    upstreams[`s${i}`] = { targets: [up.url] }
    routes.push({ prefix: `/s${i}`, upstream: `s${i}` })
  }
  const gw = await startGateway(t, { upstreams, routes })
  // The gaps, drawn up front from the seed, so a replay sends the same ones.
  const gaps = Array.from({ length: SEQUENCES }, () => Array.from({ length: PER_SEQUENCE }, () => 10 + random() * 20))
  const failures: string[] = []
  let ok = 0
  let warmups = 0
  async function sequence (i: number): Promise<void> {
    // Warm-up POSTs first, each followed by a gap well past the upstream's 20 ms,
    // until the pool has seen two idle closes (at most 20 POSTs). The first close
    // cannot be foreseen (no hint); under load a POST sent into it at about 20 ms
    // of idle can meet the close (seen once in a loaded full run: #1, nothing
    // learned yet). The pool learns the least idle age of the closes it saw, and
    // one close seen late (the event loop held up) reads long: once in a loaded
    // full run a single close read 101 ms, the next POSTs reused sockets the
    // upstream had closed at 20 ms. The second close corrects it. A close that
    // arrives while the answer's connection is still on its way back to the pool
    // (the event loop held up past 20 ms) is not an idle close: the warm-up then
    // takes one POST more (waiting for a given close hung a loaded CI run).
    const keepAlive = (): { idleCloses: number } => gw.app.sssonector.upstream(`s${i}`).stats().targets[0].keepAlive
    for (let w = 1; w <= 20 && keepAlive().idleCloses < 2; w++) {
      warmups++
      const warm = await request(`${gw.url}/s${i}/orders`, { method: 'POST', dispatcher: gw.agent, headers: { 'content-type': 'application/json' }, body: '{"warm":true}' })
      await warm.body.dump()
      if (warm.statusCode !== 200) failures.push(`s${i} warm-up ${w}: ${warm.statusCode}`)
      await new Promise((resolve) => setTimeout(resolve, 4 * IDLE_CLOSE))
    }
    if (keepAlive().idleCloses < 2) failures.push(`s${i}: the pool saw ${keepAlive().idleCloses} idle closes after 20 warm-up POSTs`)
    for (let n = 0; n < PER_SEQUENCE; n++) {
      const res = await request(`${gw.url}/s${i}/orders`, { method: 'POST', dispatcher: gw.agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n }) })
      const text = await res.body.text()
      if (res.statusCode === 200 && text === 'ok') ok++
      else failures.push(`s${i} #${n}: ${res.statusCode} ${text}, keepAlive ${JSON.stringify(gw.app.sssonector.upstream(`s${i}`).stats().targets[0].keepAlive)}`)
      await new Promise((resolve) => setTimeout(resolve, gaps[i][n]))
    }
  }
  await Promise.all(Array.from({ length: SEQUENCES }, (_, i) => sequence(i)))
  t.same(failures, [], 'no POST failed')
  t.equal(ok, SEQUENCES * PER_SEQUENCE)
  const seen = await up.stats()
  t.equal(seen.requests, SEQUENCES * PER_SEQUENCE + warmups, `each POST (and each of the ${warmups} warm-ups) reached the upstream once`)
  t.ok(seen.idleCloses > 50, `the upstream closed idle sockets under the gateway (${seen.idleCloses})`)
  for (let i = 0; i < SEQUENCES; i++) {
    const ka = gw.app.sssonector.upstream(`s${i}`).stats().targets[0].keepAlive
    // At most about 20 ms; lower when the gateway saw an answer's end late (a machine starved of CPU).
    t.ok(ka.learned !== null && ka.learned < 40, `s${i}: learned idle timeout ${ka.learned} ms, about 20 at most`)
    t.ok(ka.retireAt !== null && ka.retireAt < ka.learned!, `s${i}: retires idle connections at ${ka.retireAt} ms, before it`)
  }
})

async function post (url: string, gw: { agent: import('undici').Agent }): Promise<number> {
  const res = await request(url, { method: 'POST', dispatcher: gw.agent, body: 'x' })
  await res.body.text()
  return res.statusCode
}

const pause = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

t.test('the learned value grows back when the upstream keeps idle connections longer: watched connections outlive it', async (t) => {
  const up = await silentUpstream(t)
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/api', upstream: 'a' }], status: { path: '/status' } })
  const a = gw.app.sssonector.upstream('a')
  const ka = (): { learned: number | null, retireAt: number | null, idleCloses: number, retired: number } => a.stats().targets[0].keepAlive
  // Spaced past the upstream's 20 ms until it has closed a few idle connections under the pool.
  const statuses: number[] = []
  for (let i = 0; i < 50 && ka().idleCloses < 4; i++) {
    statuses.push(await post(`${gw.url}/api/warm`, gw))
    await pause(35)
  }
  const first = ka().learned
  t.ok(first !== null && first < 40, `learned about 20 ms at most first (${first})`)
  // Visible: a read-only stats field, the metrics, the status page.
  const k = ka()
  t.same(a.stats().targets[0].keepAlive, k, 'stats() reads, moves nothing')
  const text = await scrape(`${gw.url}/metrics`)
  t.equal(value(text, 'sssonector_pool_learned_idle_timeout_seconds', { upstream: 'a', target: up.url }), k.learned! / 1000)
  t.ok(value(text, 'sssonector_pool_idle_closes_by_target_total', { upstream: 'a', target: up.url })! >= 4)
  const page = await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })
  t.match(await page.body.text(), `idle closed at ${k.learned} ms, retired at ${k.retireAt} ms`)
  await up.setIdleClose(1000)
  // Now each connection retires at about 10 ms and is watched up to twice the learned age: it lives on.
  // Until it has learned twice the old 20 ms (from a lower first value, it doubles a few times).
  for (let i = 0; i < 80 && (ka().learned ?? 0) < 40; i++) {
    statuses.push(await post(`${gw.url}/api/longer`, gw))
    await pause(2 * (ka().learned ?? 20) + 10)
  }
  t.ok(statuses.every((s) => s === 200), `every POST succeeded (${statuses.length})`)
  const grown = ka().learned
  t.ok(grown !== null && grown >= 40, `learned ${grown} ms after the upstream kept connections for 1 s (first ${first} ms)`)
  t.ok(ka().retired > 0, 'connections were retired early meanwhile')
})

t.test('a connection the upstream resets while a request is on it is not an idle close: nothing learned', async (t) => {
  const server = net.createServer((socket) => {
    socket.once('data', () => { socket.resetAndDestroy() })
    socket.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  const gw = await startGateway(t, { upstreams: { a: { targets: [url] } }, routes: [{ prefix: '/', upstream: 'a' }], retry: false })
  t.equal(await post(`${gw.url}/x`, gw), 502)
  t.equal(await post(`${gw.url}/y`, gw), 502)
  const s = gw.app.sssonector.upstream('a').stats().targets[0]
  t.same(s.errors, { reset: 2 })
  t.same(s.keepAlive, { learned: null, retireAt: null, idleCloses: 0, retired: 0 })
  t.same(series(await scrape(`${gw.url}/metrics`), 'sssonector_pool_learned_idle_timeout_seconds'), [], 'no gauge while nothing is learned')
})

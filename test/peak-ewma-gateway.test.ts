import t from 'tap'
import { request } from 'undici'
import { startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Upstream } from './helpers/servers.js'
import { scrape, value } from './helpers/scrape.js'
import type { TargetStats } from '../types/index.js'

async function get (gw: Gateway, path: string): Promise<number> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  await res.body.dump()
  return res.statusCode
}

/** Sends `count` GETs, `concurrency` in flight at most; resolves with their statuses. */
async function load (gw: Gateway, count: number, concurrency: number): Promise<number[]> {
  const codes: number[] = []
  let sent = 0
  const worker = async (): Promise<void> => {
    while (sent < count) {
      sent++
      codes.push(await get(gw, `/r${sent}`))
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return codes
}

function scoreOf (gw: Gateway, up: Upstream): TargetStats['score'] {
  return gw.app.sssonector.upstream('a').stats().targets.find((x) => x.url === up.url)!.score
}

t.test('peak EWMA: one target 1 s slow gets a few of 300 requests from a cold start', async (t) => {
  const fast = [await startUpstream(t), await startUpstream(t)]
  const slow = await startUpstream(t, (_req, res) => {
    const timer = setTimeout(() => res.end('slow'), 1000)
    res.once('close', () => clearTimeout(timer))
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [fast[0].url, slow.url, fast[1].url], balance: 'peak-ewma' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const codes = await load(gw, 300, 12)
  t.ok(codes.every((c) => c === 200), 'every request answered 200')
  t.equal(fast[0].seen.length + fast[1].seen.length + slow.seen.length, 300, 'each request reached one target')
  // The first wave (12 in flight before any answer) spreads evenly: about 4 reach it before it is known.
  t.ok(slow.seen.length < 30, `under 10% (${slow.seen.length} of 300; a fair share is 100)`)
  const s = scoreOf(gw, slow)
  t.ok(s.estimate >= 500, `its estimate shows it slow (1 s, decaying since): ${s.estimate} ms`)
  for (const f of fast) t.ok(scoreOf(gw, f).estimate < s.estimate, `a fast one's is lower: ${scoreOf(gw, f).estimate} ms`)
  t.equal(s.penalty, 0, 'slow is not failed: no penalty')
})

t.test('peak EWMA: a target answering 503 to every second request stops looking fast; its score is in stats, the status page and the metrics', async (t) => {
  const fast = [await startUpstream(t), await startUpstream(t)]
  let n = 0
  const flaky = await startUpstream(t, (_req, res) => {
    if (++n % 2 === 0) res.statusCode = 503
    res.end('flaky')
  })
  const gw = await startGateway(t, {
    // No breaker: the balancer alone keeps it away.
    upstreams: { a: { targets: [fast[0].url, flaky.url, fast[1].url], balance: 'peak-ewma', circuitBreaker: false } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  const first = await load(gw, 60, 8)
  t.ok(first.every((c) => c === 200), 'its 503s were retried on the others')
  t.ok(n >= 2, `it was tried at first (${n} requests)`)
  const before = n
  const second = await load(gw, 300, 8)
  t.ok(second.every((c) => c === 200))
  t.ok(n - before < 10, `then under 10 of the next 300 requests reached it (${n - before})`)
  const s = scoreOf(gw, flaky)
  t.ok(s.penalty > 0, `its penalty shows in stats(): ${s.penalty} ms`)
  t.equal(s.heldUntil, null, 'no Retry-After: not held')
  t.equal(scoreOf(gw, fast[0]).penalty, 0, 'a fast target has none')

  const html = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
  const tr = new RegExp(`data-target="${flaky.url}"[^>]*>(.*?)</tr>`, 's').exec(html)
  t.ok(tr !== null && /<td class="num score">[\d.]+ ms<br><span class="warn">\+[\d.]+ ms<\/span><\/td>/.test(tr[1]), 'the status page shows its estimate and its penalty')
  const text = await scrape(`${gw.url}/metrics`, gw.agent)
  t.ok(value(text, 'sssonector_target_failure_penalty_seconds', { upstream: 'a', target: flaky.url })! > 0, 'the penalty gauge reads it')
  t.ok(value(text, 'sssonector_target_latency_estimate_seconds', { upstream: 'a', target: fast[0].url })! > 0, 'the estimate gauge reads each target')
})

t.test('peak EWMA: an answer\'s Retry-After holds the penalty: no request reaches that target until then', async (t) => {
  const fast = [await startUpstream(t), await startUpstream(t)]
  const busy = await startUpstream(t, (_req, res) => {
    res.writeHead(503, { 'retry-after': '30' })
    res.end('later')
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [fast[0].url, busy.url, fast[1].url], balance: 'peak-ewma', circuitBreaker: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  // Targets not timed yet are tried at once: requests until it has answered once (at most 50).
  const first: number[] = []
  for (let i = 0; i < 50 && busy.seen.length === 0; i++) first.push(...await load(gw, 1, 1))
  t.ok(first.every((c) => c === 200), 'its 503s were retried on the others')
  const before = busy.seen.length
  t.equal(before, 1, 'it was tried once')
  const start = Date.now()
  const s = scoreOf(gw, busy)
  t.ok(s.heldUntil !== null && s.heldUntil > start + 25_000 && s.heldUntil <= start + 30_000, 'held about 30 s from its answer')
  const rest = await load(gw, 200, 4)
  t.ok(rest.every((c) => c === 200))
  t.equal(busy.seen.length, before, 'none of the next 200 requests reached it')
})

t.test('peak EWMA: a target out after failed connects gets its trial when its skip ends, and back in rotation is scored afresh, not by the failures that took it out', async (t) => {
  const steady = await startUpstream(t)
  let back = await startUpstream(t)
  const port = back.port
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [steady.url, back.url], balance: 'peak-ewma', pool: { retryInterval: '200ms' }, circuitBreaker: false, outlierDetection: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  t.ok((await load(gw, 20, 4)).every((c) => c === 200))
  // Down: refused connects (each retried on the other target) take it out. Requests four at a
  // time, so the two targets' outstanding counts differ and either may win a draw.
  back.server.closeAllConnections()
  await back.close()
  const pool = gw.app.sssonector.upstream('a')
  const health = (): Array<{ cause: string }> => pool.stats().targets.find((x) => x.url === back.url)!.health
  const codes: number[] = []
  // Until a draw picks it and its connect fails: after a slow answer in the warm-up (a loaded
  // machine), its estimate keeps it off the draws while it decays (0.5 s), hundreds of requests.
  const deadline = Date.now() + 5000
  while (health().length === 0 && Date.now() < deadline) codes.push(...await load(gw, 4, 4))
  t.ok(codes.every((c) => c === 200), 'its failures were retried on the other target')
  t.match(health(), [{ cause: 'connect_failed' }], 'out of rotation')
  // Back on the same port: its trial connects, it is back in rotation.
  back = await startUpstream(t, undefined, { port })
  const inRotation = (): boolean => pool.stats().targets.find((x) => x.url === back.url)!.health.length === 0
  for (let i = 0; i < 200 && !inRotation(); i++) {
    t.equal(await get(gw, `/trial${i}`), 200)
    if (!inRotation()) await new Promise((resolve) => setTimeout(resolve, 20)) // its skip (200 ms) runs out
  }
  t.ok(inRotation(), 'its trial came and connected: back in rotation (the failures\' penalty would have lost it every draw)')
  const fresh = scoreOf(gw, back)
  t.same({ penalty: fresh.penalty, heldUntil: fresh.heldUntil }, { penalty: 0, heldUntil: null }, 'no penalty carried over from the outage')
  const before = back.seen.length
  t.ok((await load(gw, 100, 4)).every((c) => c === 200))
  t.ok(back.seen.length - before >= 10, `it takes a share again at once: ${back.seen.length - before} of 100, four at a time`)
})

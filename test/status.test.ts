import t from 'tap'
import { request } from 'undici'
import { Upstream } from '../lib/upstream.js'
import { resolveOptions } from '../lib/options/index.js'
import { renderStatus } from '../lib/status.js'
import type { TargetStats, UpstreamStats } from '../types/index.js'
import { refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'

/** A target's row of the status page: its data-state and the text of each cell, by column name. */
function row (html: string, url: string): { state: string, cell: (column: string) => string } {
  const tr = new RegExp(`<tr class="[^"]*" data-target="${url}" data-state="([^"]*)">(.*?)</tr>`, 's').exec(html)
  if (tr === null) throw new Error(`no row for ${url}`)
  const section = html.slice(html.lastIndexOf('<section', tr.index))
  const columns = [...section.matchAll(/<th[^>]*>(.*?)<\/th>/g)].map((m) => m[1])
  const cells = [...tr[2].matchAll(/<td[^>]*>(.*?)<\/td>/gs)].map((m) => m[1].replace(/<br>/g, '\n').replace(/<title>.*?<\/title>/s, '').replace(/<[^>]+>/g, ''))
  return {
    state: tr[1],
    cell (column: string) {
      const i = columns.indexOf(column)
      if (i === -1) throw new Error(`no column ${column}`)
      return cells[i]
    }
  }
}

async function page (gw: Gateway): Promise<string> {
  return await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
}

async function get (gw: Gateway, path: string): Promise<number> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  await res.body.dump()
  return res.statusCode
}

t.test('a target whose breaker opened is DOWN, also once its skip is over and it waits for its trial (it showed UP then)', async (t) => {
  const live = await startUpstream(t)
  const failing = await startUpstream(t, (_req, res) => { res.statusCode = 503; res.end('no') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [live.url, failing.url], balance: 'round-robin', circuitBreaker: { consecutiveFailures: 2 }, pool: { retryInterval: '100ms' } } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  for (let i = 0; i < 4; i++) t.equal(await get(gw, `/x${i}`), 200, 'the 503 retried on the live target')
  const u = gw.app.sssonector.upstream('a')
  const down = u.stats().targets[1].down
  t.ok(down !== null, 'its breaker opened: skipped')
  const open = row(await page(gw), failing.url)
  t.equal(open.state, 'down')
  t.match(open.cell('why'), /circuit_open for \d+s: failures: http_5xx\nnext trial in \d+ms/)
  t.match(open.cell('breaker'), /^open/)
  // Its skip runs out: the balancer may give it a trial, and it is still out of rotation.
  await new Promise((resolve) => setTimeout(resolve, down!.until - Date.now() + 5))
  const s = u.stats().targets[1]
  t.equal(s.available, true, 'its trial may run')
  t.equal(s.breaker?.state, 'half-open')
  const waiting = row(await page(gw), failing.url)
  t.equal(waiting.state, 'down', 'DOWN, not UP: its breaker has not closed')
  t.equal(waiting.cell('state'), 'DOWN')
  t.match(waiting.cell('why'), /trial due: the next request tries it/)
  t.match(waiting.cell('breaker'), /^half-open/)
})

t.test('panic: targets failing their active checks are shown down but used, and the page says which flags are set aside', async (t) => {
  const handler = (req: { url?: string }, res: { statusCode: number, end: (b: string) => void }): void => {
    if (req.url === '/health') {
      res.statusCode = 500
      res.end('sick')
      return
    }
    res.end('ok')
  }
  const one = await startUpstream(t, handler)
  const two = await startUpstream(t, handler)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [one.url, two.url], healthCheck: { path: '/health', interval: '10s' } } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  const u = gw.app.sssonector.upstream('a')
  t.equal(u.stats().panic, true, 'both failed their first check: panic')
  t.equal(await get(gw, '/x'), 200, 'served all the same')
  const html = await page(gw)
  for (const url of [one.url, two.url]) {
    const r = row(html, url)
    t.equal(r.state, 'panic', `${url}: not UP`)
    t.equal(r.cell('state'), 'DOWN, USED IN PANIC')
    t.match(r.cell('why'), /active_health for \d+s: failed active check: status 500/)
  }
  t.match(html, /<p class="panic"><b>PANIC<\/b>.*Set aside: <code>active_health<\/code>, <code>ejected<\/code> and <code>peer<\/code>/)
  t.match(html, new RegExp(`Used though flagged: ${one.url}, ${two.url}`))
  t.match(html, /2 of 2 targets out of rotation/)
})

t.test('the page reads stats() only, and what a dead target did decays: a minute later its errors are gone, not frozen', async (t) => {
  const live = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const clock = { now: Date.UTC(2030, 0, 1, 12, 0, 0, 250) }
  const config = resolveOptions({ upstreams: { u: { targets: [dead, live.url], balance: 'round-robin' } } }).upstreams[0]
  const u = new Upstream(config, { now: () => clock.now })
  t.teardown(() => u.close())
  for (let i = 0; i < 4; i++) {
    const res = await u.request({ method: 'GET', path: `/x${i}` })
    await res.body.dump()
    t.equal(res.statusCode, 200)
  }
  const stats = (): UpstreamStats[] => [u.stats()]
  const deadStats = (): TargetStats => u.stats().targets[0]
  t.match(deadStats().window, { attempts: 1, connectionErrors: 1, retries: 1, answers: { '2xx': 0, '5xx': 0 } })
  t.equal(deadStats().down?.nextTrial, clock.now + 5000, 'its trial at the end of its skip')
  let html = renderStatus(stats(), clock.now)
  t.match(html, '<time datetime="2030-01-01T12:00:00.250Z">2030-01-01 12:00:00 UTC</time>', 'the time it was rendered')
  let r = row(html, dead)
  t.equal(r.state, 'down')
  t.equal(r.cell('conn errors'), '1')
  t.match(r.cell('why'), /connect_failed for 0s: connect_refused\nnext trial in 5\.0s/)
  t.equal(row(html, live.url).cell('2xx'), '4')
  t.equal(row(html, live.url).cell('rate'), `${Math.round(4 / 9.25 * 100) / 100}/s`, '4 attempts over the last 9.25 s')

  clock.now += 61_000
  t.match(deadStats().window, { attempts: 0, connectionErrors: 0, retries: 0, p50: null, p99: null }, 'nothing left in the window')
  t.equal(deadStats().failureRatio > 0, true, 'the moving average, by contrast, never moves without attempts')
  html = renderStatus(stats(), clock.now)
  r = row(html, dead)
  t.equal(r.cell('conn errors'), '0', 'its connection errors decayed')
  t.equal(r.cell('retries'), '0')
  t.equal(r.cell('p99'), '-')
  t.match(r.cell('why'), /trial due: the next request tries it/)
  t.equal(row(html, live.url).cell('2xx'), '0')
  t.equal(row(html, live.url).cell('rate'), '0/s')
})

t.test('the JSON status carries the same: the last minute per target, the next trial, each cause\'s reason', async (t) => {
  const live = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [dead, live.url], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'a' }],
    status: { path: '/status' }
  })
  for (let i = 0; i < 3; i++) t.equal(await get(gw, `/x${i}`), 200)
  const json = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'application/json' } })).body.json() as { upstreams: UpstreamStats[] }
  const [d, l] = json.upstreams[0].targets
  t.match(d.health, [{ cause: 'connect_failed', reason: 'connect_refused' }])
  t.equal(d.down?.nextTrial, d.down?.until)
  t.match(d.window, { seconds: 60, attempts: 1, connectionErrors: 1, retries: 1 })
  t.equal(d.window.series.requests.length, 60)
  t.match(l.window, { attempts: 3, answers: { '2xx': 3 }, connectionErrors: 0 })
  t.ok(l.window.p50 !== null && l.window.p99 !== null && l.window.p50 <= l.window.p99)
  t.equal(l.window.series.requests.reduce((a, b) => a + b, 0), 3)
})

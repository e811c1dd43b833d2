import t from 'tap'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'

async function get (gw: Gateway, path: string): Promise<{ status: number, body: string, from: string | undefined }> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  const from = res.headers['x-from']
  return { status: res.statusCode, body: await res.body.text(), from: Array.isArray(from) ? from[0] : from }
}

t.test('retries reuse idle connections: a target answering 503 to a third of its requests opens no connection per retry', async (t) => {
  let n = 0
  const flaky = await startUpstream(t, (_req, res) => {
    if (++n % 3 === 0) {
      res.statusCode = 503
      res.end('busy')
      return
    }
    res.end('ok')
  })
  const others = [await startUpstream(t), await startUpstream(t)]
  const gw = await startGateway(t, {
    // The breaker would take the flaky target out; here the retries alone are tested.
    upstreams: { a: { targets: [flaky.url, ...others.map((u) => u.url)], balance: 'round-robin', circuitBreaker: false, outlierDetection: false } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const statuses: number[] = []
  await Promise.all(Array.from({ length: 3 }, async (_, w) => {
    for (let i = 0; i < 100; i++) statuses.push((await get(gw, `/${w}/${i}`)).status)
  }))
  t.equal(statuses.filter((s) => s === 200).length, 300, 'every GET succeeded')
  const s = gw.app.sssonector.upstream('a').stats()
  // Every 503 of the flaky target was retried elsewhere.
  const retried = Math.floor(n / 3)
  const opened = s.targets.reduce((sum, x) => sum + x.opened, 0)
  t.ok(retried >= 30, `${retried} answers retried`)
  t.ok(opened <= 12, `${opened} connections opened in all for 3 clients (a new one per retry would be ${retried} more)`)
})

t.test('a retry the budget refuses passes the upstream\'s own 503 through, unchanged: its status, headers and body', async (t) => {
  const gate = new Gate()
  t.teardown(() => { gate.open() })
  const busy = await Promise.all([0, 1, 2].map(async (i) => await startUpstream(t, async (_req, res) => {
    await gate.wait()
    res.statusCode = 503
    res.setHeader('x-from', `upstream-${i}`)
    res.setHeader('retry-after', '7')
    res.end(`busy ${i}`)
  })))
  const gw = await startGateway(t, {
    upstreams: {
      a: {
        targets: busy.map((u) => u.url),
        circuitBreaker: false,
        outlierDetection: false,
        // Room for one retry in flight, and no wait worth the name for more.
        retry: { budget: { percent: 0, minConcurrent: 1 }, baseDelay: 1, maxDelay: 2 }
      }
    },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const all = Array.from({ length: 20 }, async (_, i) => await get(gw, `/${i}`))
  await gate.waitingFor(20)
  gate.open()
  const answers = await Promise.all(all)
  t.equal(answers.filter((a) => a.status === 502).length, 0, 'no gateway 502 in place of the upstream\'s answer')
  t.ok(answers.every((a) => a.status === 503), 'every client got a 503')
  t.ok(answers.every((a) => a.from !== undefined && a.body === `busy ${a.from.slice(-1)}`), 'each is an upstream\'s own answer: its header and its body')
})

t.test('a burst of retries over the budget waits for room and goes: none over the budget at once, every GET served', async (t) => {
  const gate = new Gate()
  t.teardown(() => { gate.open() })
  // the first attempts all arrive together; then the bad target answers 503
  const bad = await startUpstream(t, async (_req, res) => {
    await gate.wait()
    res.statusCode = 503
    res.end('busy')
  })
  const retriedUrls = new Set<string>()
  let retriesNow = 0
  let retriesPeak = 0
  const good = await startUpstream(t, async (req, res) => {
    const retry = retriedUrls.has(req.url ?? '')
    if (retry) retriesPeak = Math.max(retriesPeak, ++retriesNow)
    // a retry here holds its room in the budget for 150 ms
    await new Promise((resolve) => setTimeout(resolve, 150))
    if (retry) retriesNow--
    res.end('ok')
  })
  bad.server.on('request', (req: { url?: string }) => { retriedUrls.add(req.url ?? '') })
  const gw = await startGateway(t, {
    upstreams: {
      a: {
        targets: [bad.url, good.url],
        balance: 'round-robin',
        circuitBreaker: false,
        outlierDetection: false,
        // two retries in flight at most, whatever the load
        retry: { budget: { percent: 0, minConcurrent: 2 } }
      }
    },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const all = Array.from({ length: 12 }, async (_, i) => await get(gw, `/${i}`))
  await gate.waitingFor(6)
  gate.open()
  const answers = await Promise.all(all)
  t.equal(retriedUrls.size, 6, 'six GETs got the bad target\'s 503 first')
  t.equal(answers.filter((a) => a.status === 200).length, 12, 'every GET was served: the retries over the budget waited for room (three rounds of 150 ms) instead of giving up')
  t.equal(retriesPeak, 2, 'never more than the budget\'s two retries at the good target at once')
  t.equal(gw.app.sssonector.upstream('a').stats().retriesActive, 0, 'the budget\'s count is back to 0')
})

import t from 'tap'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'

interface Line { level: number, msg: string, target?: string, cause?: string }

/** A gateway whose log lines are kept. */
async function logged (t: Parameters<typeof startGateway>[0], options: Parameters<typeof startGateway>[1]): Promise<{ gw: Gateway, lines: Line[] }> {
  const lines: Line[] = []
  const gw = await startGateway(t, options, undefined, { logger: { level: 'info', stream: { write: (l: string) => { lines.push(JSON.parse(l) as Line) } } } })
  return { gw, lines }
}

async function get (gw: Gateway, path: string): Promise<number> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
  await res.body.dump()
  return res.statusCode
}

t.test('one outage is one failure: twelve GETs in flight when a target dies skip it once, for retryInterval; each is retried elsewhere', async (t) => {
  const gate = new Gate()
  t.teardown(() => { gate.open() })
  const dying = await startUpstream(t, async (req, res) => {
    if (req.url?.startsWith('/hold')) await gate.wait()
    res.end('dying')
  })
  const other = await startUpstream(t)
  const { gw, lines } = await logged(t, {
    upstreams: { a: { targets: [dying.url, other.url], balance: 'round-robin', pool: { retryInterval: '10m', maxRetryInterval: '1h' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  // Round-robin: every other request is held by the dying target.
  const held = Array.from({ length: 24 }, async (_, i) => await get(gw, `/hold/${i}`))
  await gate.waitingFor(12)
  // It dies: its listener goes, its sockets are reset under the twelve.
  dying.server.close()
  dying.server.closeAllConnections()
  const statuses = await Promise.all(held)
  t.equal(statuses.filter((s) => s === 200).length, 24, 'every GET succeeded: the twelve were retried on the other target')
  // The next request that picks it finds its port closed: the outage is seen.
  for (let i = 0; i < 2; i++) t.equal(await get(gw, `/after/${i}`), 200)
  const s = gw.app.sssonector.upstream('a').stats().targets[0]
  t.equal(s.breaker?.state, 'closed', 'the resets of one crash are one failure in a row, not twelve: the breaker stays closed')
  t.not(s.down, null, 'skipped once its connect failed')
  t.equal(s.down!.failures, 1, 'one outage, one failure')
  t.equal(s.down!.until - s.down!.since, 600_000, 'skipped for retryInterval, not doubled by the attempts that overlapped')
  t.equal(lines.filter((l) => l.msg.startsWith('target out of rotation')).length, 1, 'out of rotation, logged once')
})

t.test('a target shutting down gracefully (its listener closed, its requests finishing) leaves rotation once and does not flap', async (t) => {
  const gate = new Gate()
  t.teardown(() => { gate.open() })
  const leaving = await startUpstream(t, async (req, res) => {
    if (req.url?.startsWith('/hold')) await gate.wait()
    res.end('leaving')
  })
  const other = await startUpstream(t)
  const { gw, lines } = await logged(t, {
    upstreams: { a: { targets: [leaving.url, other.url], balance: 'round-robin', pool: { retryInterval: '10m', maxRetryInterval: '1h' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const held = Array.from({ length: 8 }, async (_, i) => await get(gw, `/hold/${i}`))
  await gate.waitingFor(4)
  // Graceful: no new connection is accepted; the four in flight finish.
  leaving.server.close()
  // A request to it now is refused: it leaves rotation.
  for (let i = 0; i < 4; i++) t.equal(await get(gw, `/during/${i}`), 200, 'served elsewhere')
  t.equal(gw.app.sssonector.upstream('a').stats().targets[0].available, false, 'out of rotation')
  gate.open()
  const statuses = await Promise.all(held)
  t.equal(statuses.filter((s) => s === 200).length, 8, 'the requests in flight on it finished')
  t.equal(gw.app.sssonector.upstream('a').stats().targets[0].available, false, 'their successes, begun before it left, do not bring it back')
  t.equal(lines.filter((l) => l.msg.startsWith('target back in rotation')).length, 0, 'no return logged')
  t.equal(lines.filter((l) => l.msg.startsWith('target out of rotation')).length, 1, 'its leaving logged once')
})

t.test('a target back after its skip serves again at its trial; the skip doubles only when a trial fails', async (t) => {
  const dying = await startUpstream(t)
  const port = dying.port
  const other = await startUpstream(t)
  const { gw } = await logged(t, {
    upstreams: { a: { targets: [dying.url, other.url], balance: 'round-robin', pool: { retryInterval: '200ms', maxRetryInterval: '10s' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  await dying.close()
  t.equal(await get(gw, '/a'), 200)
  t.equal(await get(gw, '/b'), 200)
  const a = gw.app.sssonector.upstream('a')
  const first = a.stats().targets[0].down!
  t.equal(first.until - first.since, 200, 'skipped for retryInterval')
  // Its trial at the end of the skip fails (still down): twice as long.
  await new Promise((resolve) => setTimeout(resolve, first.until - Date.now() + 5))
  for (let i = 0; i < 2; i++) t.equal(await get(gw, `/c${i}`), 200, 'a failed trial is retried elsewhere')
  const second = a.stats().targets[0].down!
  t.equal(second.failures, 2, 'its trial failed: the second failure')
  t.ok(second.until - Date.now() > 200 && second.until - Date.now() <= 400, `then skipped for twice retryInterval (${second.until - Date.now()} ms left)`)
  // It comes back on its port; its next trial brings it back.
  const back = await startUpstream(t)
  back.server.close()
  await once(back.server, 'close')
  back.server.listen(port, '127.0.0.1')
  await once(back.server, 'listening')
  t.equal((back.server.address() as AddressInfo).port, port)
  await new Promise((resolve) => setTimeout(resolve, second.until - Date.now() + 5))
  for (let i = 0; i < 2; i++) t.equal(await get(gw, `/d${i}`), 200)
  t.equal(a.stats().targets[0].down, null, 'back in rotation: its trial passed')
  t.ok(back.seen.length >= 1, 'and it serves')
})

t.test('a target that starts resetting every request under steady load opens its breaker within consecutiveFailures rounds of the requests in flight, not once its failure rate catches up', async (t) => {
  const CLIENTS = 16
  let resetting = false
  let resets = 0
  const flaky = await startUpstream(t, (req, res) => {
    if (!resetting) {
      res.end('ok')
      return
    }
    resets++
    req.socket.destroy()
  })
  const other = await startUpstream(t)
  const { gw } = await logged(t, {
    upstreams: { a: { targets: [flaky.url, other.url], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const stats = (): ReturnType<ReturnType<Gateway['app']['sssonector']['upstream']>['stats']>['targets'][number] => gw.app.sssonector.upstream('a').stats().targets[0]
  // a history of successes in the breaker's window: its failure rate alone
  // would need as many failures again to reach 0.5
  let warm = 0
  for (let i = 0; i < 200; i++) if (await get(gw, `/warm/${i}`) === 200) warm++
  t.equal(warm, 200, 'served while it answered')
  resetting = true
  // steady load from closed-loop clients, until the breaker opens (at most 600 requests)
  let sent = 0
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (stats().breaker?.state !== 'open' && sent < 600) {
      sent++
      await get(gw, `/load/${sent}`)
    }
  }))
  t.equal(stats().breaker?.state, 'open', `the breaker opened (after ${sent} requests)`)
  // each counted failure is one whose attempt began after the last counted one
  // was seen: at most one round of the requests in flight apart
  t.ok(resets <= 5 * CLIENTS, `it opened after ${resets} resets, at most consecutiveFailures (5) x ${CLIENTS} in flight; its failure rate over 100 successes would have needed 100`)
})

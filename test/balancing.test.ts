import t from 'tap'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Upstream } from './helpers/servers.js'

async function get (gw: Gateway, path: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent, headers })
  await res.body.dump()
  return res.statusCode
}

t.test('round-robin spreads exactly across real targets, and weights hold', async (t) => {
  const ups = [await startUpstream(t), await startUpstream(t), await startUpstream(t)]
  const gw = await startGateway(t, {
    upstreams: {
      even: { targets: ups.map((u) => u.url), balance: 'round-robin' },
      weighted: { targets: [{ url: ups[0].url, weight: 2 }, ups[1].url], balance: 'round-robin' }
    },
    routes: [{ prefix: '/even', upstream: 'even' }, { prefix: '/weighted', upstream: 'weighted' }]
  })
  for (let i = 0; i < 30; i++) await get(gw, '/even/x')
  t.same(ups.map((u) => u.seen.length), [10, 10, 10])
  for (let i = 0; i < 30; i++) await get(gw, '/weighted/x')
  t.same(ups.map((u) => u.seen.length), [30, 20, 10])
})

t.test('least-request: a target held slow gets markedly fewer of 300 requests', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const fast = [await startUpstream(t), await startUpstream(t)]
  const slow = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('slow') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [fast[0].url, slow.url, fast[1].url], balance: 'least-request' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  t.equal(gw.app.sssonector.upstream('a').stats().balance, 'least-request')
  // 300 requests, 60 in flight at most; the slow target holds whatever it gets until all were sent.
  let sent = 0
  const pending = new Set<Promise<number>>()
  while (sent < 300) {
    while (pending.size < 60 && sent < 300) {
      sent++
      const p: Promise<number> = get(gw, `/${sent}`).finally(() => pending.delete(p))
      pending.add(p)
    }
    await Promise.race(pending)
  }
  gate.open()
  const codes = await Promise.all(pending)
  t.ok(codes.every((c) => c === 200))
  t.ok(slow.seen.length < 30, `the slow target got ${slow.seen.length} of 300 (fair share: 100)`)
  t.equal(fast[0].seen.length + fast[1].seen.length + slow.seen.length, 300)
})

t.test('consistent-hash: a key always reaches the same target; a removed target moves only its keys', async (t) => {
  const ups: Upstream[] = []
  for (let i = 0; i < 4; i++) ups.push(await startUpstream(t))
  const gw = await startGateway(t, {
    upstreams: {
      a: {
        targets: ups.map((u) => u.url),
        balance: 'consistent-hash',
        hashKey: (req) => String(req.headers['x-user'] ?? '')
      }
    },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const where = async (user: string): Promise<number> => {
    const before = ups.map((u) => u.seen.length)
    await get(gw, '/x', { 'x-user': user })
    return ups.findIndex((u, i) => u.seen.length > before[i])
  }
  const users = Array.from({ length: 40 }, (_, i) => `user-${i}`)
  const first = new Map<string, number>()
  for (const u of users) first.set(u, await where(u))
  for (const u of users) t.equal(await where(u), first.get(u), `${u} sticks`)
  t.ok(new Set(first.values()).size >= 3, 'keys spread over the targets')
  const victim = first.get('user-0')!
  await gw.app.sssonector.upstream('a').removeTarget(ups[victim].url)
  for (const u of users) {
    const now = await where(u)
    if (first.get(u) === victim) t.not(now, victim, `${u} moved off the removed target`)
    else t.equal(now, first.get(u), `${u} did not move`)
  }
})

t.test('random spreads over every target', async (t) => {
  const ups = [await startUpstream(t), await startUpstream(t)]
  const gw = await startGateway(t, {
    upstreams: { a: { targets: ups.map((u) => u.url), balance: 'random' } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  for (let i = 0; i < 200; i++) await get(gw, '/x')
  t.ok(ups.every((u) => u.seen.length > 50), `spread: ${ups.map((u) => u.seen.length).join('/')}`)
})

t.test('setTargets applies a new list in one step: new ones serve at once, removed ones drain', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const a = await startUpstream(t, async (req, res) => {
    if (req.url === '/hold') await gate.wait()
    res.end('a')
  })
  const b = await startUpstream(t)
  const c = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { u: { targets: [a.url, b.url], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const u = gw.app.sssonector.upstream('u')
  const held = request(`${gw.url}/hold`, { dispatcher: gw.agent }) // round-robin: to a
  await gate.waitingFor(1)
  const applied = u.setTargets([{ url: b.url, weight: 1 }, { url: c.url, weight: 2 }])
  t.same(u.stats().targets.map((x) => [x.url, x.weight]), [[b.url, 1], [c.url, 2]], 'in force at once')
  for (let i = 0; i < 30; i++) await get(gw, '/x')
  t.equal(a.seen.length, 1, 'the removed target took nothing new')
  t.same([b.seen.length, c.seen.length], [10, 20], 'weights of the new list')
  gate.open()
  t.equal((await held).statusCode, 200, 'its request in flight finished')
  await (await held).body.dump()
  await applied
  await a.socketsAtMost(0)
  await t.rejects(u.setTargets([b.url, b.url]), { code: 'FST_SSSONECTOR_OPTIONS', message: /listed twice/ })
  await t.rejects(u.setTargets('x' as never), { code: 'FST_SSSONECTOR_OPTIONS' })
  await t.rejects(u.setTargets(['ftp://x']), { code: 'FST_SSSONECTOR_OPTIONS' })
})

import t from 'tap'
import type http from 'node:http'
import { request } from 'undici'
import { startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway } from './helpers/servers.js'

const CLIENTS = 32

/** `CLIENTS` clients in a closed loop until `until` (ms, Date.now), each sending its next GET when its last is answered; answers counted. */
async function closedLoop (gw: Gateway, until: number): Promise<number> {
  let answered = 0
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (Date.now() < until) {
      const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
      await res.body.text()
      if (res.statusCode === 200) answered++
    }
  }))
  return answered
}

t.test('a target that answered fast, then stops answering (its process frozen): under peak EWMA the age of its waiting requests counts against it, so few hang on it and the others keep the load', async (t) => {
  let frozen = false
  const held = new Set<http.ServerResponse>()
  const ok = (_req: http.IncomingMessage, res: http.ServerResponse): void => { res.end('ok') }
  const a = await startUpstream(t, ok)
  const b = await startUpstream(t, ok)
  const c = await startUpstream(t, (_req, res) => {
    if (frozen) held.add(res)
    else res.end('ok')
  })
  const gw = await startGateway(t, {
    upstreams: { u: { targets: [a.url, b.url, c.url] } },
    routes: [{ prefix: '/', upstream: 'u' }]
  })
  const warm = await closedLoop(gw, Date.now() + 300)
  t.ok(c.seen.length > 0, `c answered ${c.seen.length} of ${warm} requests while it was well`)

  frozen = true
  const start = Date.now()
  // The clients run for 2 s; those whose request hangs on c stay until it is released after.
  const loop = closedLoop(gw, start + 2_000)
  let early = -1
  const late = await new Promise<number>((resolve) => {
    setTimeout(() => { early = held.size }, 500)
    setTimeout(() => {
      const hung = held.size
      frozen = false
      for (const res of held) res.end('late')
      resolve(hung)
    }, 2_000)
  })
  const answered = await loop
  t.comment(`c frozen: ${early} requests hung on it after 500 ms, ${late} after 2 s; ${answered} answered in all (${CLIENTS} clients)`)
  t.ok(late < CLIENTS / 2, `fewer than half the clients hung on c (${late})`)
  t.equal(late, early, 'none sent to c after its first 500 ms frozen: a target that stops answering does not look faster the longer it holds its requests')
})

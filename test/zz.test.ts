import t from 'tap'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'
t.test('x', async (t) => {
  const gate = new Gate()
  const ups = await Promise.all([0, 1, 2].map(async () => await startUpstream(t, async (req, res) => { if (req.url?.startsWith('/hold')) await gate.wait(); res.end('ok') })))
  const logs: string[] = []
  const gw = await startGateway(t, { upstreams: { a: { targets: ups.map((u) => u.url), balance: 'round-robin' } }, routes: [{ prefix: '/', upstream: 'a' }] }, undefined, { logger: { level: 'info', stream: { write: (l: string) => { logs.push(l) } } } })
  const all = Array.from({ length: 30 }, (_, i) => request(`${gw.url}/hold/${i}`, { dispatcher: gw.agent }).then(async (r) => ({ s: r.statusCode, b: await r.body.text() })))
  await gate.waitingFor(30)
  ups[0].server.closeAllConnections()
  const before = Date.now()
  setTimeout(() => gate.open(), 50)
  const res = await Promise.all(all)
  console.log(res.map((r) => r.s).join(','), Date.now() - before)
  console.log(logs.filter((l) => /retry|rotation/.test(l)).slice(0, 5).join(''))
})

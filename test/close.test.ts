import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { request } from 'undici'
import { Gate, startGateway, startUpstream } from './helpers/servers.js'

const run = promisify(execFile)
const built = existsSync(new URL('../dist/lib/index.js', import.meta.url))

t.test('app.close() waits for the requests in flight, then closes every upstream socket', async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const up = await startUpstream(t, async (_req, res) => { await gate.wait(); res.end('done') })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const held = Array.from({ length: 3 }, () => request(`${gw.url}/x`, { dispatcher: gw.agent }))
  await gate.waitingFor(3)
  let closed = false
  const closing = gw.app.close().then(() => { closed = true })
  // Given 300 ms, a close that did not wait for them would be over (it takes a few ms).
  await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 300))])
  t.equal(closed, false, 'close waits while requests are in flight')
  gate.open()
  for (const p of held) {
    const res = await p
    t.equal(res.statusCode, 200)
    t.equal(await res.body.text(), 'done')
  }
  await closing
  await up.socketsAtMost(0)
  t.equal(up.sockets.size, 0, 'no socket to the upstream is left open')
  await t.rejects(gw.app.sssonector.upstream('a').request({ method: 'GET', path: '/' }), { code: 'FST_SSSONECTOR_CLOSED' })
})

t.test('nothing of the plugin outlives app.close(): a child process exits by itself with no handle left', { skip: built ? false : 'dist/ not built: run npm run build' }, async (t) => {
  const { stdout } = await run(process.execPath, ['test/fixtures/close-app.mjs'], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    timeout: 10_000 // the guard: a leaked timer or socket would keep it alive
  })
  const out = JSON.parse(stdout) as { idleBefore: number, resources: string[], listeners: number }
  t.ok(out.idleBefore > 0, 'it had idle pooled connections before closing')
  t.same(out.resources, [], 'no socket, server or timer left')
  t.equal(out.listeners, 0, 'no signal listener left')
})

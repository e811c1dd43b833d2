import t from 'tap'
import http from 'node:http'
import { Gate, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'
import { exitWithin, gateway, skip } from './fixtures/gateway-process.js'
import type { Child } from './fixtures/gateway-process.js'

// The gateway logs to stdout (pino's default destination) and the reader of that pipe is gone,
// as when `node app | pino-pretty` is stopped together and the reader goes first. Every exit
// path must still end the process, with its own code, within gracefulClose.delay.

/** A gateway whose stdout pipe has no reader left: the test's end of it is destroyed. */
async function brokenStdout (t: Teardown, target: string, delay: number, flags = 'signals'): Promise<Child> {
  const gw = await gateway(t, target, { delay, flags })
  gw.child.stdout!.destroy()
  return gw
}

async function gatedUpstream (t: Teardown, gate: Gate): Promise<string> {
  const up = await startUpstream(t, async (req, res) => {
    if (req.url === '/health') { res.end('ok'); return }
    await gate.wait()
    res.end('done')
  })
  return up.url
}

function hold (port: number, t: Teardown): void {
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  http.get({ host: '127.0.0.1', port, path: '/held', agent }).on('error', () => {})
}

t.test('stdout without a reader: SIGTERM with nothing in flight exits 0 within the delay', { skip }, async (t) => {
  const gate = new Gate()
  gate.open()
  const delay = 2000
  const gw = await brokenStdout(t, await gatedUpstream(t, gate), delay)
  const since = Date.now()
  gw.child.kill('SIGTERM')
  const result = await exitWithin(gw, since, delay + 3000)
  t.not(result, 'still running', `the process exited within ${delay + 3000} ms of SIGTERM`)
  if (result === 'still running') return
  t.equal(result.code, 0, `exit 0: the close completed before the delay ran out, which exits 1 (exit seen ${result.ms} ms after SIGTERM, delay ${delay} ms)`)
})

t.test('stdout without a reader: requests held past the delay, exit 1 at the delay', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const delay = 1000
  const gw = await brokenStdout(t, await gatedUpstream(t, gate), delay)
  hold(gw.port, t)
  await gate.waitingFor(1)
  const since = Date.now()
  gw.child.kill('SIGTERM')
  const result = await exitWithin(gw, since, delay + 3000)
  t.not(result, 'still running', `the process exited within ${delay + 3000} ms of SIGTERM`)
  if (result === 'still running') return
  t.equal(result.code, 1, `exit 1: the delay ran out (exit seen ${result.ms} ms after SIGTERM, delay ${delay} ms)`)
})

t.test('stdout without a reader: a second signal exits 1 at once', { skip }, async (t) => {
  const gate = new Gate()
  t.teardown(() => gate.open())
  const delay = 10_000
  const gw = await brokenStdout(t, await gatedUpstream(t, gate), delay)
  hold(gw.port, t)
  await gate.waitingFor(1)
  gw.child.kill('SIGTERM')
  await gw.received('SIGTERM')
  const since = Date.now()
  gw.child.kill('SIGINT')
  const result = await exitWithin(gw, since, 3000)
  t.not(result, 'still running', 'the process exited within 3000 ms of the second signal')
  if (result === 'still running') return
  t.equal(result.code, 1, 'exit 1')
})

t.test('stdout without a reader: an uncaught error exits 1, the close completed well before the delay', { skip }, async (t) => {
  const gate = new Gate()
  gate.open()
  const delay = 10_000
  const gw = await brokenStdout(t, await gatedUpstream(t, gate), delay, 'throw')
  const since = Date.now()
  const agent = new http.Agent()
  t.teardown(() => agent.destroy())
  http.get({ host: '127.0.0.1', port: gw.port, path: '/boom', agent }, (res) => { res.resume() }).on('error', () => {})
  // Exit 1 comes both from a completed close after an error and from the delay: the time tells them apart.
  const result = await exitWithin(gw, since, delay / 2)
  t.not(result, 'still running', `the process exited within ${delay / 2} ms of the error, half the delay: the close completed`)
  if (result === 'still running') return
  t.equal(result.code, 1, `exit 1 after an error (exit seen ${result.ms} ms after it)`)
})

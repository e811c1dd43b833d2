import t from 'tap'
import type { Dispatcher } from 'undici'
import { Upstream } from '../lib/upstream.js'
import { resolveOptions } from '../lib/options/index.js'
import { FakeClient, dispatchAt, dispatchCount, fakeFactory } from './helpers/fake-client.js'
import { admit, send, settled } from './helpers/leases.js'

function upstream (extra: Record<string, unknown> = {}, n = 2): { up: Upstream, made: FakeClient[] } {
  const made: FakeClient[] = []
  const targets = Array.from({ length: n }, (_, i) => `http://127.0.0.1:${i + 1}`)
  const config = resolveOptions({ upstreams: { u: { targets, balance: 'round-robin', ...extra } } }).upstreams[0]
  return { up: new Upstream(config, { factory: fakeFactory(made) }), made }
}

/** A caller's handler on undici's deprecated API, recording what it is told. */
interface Recorder extends Dispatcher.DispatchHandler {
  status: number
  body: string
  error: Error | null
  done: boolean
  headers: string[]
  seen: number[]
}

function recorder (): Recorder {
  const r = {
    status: 0,
    body: '',
    error: null as Error | null,
    done: false,
    headers: [] as string[],
    seen: [] as number[],
    onConnect () {},
    onHeaders (status: number, raw: Buffer[]) {
      r.seen.push(status)
      r.status = status
      r.headers = raw.map((b) => b.toString())
      return true
    },
    onData (c: Buffer) {
      r.body += c.toString()
      return true
    },
    onComplete () { r.done = true },
    onError (err: Error) { r.error = err }
  }
  return r
}

const refused = (): Error => Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })

// The exchange's own timers (backoffs) are unref'd: a server keeps a real process alive, this keeps the test's.
const keepAlive = setInterval(() => {}, 1000)
t.teardown(() => { clearInterval(keepAlive) })

t.test('each attempt\'s outcome reaches the lease\'s record', async (t) => {
  const { up, made } = upstream()
  const lease = admit(up)!
  send(lease)
  made[0].fail(refused())
  made[1].complete()
  t.match(lease.history, [
    { target: 'http://127.0.0.1:1', category: 'connect_refused', retried: true },
    { target: 'http://127.0.0.1:2', status: 200, category: null, retried: false }
  ])
  t.equal(lease.attempts, 2)
  lease.release()
  await up.close()
})

t.test('a retriable 503 is kept while its retry is tried, and passed on as it came when no retry can be made', async (t) => {
  const { up, made } = upstream({}, 1)
  const lease = admit(up)!
  const r = recorder()
  send(lease, r)
  // The retries' dispatches, counted from here (a backoff may end before the test looks).
  const first = dispatchCount()
  made[0].complete(503, Buffer.from('busy'), { 'x-from': 'upstream' })
  await settled()
  // One target, which just answered 503: the retry looks again after backoffs, finds it again (a tried target
  // may be taken after a backoff), and it answers 503 once more, until the attempts run out.
  for (let i = 0; i < 3; i++) {
    const client = await dispatchAt(first + i)
    client.complete(503, Buffer.from(`busy ${i}`), { 'x-from': 'upstream' })
    await settled()
  }
  t.equal(r.status, 503, 'the upstream\'s status')
  t.equal(r.body, 'busy 2', 'the last answer\'s body, as it came')
  t.ok(r.headers.includes('x-from'), 'its headers')
  t.equal(r.error, null, 'not a gateway error')
  t.equal(lease.attempts, 4, 'pool.maxRetries (3) retries, then the answer')
  lease.release()
  await up.close()
})

t.test('a malformed answer is retried for an idempotent request on a target not tried yet, never on the same one', async (t) => {
  const { up, made } = upstream({}, 2)
  const bad = (): Error => Object.assign(new Error('Response does not match the HTTP/1.1 protocol'), { code: 'HPE_INVALID_CONSTANT' })
  const first = admit(up)!
  const r1 = recorder()
  send(first, r1)
  made[0].fail(bad())
  made[1].complete(200, Buffer.from('fine'))
  t.equal(r1.status, 200, 'a GET moved to the other target')
  first.release()
  const { up: one, made: m1 } = upstream({}, 1)
  const alone = admit(one)!
  const r2 = recorder()
  send(alone, r2)
  m1[0].fail(bad())
  t.equal(m1.reduce((n, c) => n + c.dispatched, 0), 1, 'with no other target, not sent again')
  t.match(r2.error, { code: 'FST_SSSONECTOR_UPSTREAM_PROTOCOL' })
  alone.release()
  await up.close()
  await one.close()
})

t.test('1xx answers are not passed on; the final answer is', async (t) => {
  const { up, made } = upstream({}, 1)
  const lease = admit(up)!
  const r = recorder()
  send(lease, r)
  const entry = made[0].inflight[0]
  entry.handler.onResponseStart?.(entry.controller, 103, { link: '</a.css>' }, 'Early Hints')
  made[0].complete(200, Buffer.from('ok'))
  t.same(r.seen, [200], 'the caller saw only the final answer')
  lease.release()
  await up.close()
})

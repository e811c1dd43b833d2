import t from 'tap'
import { request } from 'undici'
import type { Dispatcher } from 'undici'
import { startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Teardown } from './helpers/servers.js'
import { resolveOptions } from '../lib/options/index.js'
import { keyedRequest, retryAfterError, retryAfterStatus } from '../lib/retry-policy.js'
import type { SssonectorOptions } from '../types/index.js'

async function send (gw: Gateway, path: string, method: string, headers: Record<string, string>, body: Buffer | string = 'order'): Promise<{ status: number, code: string | undefined }> {
  const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent, method: method as Dispatcher.HttpMethod, body, headers })
  const text = await res.body.text()
  const json = String(res.headers['content-type']).startsWith('application/json')
  return { status: res.statusCode, code: json ? (JSON.parse(text) as { code?: string }).code : undefined }
}

interface Pair {
  gw: Gateway
  /** Requests each target read in full, by their x-id (the resetting one resets after reading). */
  reset: Map<string, number>
  served: Map<string, number>
}

/**
 * Two targets, round-robin: one reads each request whole and then resets the
 * connection (or answers `status`), the other answers 200. The breaker is off:
 * only the retry decision is tested.
 */
async function pair (t: Teardown, retry: SssonectorOptions['retry'], status?: number): Promise<Pair> {
  const reset = new Map<string, number>()
  const served = new Map<string, number>()
  const note = (m: Map<string, number>, id: unknown): void => { m.set(String(id), (m.get(String(id)) ?? 0) + 1) }
  const bad = await startUpstream(t, (req, res) => {
    note(reset, req.headers['x-id'])
    if (status !== undefined) {
      res.statusCode = status
      res.end('busy')
    } else {
      req.socket.resetAndDestroy()
    }
  })
  const good = await startUpstream(t, (req, res) => {
    note(served, req.headers['x-id'])
    res.end('ok')
  })
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [bad.url, good.url], balance: 'round-robin', circuitBreaker: false, outlierDetection: false } },
    routes: [{ prefix: '/', upstream: 'a' }],
    ...(retry === undefined ? {} : { retry })
  })
  return { gw, reset, served }
}

t.test('a POST or PATCH with an Idempotency-Key that the target resets after reading it is retried on the other target, by default', async (t) => {
  const { gw, reset, served } = await pair(t, undefined)
  const out = []
  for (let i = 0; i < 4; i++) out.push(await send(gw, `/orders/${i}`, i % 2 === 0 ? 'POST' : 'PATCH', { 'x-id': `k${i}`, 'idempotency-key': `"k${i}"` }))
  t.same(out.map((o) => o.status), [200, 200, 200, 200], 'every keyed request succeeded')
  t.ok(reset.size >= 2, `the resetting target read ${reset.size} of them first`)
  t.same([...served.values()], [1, 1, 1, 1], 'each reached the good target once')
  const u = gw.app.sssonector.upstream('a').stats()
  t.equal(u.targets[0].errors.reset, reset.size)
  t.equal(u.targets[0].window.retries, reset.size, 'counted as retries of the resetting target')
})

t.test('without the key, a POST the target reset is not retried: 502 UPSTREAM_RESET', async (t) => {
  const { gw, reset, served } = await pair(t, undefined)
  const out = []
  for (let i = 0; i < 4; i++) out.push(await send(gw, `/orders/${i}`, 'POST', { 'x-id': `p${i}` }))
  const failed = out.filter((o) => o.status === 502)
  t.equal(failed.length, reset.size, 'each POST the resetting target read failed')
  t.ok(failed.length >= 2)
  t.ok(failed.every((o) => o.code === 'FST_SSSONECTOR_UPSTREAM_RESET'))
  t.equal(served.size + reset.size, 4, 'each POST reached one target, once')
  t.ok([...reset.keys()].every((id) => !served.has(id)), 'none was repeated on the other')
  t.equal(gw.app.sssonector.upstream('a').stats().targets[0].window.retries, 0)
})

t.test('a keyed POST answered 503 is retried like an idempotent request; an unkeyed one gets the 503', async (t) => {
  const { gw, reset, served } = await pair(t, undefined, 503)
  const keyed = []
  for (let i = 0; i < 2; i++) keyed.push((await send(gw, `/k${i}`, 'POST', { 'x-id': `k${i}`, 'Idempotency-Key': `k${i}` })).status)
  t.same(keyed, [200, 200])
  const plain = []
  for (let i = 0; i < 2; i++) plain.push((await send(gw, `/p${i}`, 'POST', { 'x-id': `p${i}` })).status)
  t.same(plain.sort(), [200, 503], 'one of the two landed on the 503 target and got its answer')
  t.ok(reset.size >= 2 && served.size === 3)
})

t.test('a keyed POST whose body is larger than retry.bufferBody is not retried: the reset target consumed it', async (t) => {
  const { gw, reset, served } = await pair(t, { bufferBody: 1024 })
  const out = []
  for (let i = 0; i < 4; i++) out.push(await send(gw, `/big/${i}`, 'POST', { 'x-id': `b${i}`, 'idempotency-key': `b${i}` }, Buffer.alloc(4096, 'x')))
  const failed = out.filter((o) => o.status === 502)
  t.ok(failed.length >= 2, `the ones the resetting target read got 502 (${failed.length})`)
  t.equal(failed.length, reset.size)
  t.ok([...reset.keys()].every((id) => !served.has(id)), 'none was sent again')
  // The same with a body that fits: retried.
  const small = await send(gw, '/small', 'POST', { 'x-id': 's', 'idempotency-key': 's' }, Buffer.alloc(1024, 'x'))
  const small2 = await send(gw, '/small2', 'POST', { 'x-id': 's2', 'idempotency-key': 's2' }, Buffer.alloc(1024, 'x'))
  t.same([small.status, small2.status], [200, 200], 'a keyed body within bufferBody is replayed')
})

t.test('retry.idempotencyKey: false turns it off; a header name of one\'s own replaces it', async (t) => {
  const off = await pair(t, { idempotencyKey: false })
  const offOut = []
  for (let i = 0; i < 2; i++) offOut.push((await send(off.gw, `/o${i}`, 'POST', { 'x-id': `o${i}`, 'idempotency-key': `o${i}` })).status)
  t.same(offOut.sort(), [200, 502], 'the key is ignored')

  const own = await pair(t, { idempotencyKey: 'X-Request-Key' })
  const ownOut = []
  for (let i = 0; i < 2; i++) ownOut.push((await send(own.gw, `/n${i}`, 'POST', { 'x-id': `n${i}`, 'x-request-key': `n${i}` })).status)
  t.same(ownOut, [200, 200], 'its own header name makes a POST retriable')
  const stdOut = []
  for (let i = 0; i < 2; i++) stdOut.push((await send(own.gw, `/s${i}`, 'POST', { 'x-id': `s${i}`, 'idempotency-key': `s${i}` })).status)
  t.same(stdOut.sort(), [200, 502], 'the standard name no longer does')
  const empty = []
  for (let i = 0; i < 2; i++) empty.push((await send(own.gw, `/e${i}`, 'POST', { 'x-id': `e${i}`, 'x-request-key': '' })).status)
  t.same(empty.sort(), [200, 502], 'an empty key is no key')
})

t.test('upstream.request() and the dispatcher: a keyed POST with a body of known length is read in full and retried', async (t) => {
  const { gw, served } = await pair(t, undefined)
  const a = gw.app.sssonector.upstream('a')
  const statuses = []
  for (let i = 0; i < 2; i++) {
    const { Readable } = await import('node:stream')
    const res = await a.request({ method: 'POST', path: `/c${i}`, headers: { 'X-Id': `c${i}`, 'Idempotency-Key': `c${i}`, 'content-length': '5' }, body: Readable.from([Buffer.from('hello')]) })
    await res.body.text()
    statuses.push(res.statusCode)
  }
  t.same(statuses, [200, 200])
  for (let i = 0; i < 2; i++) {
    const res = await request(`http://ignored/d${i}`, { dispatcher: a.dispatcher, method: 'PATCH', headers: ['x-id', `d${i}`, 'Idempotency-Key', `d${i}`], body: 'hello' })
    await res.body.text()
    statuses.push(res.statusCode)
  }
  t.same(statuses, [200, 200, 200, 200])
  t.equal(served.size, 4)
})

t.test('retry.idempotencyKey is validated: a header name or false', async (t) => {
  const at = (retry: unknown): SssonectorOptions => ({ upstreams: { a: { targets: [], retry: retry as SssonectorOptions['retry'] } } })
  t.equal(resolveOptions({ upstreams: { a: { targets: [] } } }).upstreams[0].retry!.idempotencyKey, 'idempotency-key', 'on by default, the draft\'s header')
  t.equal(resolveOptions(at({ idempotencyKey: false })).upstreams[0].retry!.idempotencyKey, null)
  t.equal(resolveOptions(at({ idempotencyKey: 'X-Request-Key' })).upstreams[0].retry!.idempotencyKey, 'x-request-key', 'compared without case')
  t.equal(resolveOptions({ upstreams: { a: { targets: [] } }, retry: { idempotencyKey: false } }).upstreams[0].retry!.idempotencyKey, null, 'from the top level')
  for (const bad of ['', 'Idempotency Key', 'key:', true, 0, null, ['Idempotency-Key']]) {
    t.throws(() => resolveOptions(at({ idempotencyKey: bad })), { message: /^upstreams\.a\.retry\.idempotencyKey: .* is not a header name \(a token such as "Idempotency-Key"\) or false/ }, `refuses ${JSON.stringify(bad)}`)
  }
})

t.test('the policy: a POST or PATCH with the key is retried as an idempotent request, whatever form its headers take', async (t) => {
  const policy = resolveOptions({ upstreams: { a: { targets: [] } } }).upstreams[0].retry
  t.ok(keyedRequest(policy, 'POST', { 'Idempotency-Key': 'k' }), 'an object, any case')
  t.ok(keyedRequest(policy, 'PATCH', ['x', '1', 'idempotency-key', 'k']), 'a flat list')
  t.ok(keyedRequest(policy, 'POST', [['IDEMPOTENCY-KEY', 'k']]), 'a list of pairs')
  t.ok(keyedRequest(policy, 'POST', new Map([['idempotency-key', 'k']])), 'an iterable of pairs')
  t.notOk(keyedRequest(policy, 'POST', { 'idempotency-key': '' }), 'an empty value')
  t.notOk(keyedRequest(policy, 'POST', ['idempotency-key']), 'a name with no value')
  t.notOk(keyedRequest(policy, 'POST', null))
  t.notOk(keyedRequest(policy, 'DELETE', { 'idempotency-key': 'k' }), 'POST and PATCH only (the others follow retry.methods)')
  t.notOk(keyedRequest(null, 'POST', { 'idempotency-key': 'k' }), 'retry: false')
  const facts = { method: 'POST', keyed: true, replayable: true, attempts: 1, maxRetries: 3 }
  t.equal(retryAfterError(policy, 'reset', facts), 'counted')
  t.equal(retryAfterError(policy, 'protocol', facts), 'elsewhere')
  t.equal(retryAfterError(policy, 'headers_timeout', facts), 'no', 'a timeout never: the upstream may still be at it')
  t.equal(retryAfterError(policy, 'reset', { ...facts, replayable: false }), 'no', 'a body that cannot be sent again')
  t.equal(retryAfterError(policy, 'reset', { ...facts, keyed: false }), 'no')
  t.equal(retryAfterStatus(policy, 503, facts), 'counted')
  t.equal(retryAfterStatus(policy, 503, { ...facts, keyed: false }), 'no')
})

import t from 'tap'
import { readFileSync } from 'node:fs'
import https from 'node:https'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { refusedPort, startGateway } from './helpers/servers.js'
import { categorize, toUpstreamError } from '../lib/errors.js'

const cert = readFileSync(new URL('./fixtures/cert.pem', import.meta.url))
const key = readFileSync(new URL('./fixtures/key.pem', import.meta.url))

interface ErrorBody { statusCode: number, code: string, error: string, message: string }

t.test('connect refused: 502 FST_SSSONECTOR_UPSTREAM_CONNECT, never a 500; then the target is skipped: fast 503', async (t) => {
  const port = await refusedPort()
  const gw = await startGateway(t, {
    // Long enough that no quick trial (a hundredth of it, 6 s) falls within the test.
    upstreams: { a: { targets: [`http://127.0.0.1:${port}`], pool: { retryInterval: '10m', maxRetryInterval: '1h' } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent, method: 'POST', body: 'x' })
  t.equal(res.statusCode, 502)
  t.match(res.headers['content-type'], /application\/json/)
  const body = await res.body.json() as ErrorBody
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_CONNECT')
  t.equal(body.statusCode, 502)
  const again = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(again.statusCode, 503, 'skipped for pool.retryInterval')
  t.equal(again.headers['retry-after'], '600')
  t.equal((await again.body.json() as ErrorBody).code, 'FST_SSSONECTOR_NO_TARGET')
  const s = gw.app.sssonector.upstream('a').stats()
  t.equal(s.targets[0].errors.connect_refused, 1, 'one connect attempt, not two')
  t.equal(s.targets[0].down?.failures, 1)
  t.equal(s.active, 0)
})

t.test('no usable target: 503 FST_SSSONECTOR_NO_TARGET with Retry-After', async (t) => {
  const gw = await startGateway(t, {
    upstreams: { empty: { targets: [], pool: { retryInterval: '7s' } } },
    routes: [{ prefix: '/', upstream: 'empty' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '7')
  const body = await res.body.json() as ErrorBody
  t.equal(body.code, 'FST_SSSONECTOR_NO_TARGET')
  t.same(gw.app.sssonector.upstream('empty').stats().rejected, { no_target: 1 })
})

t.test('TLS failure: 502 FST_SSSONECTOR_UPSTREAM_TLS', async (t) => {
  const server = https.createServer({ cert, key }, (_req, res) => res.end('secret'))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const port = (server.address() as AddressInfo).port
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [`https://127.0.0.1:${port}`] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const res = await request(`${gw.url}/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 502)
  const body = await res.body.json() as ErrorBody
  t.equal(body.code, 'FST_SSSONECTOR_UPSTREAM_TLS')
  // The only target may be tried again by a retry backing off (its quick trial): every
  // attempt is a failed handshake, counted as tls, and no more than maxRetries + 1.
  const { errors } = gw.app.sssonector.upstream('a').stats().targets[0]
  t.same(Object.keys(errors), ['tls'], 'counted as tls only')
  const tls = errors.tls ?? 0
  t.ok(tls >= 1 && tls <= 4, `once per attempt, at most 4 (${tls})`)
})

t.test('every undici and Node failure code has its category and status', async (t) => {
  const cases: Array<[string, string, number]> = [
    ['ECONNREFUSED', 'connect_refused', 502],
    ['EHOSTUNREACH', 'connect_refused', 502],
    ['UND_ERR_CONNECT_TIMEOUT', 'connect_timeout', 504],
    ['ENOTFOUND', 'dns', 502],
    ['EAI_AGAIN', 'dns', 502],
    ['UND_ERR_SOCKET', 'reset', 502],
    ['ECONNRESET', 'reset', 502],
    ['UND_ERR_HEADERS_TIMEOUT', 'headers_timeout', 504],
    ['UND_ERR_BODY_TIMEOUT', 'body_timeout', 504],
    ['HPE_INVALID_CONSTANT', 'protocol', 502],
    ['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'protocol', 502],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'tls', 502],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'tls', 502],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'tls', 502],
    ['SOMETHING_ELSE', 'unknown', 502]
  ]
  for (const [code, category, status] of cases) {
    const err = Object.assign(new Error(code), { code })
    t.equal(categorize(err), category, code)
    const mapped = toUpstreamError(err)
    t.equal(mapped.category, category)
    t.equal(mapped.statusCode, status, `${code} answers ${status}`)
    t.match(mapped.code, /^FST_SSSONECTOR_/)
    t.equal(mapped.cause, err, 'the original error is kept as cause')
    t.equal(toUpstreamError(mapped), mapped, 'already mapped: unchanged')
  }
  const aborted = Object.assign(new Error('aborted'), { code: 'UND_ERR_ABORTED' })
  t.equal(toUpstreamError(aborted).category, 'client_abort')
  t.equal(toUpstreamError(aborted), aborted, 'a client abort keeps undici\'s error')
  t.equal(categorize(null), 'unknown')
  t.equal(toUpstreamError('text').category, 'unknown')
})

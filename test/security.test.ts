import t from 'tap'
import { readFileSync } from 'node:fs'
import https from 'node:https'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { rawRequest, startGateway, startUpstream } from './helpers/servers.js'

const cert = readFileSync(new URL('./fixtures/cert.pem', import.meta.url))
const key = readFileSync(new URL('./fixtures/key.pem', import.meta.url))

t.test('no open proxy: absolute-form URIs, Host and X-Forwarded-Host never choose where the gateway connects', async (t) => {
  const target = await startUpstream(t)
  const other = await startUpstream(t) // stands for any host an attacker would name
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [target.url] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const port = Number(new URL(gw.url).port)
  const otherHost = `127.0.0.1:${other.port}`
  const attempts = [
    `GET http://${otherHost}/steal HTTP/1.1\r\nHost: ${otherHost}\r\nConnection: close\r\n\r\n`,
    `GET /steal HTTP/1.1\r\nHost: ${otherHost}\r\nConnection: close\r\n\r\n`,
    `GET /steal HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: ${otherHost}\r\nConnection: close\r\n\r\n`,
    `GET //${otherHost}/steal HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`
  ]
  for (const raw of attempts) {
    const out = await rawRequest(port, raw)
    t.match(out, /^HTTP\/1.1 (200|400)/, raw.split('\r\n')[0])
  }
  t.equal(other.seen.length, 0, 'the named host got nothing')
  // Absolute-form and scheme-relative targets are refused with 400 by @fastify/http-proxy;
  // the Host and X-Forwarded-Host cases reach the target.
  t.equal(target.seen.length, 2, 'the target got the others')
  for (const seen of target.seen) t.equal(seen.headers.host, `127.0.0.1:${target.port}`, 'with its own Host')
})

t.test('https targets: a self-signed certificate is refused by default and accepted with tls.ca', async (t) => {
  const server = https.createServer({ cert, key }, (req, res) => res.end(`secure ${req.url}`))
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`

  const refused = await startGateway(t, {
    upstreams: { a: { targets: [origin] } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const r1 = await request(`${refused.url}/x`, { dispatcher: refused.agent })
  t.equal(r1.statusCode, 502)
  t.equal((await r1.body.json() as { code: string }).code, 'FST_SSSONECTOR_UPSTREAM_TLS')

  const trusted = await startGateway(t, {
    upstreams: { a: { targets: [origin], tls: { ca: cert } } },
    routes: [{ prefix: '/', upstream: 'a' }]
  })
  const r2 = await request(`${trusted.url}/x`, { dispatcher: trusted.agent })
  t.equal(r2.statusCode, 200)
  t.equal(await r2.body.text(), 'secure /x')
})

t.test('bodies beyond the route\'s bodyLimit get 413, with a length or chunked, and reach no upstream in full', async (t) => {
  const up = await startUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { a: { targets: [up.url] } },
    routes: [
      { prefix: '/small', upstream: 'a', bodyLimit: 1024 },
      { prefix: '/default', upstream: 'a' }
    ]
  }, undefined, { bodyLimit: 2048 })

  const fits = await request(`${gw.url}/small/x`, { dispatcher: gw.agent, method: 'POST', body: Buffer.alloc(1024, 'a') })
  t.equal(fits.statusCode, 200, 'at the limit: passes')
  await fits.body.dump()

  const big = await request(`${gw.url}/small/x`, { dispatcher: gw.agent, method: 'POST', body: Buffer.alloc(1025, 'a') })
  t.equal(big.statusCode, 413)
  t.equal((await big.body.json() as { code: string }).code, 'FST_SSSONECTOR_BODY_TOO_LARGE')

  // Chunked: no Content-Length, the bytes are counted as they stream.
  const req = http.request(`${gw.url}/small/x`, { method: 'POST', headers: { 'transfer-encoding': 'chunked' } })
  for (let i = 0; i < 8; i++) req.write(Buffer.alloc(512, 'b'))
  req.end()
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  t.equal(res.statusCode, 413)
  res.resume()

  const big2 = await request(`${gw.url}/default/x`, { dispatcher: gw.agent, method: 'POST', body: Buffer.alloc(2049, 'a') })
  t.equal(big2.statusCode, 413, 'the instance bodyLimit applies by default')
  await big2.body.dump()
  for (const seen of up.seen) t.ok(seen.body.length <= 1024 || seen.url.startsWith('/default'), 'no oversized body reached the upstream in full')
  t.equal(gw.app.sssonector.upstream('a').stats().active, 0)
})

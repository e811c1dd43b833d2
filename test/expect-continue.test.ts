import t from 'tap'
import http from 'node:http'
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { startGateway, startUpstream } from './helpers/servers.js'

/** An upload as curl, .NET and many SDKs send it: headers with `Expect: 100-continue`, the body only after `100 Continue`. */
async function expectUpload (url: string, body: Buffer): Promise<{ status: number, text: string, continued: boolean }> {
  const req = http.request(url, { method: 'PUT', headers: { expect: '100-continue', 'content-length': String(body.length), 'content-type': 'application/octet-stream' } })
  let continued = false
  req.on('continue', () => {
    continued = true
    req.end(body)
  })
  req.flushHeaders()
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  let text = ''
  for await (const c of res) text += (c as Buffer).toString()
  // An early final answer came before the body went: nothing left to send.
  if (!continued) req.destroy()
  return { status: res.statusCode!, text, continued }
}

t.test('Expect: 100-continue: small and 10 MB bodies reach the upstream once, whole; the client gets the upstream\'s answer', async (t) => {
  const received: Array<{ url: string, length: number, sha: string, expect: string | undefined }> = []
  const up = await startUpstream(t, (req, res, body) => {
    received.push({ url: req.url ?? '', length: body.length, sha: createHash('sha1').update(body).digest('hex'), expect: req.headers.expect })
    res.setHeader('x-from', 'upstream')
    res.statusCode = 201
    res.end(`got ${body.length}`)
  })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a', bodyLimit: 16 * 1024 * 1024 }] })
  for (const size of [5, 10 * 1024 * 1024]) {
    const body = Buffer.alloc(size, 'e')
    const r = await expectUpload(`${gw.url}/put-${size}`, body)
    t.equal(r.continued, true, `${size} bytes: the client was told to go on`)
    t.equal(r.status, 201, `${size} bytes: the upstream's own status`)
    t.equal(r.text, `got ${size}`)
    const seen = received.filter((x) => x.url === `/put-${size}`)
    t.equal(seen.length, 1, `${size} bytes: reached the upstream once`)
    t.equal(seen[0].sha, createHash('sha1').update(body).digest('hex'), `${size} bytes: whole`)
    t.equal(seen[0].expect, undefined, 'the expectation is the gateway\'s to answer, not forwarded')
  }
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(s.targets[0].errors, {}, 'no failure counted against the target')
  t.same(s.clientErrors, {})
})

t.test('Expect: 100-continue: a 417 or another early final answer from the upstream reaches the client as it was sent', async (t) => {
  const up = await startUpstream(t, (req, res) => {
    res.statusCode = req.url === '/refuse' ? 417 : 401
    res.setHeader('x-from', 'upstream')
    res.end(req.url === '/refuse' ? 'expectation failed' : 'who are you')
  }, { readBody: false })
  const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ prefix: '/', upstream: 'a', bodyLimit: 16 * 1024 * 1024 }] })
  for (const [path, status, text] of [['/refuse', 417, 'expectation failed'], ['/auth', 401, 'who are you']] as const) {
    const r = await expectUpload(`${gw.url}${path}`, Buffer.alloc(64 * 1024, 'x'))
    t.equal(r.status, status, `${path}: the upstream's ${status}`)
    t.equal(r.text, text)
  }
  const s = gw.app.sssonector.upstream('a').stats()
  t.same(s.targets[0].errors, {}, 'an early answer is an answer, not a failure')
})

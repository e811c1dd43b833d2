// A proxied request's destination is checked by its text when that settles
// @fastify/http-proxy's check (WHATWG URL resolution against the rewrite
// prefix), and goes to http-proxy's handler otherwise. The text check must
// never pass a path the URL check refuses, nor one URL parsing would change.
import t from 'tap'
import fc from 'fast-check'
import { getGlobalDispatcher } from 'undici'
import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import { climbs, destinationBoundary, rewritePrefixOf, rewriteSimple, withinBoundary } from '../lib/proxy.js'
import { startGateway, startPlainProxy, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

const BASE = 'http://upstream.sssonector.invalid'

/** @fastify/http-proxy's check (its resolveDestination, less the text checks of validateDestination): the path it would send, or null when it refuses. */
function urlCheck (dest: string, rewritePrefix: string): string | null {
  const base = new URL(BASE)
  const target = new URL(dest, base)
  const prefix = new URL(rewritePrefix, base)
  const boundary = prefix.pathname.endsWith('/') ? prefix.pathname : `${prefix.pathname}/`
  const within = target.pathname === prefix.pathname || target.pathname.startsWith(boundary)
  return target.origin === base.origin && within ? target.pathname : null
}

t.test('the boundary of a route: its rewrite prefix as http-proxy derives it; none for a prefix with parameters or one URL parsing would change', async (t) => {
  t.equal(destinationBoundary('/api', undefined), '/')
  t.equal(destinationBoundary('/api', ''), '/')
  t.equal(destinationBoundary('/api', '/'), '/')
  t.equal(destinationBoundary('/api', '/v1'), '/v1')
  t.equal(destinationBoundary('/api', '/v1/'), '/v1', 'a trailing slash dropped where the prefix has none, as http-proxy does')
  t.equal(destinationBoundary('/api/', '/v1/'), '/v1/')
  t.equal(destinationBoundary('/api/:id', '/v1'), null, 'a prefix with a parameter: the handler checks every request')
  t.equal(destinationBoundary('/api', '/v%201'), null, 'percent-encoded')
  t.equal(destinationBoundary('/api', '/a/../b'), null, 'a dot segment')
  t.equal(destinationBoundary('/api', 'v1'), null, 'not rooted')
})

t.test('simple paths pass by their text, the others go to the URL check', async (t) => {
  const boundary = '/v1'
  for (const ok of ['/v1', '/v1/', '/v1/users/42', '/v1/a:b@c', "/v1/~x-y_z.!$&'()*+,;=", '/v1//double', '/v1/a.b/c..d', '/v1/a..']) {
    t.ok(withinBoundary(ok, boundary), `${ok}: passes`)
    t.equal(urlCheck(ok, '/v1'), ok, `${ok}: the URL check passes it, unchanged`)
  }
  for (const other of ['/v1/../x', '/v1/./x', '/v1/..', '/v1/.', '/v1/..;/x', '/v1/.well-known', '/v1/%2e%2e/x', '/v1/a%20b', '/v1\\..\\x', '/v1/a b', '/v1/\u00e9', '/v1/#x', '/v1/a?b', '//evil.example/v1', 'v1/x', '/v2/x', '/v10', '']) {
    t.notOk(withinBoundary(other, boundary), `${JSON.stringify(other)}: left to the URL check`)
  }
  t.notOk(withinBoundary('/v1', '/v1/'), 'a prefix with a trailing slash: the bare prefix is not under it')
  t.equal(urlCheck('/v1', '/v1/'), null, '(nor does the URL check pass it)')
})

t.test('a path that climbs is refused, as reply-from refuses it', async (t) => {
  for (const bad of ['..', '/..', '/a/..', '/a/...', '/a/../b', '/a/..;/b', '/a/%2e%2e/b', '/a/%2E%2E%2Fb', '../a', '/a/%ZZ']) t.ok(climbs(bad), `${bad}: refused`)
  for (const good of ['/', '/a/b', '/a/[...slug]', '/a/b..c', '/a/%20b', '/.well-known/x']) t.notOk(climbs(good), `${good}: forwarded`)
})

const seed = Number(process.env.PROPERTY_SEED ?? Date.now() % 2 ** 31)

t.test(`property (seed ${seed}, replay with PROPERTY_SEED=${seed}): what passes by its text passes the URL check, and reaches the upstream unchanged`, async (t) => {
  t.comment(`fast-check seed ${seed}`)
  // Paths built from the characters that matter: separators, dots, escapes, and the rest.
  const piece = fc.constantFrom('/', '.', '..', '%2e', '%2f', '\\', 'a', 'v1', 'v10', ':', '@', '?', '#', ' ', '%', '~', '\t', '\u00e9', '//')
  const path = fc.tuple(fc.constantFrom('', '/', '/v1', '/v1/', '/a/b/', '/api'), fc.array(piece, { maxLength: 10 })).map(([start, parts]) => start + parts.join(''))
  const prefix = fc.constantFrom(undefined, '', '/', '/v1', '/v1/', '/a/b', '/v1/..', '/%2e')
  let passed = 0
  fc.assert(fc.property(path, prefix, fc.constantFrom('/api', '/api/'), (dest, rewritePrefix, scopePrefix) => {
    const boundary = destinationBoundary(scopePrefix, rewritePrefix)
    if (boundary === null || !withinBoundary(dest, boundary)) return true
    passed++
    let p: string = rewritePrefix !== undefined && rewritePrefix !== '' ? rewritePrefix : '/'
    if (!scopePrefix.endsWith('/') && p.endsWith('/')) p = p.slice(0, -1)
    return urlCheck(dest, p) === dest
  }), { seed, numRuns: 20_000 })
  t.ok(passed > 100, `the property met paths that pass by their text (${passed})`)
})

type FromParameters = (url: string, params: unknown, prefix: string) => { url: string }

/** @fastify/http-proxy's own `reply.fromParameters` for a route (a Fastify app with it registered, the reply of one request). */
async function fromParametersOf (t: Teardown, prefix: string, rewritePrefix: string | undefined, caseSensitive: boolean): Promise<FromParameters> {
  const app = Fastify({ routerOptions: { caseSensitive, ignoreDuplicateSlashes: !caseSensitive, ignoreTrailingSlash: !caseSensitive } })
  t.teardown(async () => { await app.close() })
  let from: FromParameters | undefined
  await app.register(httpProxy, {
    upstream: BASE,
    prefix,
    ...(rewritePrefix === undefined ? {} : { rewritePrefix }),
    preHandler: (_req, reply, done) => {
      from = (reply as unknown as { fromParameters: FromParameters }).fromParameters.bind(reply)
      reply.code(204).send()
      done()
    }
  })
  await app.inject({ url: prefix.endsWith('/') ? prefix + 'x' : prefix + '/x' })
  if (from === undefined) throw new Error(`no reply reached the preHandler of a route on ${prefix}`)
  return from
}

t.test(`property (seed ${seed}, replay with PROPERTY_SEED=${seed}): a simple path rewritten by its text, and within its boundary, gets the destination http-proxy's fromParameters gives it`, async (t) => {
  t.comment(`fast-check seed ${seed}`)
  const piece = fc.constantFrom('/', '.', '..', '%2e', '%2f', '\\', 'a', 'A', 'v1', 'x', ':', '@', '?', '?a=1', '#', ' ', '%', '~', '\u00e9', '//')
  const start = fc.constantFrom('', '/', '/api', '/api/', '/API/', '/apix', '//api/', '/v1')
  const path = fc.tuple(start, fc.array(piece, { maxLength: 8 })).map(([s, parts]) => s + parts.join(''))
  const configs: Array<[string, string | undefined, boolean]> = []
  for (const prefix of ['/api', '/api/']) {
    for (const rewritePrefix of [undefined, '', '/', '/v1', '/v1/', '/a/b']) configs.push([prefix, rewritePrefix, true])
  }
  configs.push(['/api', '/v1', false], ['/API', undefined, false])
  let rewritten = 0
  for (const [prefix, rewritePrefix, caseSensitive] of configs) {
    const from = await fromParametersOf(t, prefix, rewritePrefix, caseSensitive)
    const rp = rewritePrefixOf(prefix, rewritePrefix)
    const boundary = destinationBoundary(prefix, rewritePrefix)!
    fc.assert(fc.property(path, (url) => {
      const q = url.indexOf('?')
      const ours = rewriteSimple(q === -1 ? url : url.slice(0, q), prefix, rp)
      // (one that does not stay within the boundary goes to http-proxy's handler)
      if (ours === null || !withinBoundary(ours, boundary)) return true
      rewritten++
      const theirs = from(url, {}, prefix).url
      const tq = theirs.indexOf('?')
      return (tq === -1 ? theirs : theirs.slice(0, tq)) === ours
    }), { seed, numRuns: 2_000 })
  }
  t.ok(rewritten > 1000, `the property met paths rewritten by their text (${rewritten})`)
})

interface Echo { url: string }

t.test('paths reach the upstream as through plain http-proxy, and the same ones are refused', async (t) => {
  const up = await startUpstream(t)
  const configs = [
    { prefix: '/api', rewritePrefix: '/v1' },
    { prefix: '/api' },
    { rewritePrefix: '/api2' }
  ]
  const paths = ['/x', '/x/y?q=1&r=%20', '/x/...', '/x/a..b', '/x/.well-known/y', '/x/../y', '/x/./y', '/x/%2e%2e/y', '/x/%2e%2e/%2e%2e/z', '/x/..%2fy', '/x\\..\\y', '/x//y', '/x/a%20b', '/x/.well-known', '/x/%ZZ', '/x/a:b@c', '/..', '/x/..', '/x/..;/y']
  for (const config of configs) {
    const gw = await startGateway(t, { upstreams: { a: { targets: [up.url] } }, routes: [{ upstream: 'a', ...config }] })
    const plain = await startPlainProxy(t, { upstream: up.url, ...config })
    const mount = config.prefix ?? ''
    for (const p of paths) {
      const path = mount + p
      // (the path as written: a URL would resolve its dot segments before it is sent)
      const ours = await gw.agent.request({ origin: gw.url, path, method: 'GET' })
      const theirs = await getGlobalDispatcher().request({ origin: plain, path, method: 'GET' })
      const name = `${JSON.stringify(config)} ${path}`
      t.equal(ours.statusCode, theirs.statusCode, `${name}: the same status (${theirs.statusCode})`)
      if (theirs.statusCode === 200) {
        t.equal(((await ours.body.json()) as Echo).url, ((await theirs.body.json()) as Echo).url, `${name}: the same upstream path`)
      } else {
        await ours.body.dump()
        await theirs.body.dump()
      }
    }
  }
})

// Service discovery against a real DNS server (Debian's dnsmasq on a loopback
// port): targets follow the records under steady keep-alive load, names stay
// names (Host, TLS), a failed, empty or never-answering lookup is safe.
import t from 'tap'
import https from 'node:https'
import net from 'node:net'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import { Agent, request } from 'undici'
import sssonectorPool from '../lib/index.js'
import type { Upstream as Pool } from '../lib/upstream.js'
import type { SssonectorOptions } from '../types/index.js'
import { noDnsmasq, startDns } from './helpers/dnsmasq.js'
import { eventually, registerFails, startGateway, startUpstream } from './helpers/servers.js'
import type { Gateway, Teardown, Upstream } from './helpers/servers.js'

const fixture = (name: string): string => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8')

/** Upstreams on each loopback address, all on one port (an A record gives an address, the port is the upstream's). */
async function startAt (t: Teardown, addresses: string[]): Promise<{ port: number, ups: Map<string, Upstream> }> {
  for (let tries = 0; tries < 10; tries++) {
    const ups = new Map<string, Upstream>()
    try {
      const first = await startUpstream(t, undefined, { host: addresses[0] })
      ups.set(addresses[0], first)
      for (const a of addresses.slice(1)) ups.set(a, await startUpstream(t, undefined, { host: a, port: first.port }))
      return { port: first.port, ups }
    } catch (err) {
      // That port was taken on another address: all again on a new one.
      if ((err as { code?: string }).code !== 'EADDRINUSE') throw err
      for (const u of ups.values()) await u.close()
    }
  }
  throw new Error('no port free on every address in 10 tries')
}

function poolOf (gw: Gateway, name = 'users'): Pool {
  return gw.app.sssonector.upstream(name) as unknown as Pool
}

function addressesOf (pool: Pool): string[] {
  return pool.targets.map((x) => new URL(x.url).hostname).sort()
}

/** Keep-alive load of `workers` loops until stopped (at most `max` requests each): counts by status, and errors. */
function load (url: string, workers: number, max = 50_000): { stop: () => Promise<{ ok: number, failed: Map<string, number> }> } {
  const agent = new Agent({ connections: workers, keepAliveTimeout: 30_000 })
  const state = { stopped: false }
  let ok = 0
  const failed = new Map<string, number>()
  const fail = (why: string): void => { failed.set(why, (failed.get(why) ?? 0) + 1) }
  const loops = Array.from({ length: workers }, async () => {
    for (let i = 0; i < max && !state.stopped; i++) {
      try {
        const res = await request(url, { dispatcher: agent })
        const body = await res.body.text()
        if (res.statusCode === 200) ok++
        else fail(`${res.statusCode} ${body.slice(0, 120)}`)
      } catch (err) {
        fail((err as Error).message)
      }
    }
  })
  return {
    async stop () {
      state.stopped = true
      await Promise.all(loops)
      await agent.close()
      return { ok, failed }
    }
  }
}

/** Log lines (pino JSON) of an app, by message. */
function logSink (): { stream: Writable, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l !== '') lines.push(JSON.parse(l) as Record<string, unknown>)
      done()
    }
  })
  return { stream, lines }
}

t.test('A records under steady load: addresses join and leave, the DNS server dies and a target is killed at the same time, no request fails, the removed address drains', { skip: noDnsmasq }, async (t) => {
  const { port, ups } = await startAt(t, ['127.0.0.2', '127.0.0.3', '127.0.0.4'])
  const dns = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2', '127.0.0.3'] } })
  const gw = await startGateway(t, {
    upstreams: { users: { discovery: { dns: 'users.internal', port, servers: [dns.server], refresh: '150ms', timeout: '500ms' } } },
    routes: [{ prefix: '/api', upstream: 'users' }]
  })
  const pool = poolOf(gw)
  // ready() (listen) waited for the first lookup: the two addresses are targets before any request.
  t.same(addressesOf(pool), ['127.0.0.2', '127.0.0.3'], 'the first lookup is in force once the app is ready')

  const run = load(`${gw.url}/api/x`, 16)
  await once(ups.get('127.0.0.2')!.events, 'request')

  // An address joins.
  await dns.setHosts({ 'users.internal': ['127.0.0.2', '127.0.0.3', '127.0.0.4'] })
  await eventually(() => pool.targets.length === 3)
  await once(ups.get('127.0.0.4')!.events, 'request')
  t.pass('a new address takes requests')
  const kept = pool.targets.find((x) => x.url.includes('127.0.0.4'))!

  // One leaves: it drains, its connections close, it gets nothing more.
  await dns.setHosts({ 'users.internal': ['127.0.0.3', '127.0.0.4'] })
  await eventually(() => !addressesOf(pool).includes('127.0.0.2'))
  const gone = ups.get('127.0.0.2')!
  await gone.socketsAtMost(0)
  const seenAtDrain = gone.seen.length
  t.equal(gone.inflight, 0, 'the removed address finished what it had in flight')

  // Overlapping faults: the DNS server dies, and while lookups fail a listed target is killed.
  await dns.stop()
  await eventually(() => pool.discovery!.refreshes.failed >= 1)
  const killed = ups.get('127.0.0.3')!
  killed.server.closeAllConnections()
  await killed.close()
  await eventually(() => pool.discovery!.refreshes.failed >= 3)
  t.same(addressesOf(pool), ['127.0.0.3', '127.0.0.4'], 'failed lookups keep the last good list')

  t.equal(gone.seen.length, seenAtDrain, 'the removed address got no request after it drained')

  // DNS back with the killed address gone and the first one back.
  await dns.restart()
  await dns.setHosts({ 'users.internal': ['127.0.0.2', '127.0.0.4'] })
  await eventually(() => addressesOf(pool).join() === '127.0.0.2,127.0.0.4')
  await once(gone.events, 'request')

  const { ok, failed } = await run.stop()
  t.same(Object.fromEntries(failed), {}, 'no request failed')
  t.ok(ok > 200, `requests went through under load (${ok})`)
  t.ok(gone.seen.length > seenAtDrain, 'the address back in DNS takes requests again')
  t.equal(pool.targets.find((x) => x.url.includes('127.0.0.4')), kept, 'a kept address stayed the same target through every refresh (its state and counts with it)')
  const host = ups.get('127.0.0.4')!.seen.at(-1)!.headers.host
  t.equal(host, `users.internal:${port}`, 'the upstream sees the name (and port) as Host, not the address')
  const d = pool.stats().discovery!
  t.equal(d.kind, 'dns')
  t.ok(d.refreshes.ok >= 4 && d.refreshes.failed >= 3, `lookups counted: ${JSON.stringify(d.refreshes)}`)
  t.equal(d.lastError, null, 'the last lookup was good')
})

t.test('ready() fails naming the upstream and the name when it never resolves; when the server does not answer; and waits for a late record', { skip: noDnsmasq }, async (t) => {
  const dns = await startDns(t, { hosts: {} })
  const ready = async (discovery: Record<string, unknown>): Promise<Error & { code?: string } | null> => {
    const app = Fastify({ logger: false })
    t.teardown(() => app.close())
    await app.register(sssonectorPool, { gracefulClose: false, upstreams: { users: { discovery } } } as unknown as SssonectorOptions)
    return await app.ready().then(() => null, (e: Error) => e)
  }
  const started = Date.now()
  const err = await ready({ dns: 'nothere.internal', port: 80, servers: [dns.server], timeout: '400ms' })
  t.equal(err?.code, 'FST_SSSONECTOR_DISCOVERY', 'a clear error code')
  t.match(err?.message, /upstream\(users\)\.discovery: dns nothere\.internal gave no target within 400 ms/, 'naming the upstream, the name and the bound')
  t.ok(Date.now() - started < 3000, 'within its bound')

  // A server that never answers: the lookup times out.
  const silent = await new Promise<number>((resolve) => {
    const s = net.createServer()
    s.listen(0, '127.0.0.1', () => { resolve((s.address() as net.AddressInfo).port); s.close() })
  })
  const err2 = await ready({ dns: 'users.internal', servers: [`127.0.0.1:${silent}`], timeout: '300ms' })
  t.match(err2?.message, /dns users\.internal gave no target within 300 ms/, 'no answer at all fails ready() too')

  // A record that appears while ready() waits: ready() resolves with it.
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(sssonectorPool, { gracefulClose: false, upstreams: { users: { discovery: { dns: 'late.internal', port: 8080, servers: [dns.server], timeout: '5s' } } } })
  const waiting = app.ready()
  const pool = app.sssonector.upstream('users') as unknown as Pool
  await eventually(() => pool.discovery!.refreshes.empty >= 1 && pool.discovery!.nextRefresh !== null)
  const retryIn = pool.discovery!.nextRefresh! - pool.discovery!.lastRefresh!
  t.ok(retryIn >= 500 && retryIn <= 1000, `an empty or failed lookup is retried with backoff from 1 s, not at refresh (30 s): in ${retryIn} ms`)
  await dns.setHosts({ 'late.internal': ['127.0.0.7'] })
  await waiting
  t.same(pool.targets.map((x) => x.url), ['http://127.0.0.7:8080'], 'ready() resolved once the name resolved')
})

t.test('an empty answer keeps the last good list for maxStale, then applies it; a failed lookup is logged once and counted in the metrics', { skip: noDnsmasq }, async (t) => {
  const { port, ups } = await startAt(t, ['127.0.0.2'])
  const dns = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2'] } })
  const sink = logSink()
  const gw = await startGateway(t, {
    upstreams: { users: { discovery: { dns: 'users.internal', port, servers: [dns.server], refresh: '100ms', timeout: '300ms', maxStale: '800ms' } } },
    routes: [{ prefix: '/api', upstream: 'users' }]
  }, undefined, { logger: { level: 'debug', stream: sink.stream } })
  const pool = poolOf(gw)

  await dns.setHosts({})
  await eventually(() => pool.discovery!.staleUntil !== null)
  const kept = await request(`${gw.url}/api/x`, { dispatcher: gw.agent })
  await kept.body.dump()
  t.equal(kept.statusCode, 200, 'while the answer is empty, the last good list serves')
  t.equal(ups.get('127.0.0.2')!.seen.length, 1)
  t.equal(pool.stats().discovery!.targets, 1)
  await eventually(() => pool.targets.length === 0)
  t.ok(pool.discovery!.refreshes.empty >= 2, 'the empty answers are counted')
  const none = await request(`${gw.url}/api/x`, { dispatcher: gw.agent })
  t.equal(none.statusCode, 503, 'past maxStale the empty answer is applied: 503 NO_TARGET')
  t.match(await none.body.json(), { code: 'FST_SSSONECTOR_NO_TARGET' })
  t.ok(sink.lines.some((l) => l.msg === 'target out of rotation: draining' && l.target === `http://127.0.0.2:${port}` && l.host === `users.internal:${port}`),
    'the log names the target by its address and the name it serves')

  await dns.setHosts({ 'users.internal': ['127.0.0.2'] })
  await eventually(() => pool.targets.length === 1)
  // Now failures: the server is gone for several lookups.
  await dns.stop()
  await eventually(() => pool.discovery!.refreshes.failed >= 4)
  const again = await request(`${gw.url}/api/x`, { dispatcher: gw.agent })
  await again.body.dump()
  t.equal(again.statusCode, 200, 'a failed lookup keeps the list')
  const warned = sink.lines.filter((l) => l.msg === 'discovery lookup failed: keeping the last good list, retrying with backoff')
  t.equal(warned.length, 1, 'logged once for the run of failures')
  t.match(warned[0], { upstream: 'users', discovery: 'dns users.internal', kept: 1, level: 40 })
  const metrics = await (await request(`${gw.url}/metrics`, { dispatcher: gw.agent })).body.text()
  const failed = Number(/sssonector_discovery_refreshes_total\{upstream="users",result="failed"\} (\d+)/.exec(metrics)?.[1])
  t.ok(failed >= 4, `failed lookups in the metrics (${failed})`)
  t.match(metrics, /sssonector_discovery_refreshes_total\{upstream="users",result="empty"\} [1-9]/)
  t.match(metrics, new RegExp(`sssonector_target_info\\{upstream="users",target="http://127.0.0.2:${port}",host="users.internal:${port}"\\} 1`), 'the target with its name')
  await dns.restart()
  await eventually(() => pool.discovery!.lastError === null)
  t.ok(sink.lines.some((l) => l.msg === 'discovery lookup good again' && (l.failures as number) >= 4), 'the end of the failures is logged with their count')
  // The failures came faster than refresh would (backoff from 100 ms), and the wait after a good lookup is back to refresh.
  const s = pool.stats().discovery!
  t.ok(s.nextRefresh! - s.lastRefresh! <= 100 + 5, 'after a good lookup the next is at refresh')
})

t.test('a DNS answer\'s TTL brings the next lookup forward, never sooner than 1 s', { skip: noDnsmasq }, async (t) => {
  const dns = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2'] }, ttl: 2 })
  const zero = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2'] }, ttl: 0 })
  const gw = await startGateway(t, {
    upstreams: {
      users: { discovery: { dns: 'users.internal', port: 8080, servers: [dns.server], refresh: '30s' } },
      zero: { discovery: { dns: 'users.internal', port: 8080, servers: [zero.server], refresh: '30s' } }
    }
  })
  const at = (name: string): number => {
    const d = poolOf(gw, name).stats().discovery!
    return d.nextRefresh! - d.lastRefresh!
  }
  t.ok(at('users') >= 2000 && at('users') < 2050, `TTL 2 s: next lookup in ${at('users')} ms`)
  t.ok(at('zero') >= 1000 && at('zero') < 1050, `TTL 0: the 1 s floor (${at('zero')} ms)`)
})

t.test('family: AAAA records, and both families at once', { skip: noDnsmasq }, async (t) => {
  const dns = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2', '::1'] } })
  const gw = await startGateway(t, {
    upstreams: {
      v6: { discovery: { dns: 'users.internal', port: 8080, family: 6, servers: [dns.server] } },
      both: { discovery: { dns: 'users.internal', port: 8443, protocol: 'https', family: 0, servers: [dns.server] } }
    }
  })
  t.same(poolOf(gw, 'v6').stats().targets.map((x) => [x.url, x.host]), [['http://[::1]:8080', 'users.internal:8080']])
  t.same(poolOf(gw, 'both').stats().targets.map((x) => [x.url, x.host]).sort(), [['https://127.0.0.2:8443', 'users.internal:8443'], ['https://[::1]:8443', 'users.internal:8443']])
})

t.test('SRV records: one target per record with its port and weight, the lowest priority that resolves, changes applied', { skip: noDnsmasq }, async (t) => {
  const a = await startUpstream(t, undefined, { host: '127.0.0.2' })
  const b = await startUpstream(t, undefined, { host: '127.0.0.3' })
  const backup = await startUpstream(t, undefined, { host: '127.0.0.5' })
  const srv = [
    { name: '_http._tcp.users.internal', target: 'a.users.internal', port: a.port, weight: 10 },
    { name: '_http._tcp.users.internal', target: 'b.users.internal', port: b.port, weight: 30 },
    { name: '_http._tcp.users.internal', target: 'backup.users.internal', port: backup.port, priority: 1, weight: 5 }
  ]
  const dns = await startDns(t, {
    hosts: { 'a.users.internal': ['127.0.0.2'], 'b.users.internal': ['127.0.0.3'], 'backup.users.internal': ['127.0.0.5'] },
    srv
  })
  const gw = await startGateway(t, {
    upstreams: { users: { discovery: { srv: '_http._tcp.users.internal', servers: [dns.server], refresh: '150ms' } } },
    routes: [{ prefix: '/api', upstream: 'users' }]
  })
  const pool = poolOf(gw)
  const view = (): string[] => pool.stats().targets.map((x) => `${x.url} ${x.host} w${x.weight}`).sort()
  t.same(view(), [
    `http://127.0.0.2:${a.port} a.users.internal:${a.port} w10`,
    `http://127.0.0.3:${b.port} b.users.internal:${b.port} w30`
  ], 'the priority-0 records, each its port and weight; the priority-1 one held back')
  for (let i = 0; i < 8; i++) await (await request(`${gw.url}/api/x`, { dispatcher: gw.agent })).body.dump()
  t.equal(backup.seen.length, 0, 'the backup record gets nothing while priority 0 resolves')
  t.equal(a.seen.concat(b.seen).length, 8)
  t.ok(a.seen.every((r) => r.headers.host === `a.users.internal:${a.port}`), 'each target is sent its own record\'s name as Host')

  // Priority 0's names stop resolving: the backup takes over.
  await dns.setHosts({ 'backup.users.internal': ['127.0.0.5'] })
  await eventually(() => pool.targets.length === 1 && pool.targets[0].url === `http://127.0.0.5:${backup.port}`)
  t.pass('with no priority-0 name resolving, the next priority is used')

  // The records change (a restart of the server: its lookups fail meanwhile, the list holds).
  await dns.setHosts({ 'a.users.internal': ['127.0.0.2'], 'b.users.internal': ['127.0.0.3'], 'backup.users.internal': ['127.0.0.5'] })
  await dns.restart({ srv: [{ name: '_http._tcp.users.internal', target: 'b.users.internal', port: b.port, weight: 7 }] })
  await eventually(() => pool.targets.length === 1 && pool.targets[0].weight === 7)
  t.same(view(), [`http://127.0.0.3:${b.port} b.users.internal:${b.port} w7`], 'the new records are in force')
})

t.test('names stay names over TLS: SNI and the certificate check use the name, health probes too; the wrong certificate fails as TLS', { skip: noDnsmasq }, async (t) => {
  const cert = fixture('users-internal-cert.pem')
  const seen: Array<{ servername: string | false | null, host: string | undefined }> = []
  const serve = (key: string, crt: string): https.Server => https.createServer({ key, cert: crt }, (req, res) => {
    seen.push({ servername: (req.socket as import('node:tls').TLSSocket).servername, host: req.headers.host })
    res.end('ok')
  })
  const good = serve(fixture('users-internal-key.pem'), cert)
  good.listen(0, '127.0.0.2')
  await once(good, 'listening')
  const port = (good.address() as net.AddressInfo).port
  const wrong = serve(fixture('key.pem'), fixture('cert.pem'))
  wrong.listen(port, '127.0.0.3')
  await once(wrong, 'listening')
  t.teardown(() => { good.closeAllConnections(); good.close(); wrong.closeAllConnections(); wrong.close() })
  const dns = await startDns(t, { hosts: { 'users.internal': ['127.0.0.2'], 'other.internal': ['127.0.0.3'] } })
  const gw = await startGateway(t, {
    upstreams: {
      users: { discovery: { dns: 'users.internal', port, protocol: 'https', servers: [dns.server] }, tls: { ca: cert }, healthCheck: { path: '/health', interval: '1s' } },
      other: { discovery: { dns: 'other.internal', port, protocol: 'https', servers: [dns.server] }, tls: { ca: cert }, retry: false }
    },
    routes: [
      { prefix: '/api', upstream: 'users' },
      { prefix: '/other', upstream: 'other' },
      // The app sends a Host of its own: the TLS name stays the discovered one.
      { prefix: '/public', upstream: 'users', replyOptions: { rewriteRequestHeaders: (_req, headers) => ({ ...headers, host: 'api.example.com' }) } }
    ]
  })
  t.same(seen[0], { servername: 'users.internal', host: `users.internal:${port}` }, 'the health probe presented the name')
  const res = await request(`${gw.url}/api/x`, { dispatcher: gw.agent })
  t.equal(res.statusCode, 200, 'the certificate for the name is accepted at the address')
  t.equal(await res.body.text(), 'ok')
  t.same(seen.at(-1), { servername: 'users.internal', host: `users.internal:${port}` }, 'SNI and Host are the name')
  const own = await request(`${gw.url}/public/x`, { dispatcher: gw.agent })
  t.equal(own.statusCode, 200, 'with a Host of the app\'s own, the certificate is still checked against the name')
  await own.body.dump()
  t.same(seen.at(-1), { servername: 'users.internal', host: 'api.example.com' }, 'SNI the discovered name, Host the app\'s')
  const bad = await request(`${gw.url}/other/x`, { dispatcher: gw.agent })
  t.equal(bad.statusCode, 502)
  t.match(await bad.body.json(), { code: 'FST_SSSONECTOR_UPSTREAM_TLS' }, 'a certificate not for the name fails as TLS')
})

t.test('a discover() function: polled, its signal aborts at the timeout, a throw or a bad answer keeps the list; host names the target', async (t) => {
  const ups = [await startUpstream(t), await startUpstream(t)]
  let list: unknown = [{ url: ups[0].url, host: 'users.service.consul' }]
  let mode: 'ok' | 'throw' | 'hang' = 'ok'
  let aborted = 0
  const calls = { n: 0 }
  const gw = await startGateway(t, {
    upstreams: {
      users: {
        slowStart: '30s',
        discovery: {
          refresh: '100ms',
          timeout: '200ms',
          discover: async (signal) => {
            calls.n++
            if (mode === 'throw') throw new Error('consul is down')
            if (mode === 'hang') {
              await new Promise((resolve) => signal.addEventListener('abort', resolve))
              aborted++
              throw signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason))
            }
            return list as never
          }
        }
      }
    },
    routes: [{ prefix: '/api', upstream: 'users' }],
    status: { path: '/status' }
  })
  const pool = poolOf(gw)
  const res = await request(`${gw.url}/api/x`, { dispatcher: gw.agent })
  t.equal((await res.body.json() as { headers: { host: string } }).headers.host, 'users.service.consul', 'the target is sent its host')
  list = [{ url: ups[0].url, host: 'users.service.consul' }, { url: ups[1].url, weight: 3 }]
  await eventually(() => pool.targets.length === 2)
  t.equal(pool.targets[1].weight, 3)
  t.equal(pool.stats().targets[1].slowStart, true, 'a new target joins ramping up (slowStart)')

  mode = 'throw'
  await eventually(() => pool.discovery!.lastError === 'consul is down')
  mode = 'hang'
  await eventually(() => aborted >= 1)
  t.match(pool.discovery!.lastError, /discover\(\) timed out after 200 ms/, 'a hanging function is bounded and its signal aborted')
  mode = 'ok'
  list = [{ url: 'ftp://nope' }]
  await eventually(() => /discover\(\)\[0\]\.url/.test(pool.discovery!.lastError ?? ''))
  t.equal(pool.targets.length, 2, 'through a throw, a hang and a bad answer, the list held')
  const html = await (await request(`${gw.url}/status`, { dispatcher: gw.agent, headers: { accept: 'text/html' } })).body.text()
  t.match(html, /targets from discover\(\): 2 in the last good answer/, 'the status page says where the targets come from')
  t.match(html, /<small class="host"[^>]*>users\.service\.consul<\/small>/, 'and the name each target serves')
  t.match(html, /last lookup: discover\(\)\[0\]\.url/)
  t.throws(() => { gw.app.sssonector.upstream('users').addTarget('http://127.0.0.1:1') }, /upstream\(users\)\.addTarget: the targets come from discovery \(discover\(\)\)/, 'membership by hand is refused')
  await t.rejects(gw.app.sssonector.upstream('users').setTargets([]), /setTargets: the targets come from discovery/)
})

t.test('bad discovery options fail register naming the option and value', async (t) => {
  const up = (users: Record<string, unknown>): unknown => ({ upstreams: { users } })
  await registerFails(t, up({ targets: [], discovery: { dns: 'a.internal' } }), 'upstreams.users.discovery')
  await registerFails(t, up({ discovery: {} }), /upstreams\.users\.discovery: .* needs one of dns, srv, discover/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', srv: '_x._tcp.a.internal' } }), /gives dns and srv/)
  await registerFails(t, up({ discovery: { dns: 'not a name' } }), /upstreams\.users\.discovery\.dns: "not a name" is not a DNS name/)
  await registerFails(t, up({ discovery: { dns: '10.0.0.1' } }), /discovery\.dns: "10\.0\.0\.1" is not a DNS name/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', servers: ['127.0.0.1:99999'] } }), /discovery\.servers\[0\]: "127\.0\.0\.1:99999" is not an address or address:port/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', servers: [] } }), /discovery\.servers: .* is empty/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', family: 5 } }), /discovery\.family: 5 is not one of 4, 6, 0/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', protocol: 'ftp' } }), /discovery\.protocol: "ftp"/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', port: 0 } }), /discovery\.port: 0/)
  await registerFails(t, up({ discovery: { dns: 'a.internal', refresh: '10ms' } }), /discovery\.refresh: "10ms" is less than 100 ms/)
  await registerFails(t, up({ discovery: { srv: '_x._tcp.a.internal', port: 80 } }), /discovery\.port: unknown option \(allowed: srv,/)
  await registerFails(t, up({ discovery: { discover: 'consul' } }), /discovery\.discover: "consul" is not a function/)
  await registerFails(t, up({ targets: [{ url: 'http://127.0.0.1:1', host: 'a b' }] }), /targets\[0\]\.host: "a b" is not a host name\[:port\]/)
  await registerFails(t, up({ targets: [{ url: 'http://127.0.0.1:1', host: 'a/b' }] }), /targets\[0\]\.host: "a\/b" is not a host name\[:port\]/)
})

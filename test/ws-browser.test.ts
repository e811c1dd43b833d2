import t from 'tap'
import http from 'node:http'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { chromium } from 'playwright-core'
import type { Browser } from 'playwright-core'
import { WebSocketServer } from 'ws'
import type { WebSocket } from 'ws'
import { startGateway } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

// Debian's chromium, installed by .ci/run (apt-get install chromium).
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const skip = existsSync(executablePath) ? false : `no browser at ${executablePath} (apt-get install chromium)`

let browser: Browser | null = null
async function launch (): Promise<Browser> {
  browser ??= await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync']
  })
  return browser
}
t.teardown(async () => { await browser?.close() })

interface Seen {
  headers: http.IncomingHttpHeaders
  url: string
  ws: WebSocket
  /** the close code and reason the upstream received, once it closed */
  closed: Promise<{ code: number, reason: string }>
}

/**
 * A `ws` server on 127.0.0.1 with permessage-deflate: echoes every message as
 * it came (text as text, binary as binary), picks the subprotocol `chat.v1`
 * when offered, and closes with 4001 'bye' when told `close-me`.
 */
async function startWsUpstream (t: Teardown): Promise<{ url: string, seen: Seen[], connected: (n: number) => Promise<Seen> }> {
  const server = http.createServer((_req, res) => { res.statusCode = 426; res.end() })
  const wss = new WebSocketServer({
    server,
    perMessageDeflate: true,
    handleProtocols: (protocols) => protocols.has('chat.v1') ? 'chat.v1' : false
  })
  const seen: Seen[] = []
  const waiters: Array<{ n: number, resolve: (s: Seen) => void }> = []
  wss.on('connection', (ws, req) => {
    const closed = new Promise<{ code: number, reason: string }>((resolve) => {
      ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
    })
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'close-me') ws.close(4001, 'bye')
      else ws.send(data as Buffer, { binary: isBinary })
    })
    seen.push({ headers: req.headers, url: req.url ?? '', ws, closed })
    for (const w of waiters.filter((w) => seen.length >= w.n)) {
      waiters.splice(waiters.indexOf(w), 1)
      w.resolve(seen[w.n - 1]!)
    }
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    connected: async (n) => seen.length >= n ? seen[n - 1]! : await new Promise<Seen>((resolve) => waiters.push({ n, resolve }))
  }
}

/** What the page's functions use of the browser (this project's types are Node's, not the DOM's). */
interface BrowserWebSocket {
  binaryType: string
  readonly protocol: string
  readonly extensions: string
  onopen: (() => void) | null
  onmessage: ((e: { data: unknown }) => void) | null
  onerror: (() => void) | null
  onclose: ((e: { code: number, reason: string, wasClean: boolean }) => void) | null
  send: (data: string | Uint8Array) => void
  close: (code?: number, reason?: string) => void
}
type InPage = typeof globalThis & {
  WebSocket: new (url: string, protocols?: string[]) => BrowserWebSocket
  navigator: { userAgent: string }
}

const PAGE = '<!doctype html><html><head><meta charset="utf-8"><title>ws</title></head><body>ws</body></html>'

t.test('a browser opens a WebSocket through the gateway\'s websocket route: text and binary messages echoed, the browser\'s headers and subprotocol reach the upstream, close codes pass both ways', { skip }, async (t) => {
  const upstream = await startWsUpstream(t)
  const gw = await startGateway(t, {
    upstreams: { echo: { targets: [upstream.url] } },
    routes: [{ prefix: '/ws', upstream: 'echo', websocket: true }]
  }, (app) => {
    // the page the browser loads: the app's own route, beside the proxied one
    app.get('/page', async (_req, reply) => await reply.type('text/html').send(PAGE))
  })
  const wsUrl = gw.url.replace(/^http/, 'ws') + '/ws/room?x=1'

  const page = await (await launch()).newPage()
  t.teardown(() => page.close())
  await page.goto(`${gw.url}/page`)
  const userAgent = await page.evaluate(() => (globalThis as InPage).navigator.userAgent)

  // In the page: open, a text and a binary message and their echoes, then the
  // upstream's close (asked for by 'close-me').
  const first = await page.evaluate(async (url) => {
    const ws = new (globalThis as InPage).WebSocket(url, ['chat.v1', 'chat.v0'])
    ws.binaryType = 'arraybuffer'
    const next = async (): Promise<unknown> => await new Promise((resolve, reject) => {
      ws.onmessage = (e) => resolve(e.data)
      ws.onerror = () => reject(new Error('error event'))
    })
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve()
      ws.onerror = () => reject(new Error('the WebSocket did not open'))
    })
    let reply = next()
    ws.send('héllo, upstream')
    const text = await reply
    reply = next()
    ws.send(new Uint8Array([0, 1, 2, 127, 128, 255]))
    const binary = Array.from(new Uint8Array(await reply as ArrayBuffer))
    reply = next()
    const big = new Uint8Array(256 * 1024).map((_, i) => i % 251)
    ws.send(big)
    const bigBack = new Uint8Array(await reply as ArrayBuffer)
    const bigOk = bigBack.length === big.length && bigBack.every((b, i) => b === big[i])
    const closed = new Promise<{ code: number, reason: string, wasClean: boolean }>((resolve) => {
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean })
    })
    ws.send('close-me')
    return { protocol: ws.protocol, extensions: ws.extensions, text, binary, bigOk, ...(await closed) }
  }, wsUrl)

  t.equal(first.text, 'héllo, upstream', 'the text message came back as text')
  t.same(first.binary, [0, 1, 2, 127, 128, 255], 'the binary message came back byte for byte')
  t.ok(first.bigOk, 'a 256 KiB binary message came back byte for byte')
  t.equal(first.protocol, 'chat.v1', 'the subprotocol the upstream chose reached the browser')
  t.match(first.extensions, /permessage-deflate/, 'the compression the upstream accepted reached the browser')
  t.same({ code: first.code, reason: first.reason, wasClean: first.wasClean }, { code: 4001, reason: 'bye', wasClean: true }, 'the upstream\'s close code and reason reached the browser, as a clean close')

  const seen = await upstream.connected(1)
  t.equal(seen.url, '/room?x=1', 'the upstream saw the path past the prefix, with its query')
  t.equal(seen.headers.origin, gw.url, 'the upstream saw the page\'s Origin')
  t.equal(seen.headers['user-agent'], userAgent, 'the upstream saw the browser\'s User-Agent')
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1', 'the upstream saw X-Forwarded-For with the browser\'s address')
  t.equal(seen.headers['sec-websocket-protocol'], 'chat.v1, chat.v0', 'the upstream saw the subprotocols the browser offered')
  t.match(seen.headers['sec-websocket-extensions'], /permessage-deflate/, 'the upstream saw the extensions the browser offered')
  t.same(await seen.closed, { code: 4001, reason: 'bye' }, 'the browser\'s answer to the close reached the upstream')

  // The browser closes: its code and reason reach the upstream.
  const second = page.evaluate(async (url) => {
    const ws = new (globalThis as InPage).WebSocket(url)
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve()
      ws.onerror = () => reject(new Error('the WebSocket did not open'))
    })
    // an echo first: the tunnel is open end to end
    await new Promise((resolve) => {
      ws.onmessage = resolve
      ws.send('ping')
    })
    const closed = new Promise<number>((resolve) => { ws.onclose = (e) => resolve(e.code) })
    ws.close(4000, 'done here')
    return await closed
  }, wsUrl)
  const secondSeen = await upstream.connected(2)
  t.same(await secondSeen.closed, { code: 4000, reason: 'done here' }, 'the browser\'s close code and reason reached the upstream')
  t.equal(await second, 4000, 'the browser saw its close answered')
})

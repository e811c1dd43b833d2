import t from 'tap'
import type { Test } from 'tap'
import http from 'node:http'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { WebSocket, WebSocketServer } from 'ws'
import { until } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'

// Backpressure through a WebSocket tunnel, both ways: one side sends 64 KiB
// messages as fast as its socket takes them (up to 200 MB) while the other
// side does not read. The gateway runs in a process of its own
// (test/fixtures/ws-gateway.mjs, the built package), so its RSS is its own.
// WS_BACKPRESSURE_GATEWAY=http-proxy runs the same tests against plain
// @fastify/http-proxy with `websocket: true`, for comparison.
const kind = process.env.WS_BACKPRESSURE_GATEWAY === 'http-proxy' ? 'http-proxy' : 'sssonector'
const fixture = fileURLToPath(new URL('./fixtures/ws-gateway.mjs', import.meta.url))
const skip = kind === 'http-proxy' || existsSync(new URL('../dist/lib/index.js', import.meta.url)) ? false : 'dist/ not built: run npm run build'

const MiB = 1024 * 1024
const MESSAGE = 64 * 1024
const TOTAL = 200 * 1024 * 1024
/** writes in flight at most (1 MiB): the producer sends the next one when a write completes */
const WINDOW = 16
/** no write completed for this long: the producer is stalled */
const QUIET = 500
/** what the gateway may grow by while it holds the stalled stream */
const BOUND = 64 * MiB

interface Memory { rss: number, heapUsed: number, arrayBuffers: number }

async function startGatewayProcess (t: Teardown, upstream: string): Promise<{ port: number, memory: () => Promise<Memory> }> {
  const child = fork(fixture, [kind, upstream], {
    execArgv: ['--expose-gc'],
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const [ready] = await once(child, 'message') as [{ port: number }]
  return {
    port: ready.port,
    memory: async () => {
      const answer = once(child, 'message') as Promise<[Memory]>
      child.send('mem')
      return (await answer)[0]
    }
  }
}

/** A `ws` server on 127.0.0.1; a connection on /up is paused at once (it reads nothing until resumed). */
async function startWsUpstream (t: Teardown): Promise<{ url: string, connection: () => Promise<WebSocket> }> {
  const server = http.createServer((_req, res) => { res.statusCode = 426; res.end() })
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: MESSAGE })
  const connections: WebSocket[] = []
  wss.on('connection', (ws, req) => {
    if (req.url === '/up') ws.pause()
    ws.on('error', () => {})
    connections.push(ws)
    wss.emit('connected')
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
    connection: async () => {
      await until(wss, 'connected', () => connections.length > 0)
      return connections[0]!
    }
  }
}

interface Stall {
  /** bytes handed to send() */
  sent: number
  /** writes not completed when it stopped */
  pending: number
  /** the sender's bufferedAmount when it stopped */
  bufferedAmount: number
  /** it sent all of TOTAL: nothing held it back */
  finished: boolean
}

/**
 * Sends 64 KiB binary messages on ws, WINDOW writes in flight, each completed
 * write letting the next one go, up to TOTAL. Resolves once every byte went
 * out, or once all WINDOW writes have waited QUIET ms with none completed
 * (then it sends no more).
 */
async function produce (ws: WebSocket): Promise<Stall> {
  const chunk = Buffer.alloc(MESSAGE, 0x5a)
  let sent = 0
  let pending = 0
  let stopped = false
  return await new Promise<Stall>((resolve) => {
    let timer: NodeJS.Timeout | undefined
    const settle = (finished: boolean): void => {
      if (stopped) return
      stopped = true
      clearTimeout(timer)
      resolve({ sent, pending, bufferedAmount: ws.bufferedAmount, finished })
    }
    const quiet = (): void => {
      clearTimeout(timer)
      if (stopped) return
      // stalled: every write of the window waiting, none completed for QUIET ms
      // (a late turn of this process's own loop is not taken for one)
      timer = setTimeout(() => { if (pending === WINDOW) settle(false); else quiet() }, QUIET)
    }
    const room = (): boolean => !stopped && pending < WINDOW && sent < TOTAL
    const pump = (): void => {
      while (room()) {
        pending++
        sent += MESSAGE
        ws.send(chunk, { binary: true }, (err) => {
          pending--
          if (err !== undefined && err !== null) return
          quiet()
          if (sent >= TOTAL && pending === 0) settle(true)
          else pump()
        })
      }
    }
    quiet()
    pump()
  })
}

const mib = (bytes: number): string => (bytes / MiB).toFixed(1)

/** What the stalled run must show: the sender held back by TCP, the gateway's RSS bounded. */
function checkStall (t: Test, who: string, stall: Stall, before: Memory, after: Memory): void {
  t.notOk(stall.finished, `${who} is held back short of 200 MB (${stall.finished ? 'it sent all of it' : `its last ${stall.pending} writes waited ${QUIET} ms and more, after ${mib(stall.sent)} MiB`})`)
  t.ok(stall.bufferedAmount >= (WINDOW - 1) * MESSAGE, `${who} was held back by its socket, not slow: ${mib(stall.bufferedAmount)} MiB waiting in it (bufferedAmount)`)
  const grew = after.rss - before.rss
  t.ok(grew < BOUND, `the gateway's RSS grew ${mib(grew)} MiB (${mib(before.rss)} -> ${mib(after.rss)}) while it held a stalled stream of ${mib(stall.sent)} MiB: less than ${mib(BOUND)}`)
}

t.test(`a client that stops reading: the upstream is held back by TCP, the gateway (${kind}) does not buffer what it sends, and every byte arrives once the client reads again`, { skip }, async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGatewayProcess(t, up.url)
  const client = new WebSocket(`ws://127.0.0.1:${gw.port}/ws/down`, { perMessageDeflate: false })
  t.teardown(() => client.terminate())
  let received = 0
  client.on('message', (data: Buffer) => { received += data.length })
  await once(client, 'open')
  const upstream = await up.connection()
  const before = await gw.memory()

  client.pause()
  const stall = await produce(upstream)
  const after = await gw.memory()
  checkStall(t, 'the upstream', stall, before, after)

  client.resume()
  await until(client, 'message', () => received >= stall.sent)
  t.equal(received, stall.sent, 'once the client read again, every byte the upstream sent arrived')
})

t.test(`an upstream that stops reading: the client is held back by TCP, the gateway (${kind}) does not buffer what it sends, and every byte arrives once the upstream reads again`, { skip }, async (t) => {
  const up = await startWsUpstream(t)
  const gw = await startGatewayProcess(t, up.url)
  const client = new WebSocket(`ws://127.0.0.1:${gw.port}/ws/up`, { perMessageDeflate: false })
  t.teardown(() => client.terminate())
  await once(client, 'open')
  // the upstream pauses this connection as it opens: it reads nothing
  const upstream = await up.connection()
  let received = 0
  upstream.on('message', (data: Buffer) => { received += data.length })
  const before = await gw.memory()

  const stall = await produce(client)
  const after = await gw.memory()
  checkStall(t, 'the client', stall, before, after)

  upstream.resume()
  await until(upstream, 'message', () => received >= stall.sent)
  t.equal(received, stall.sent, 'once the upstream read again, every byte the client sent arrived')
})

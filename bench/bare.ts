// A bare Node proxy for the benchmark: node:http in front, one undici Pool per
// target, round robin, both bodies streamed, no framework. What a proxy must do
// and nothing more: hop-by-hop headers dropped both ways, the target's Host,
// X-Forwarded-For appended, 502 when the target fails. It is Node's ceiling on
// the machine the benchmark runs on: the arm a gateway's own cost is measured
// against.
import http from 'node:http'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Pool } from 'undici'
import type { Dispatcher } from 'undici'

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'transfer-encoding', 'host', 'expect'])

/** Streams the target's answer to the client, pausing the target while the client's socket is full. */
class Relay implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse

  constructor (res: ServerResponse) {
    this.#res = res
  }

  onRequestStart (controller: Dispatcher.DispatchController): void {
    this.#res.once('close', () => { if (!this.#res.writableFinished) controller.abort(new Error('client closed')) })
  }

  onResponseStart (_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) return
    const out: string[] = []
    for (const name in headers) {
      if (HOP_BY_HOP.has(name)) continue
      const value = headers[name]
      if (Array.isArray(value)) for (const v of value) out.push(name, v)
      else if (value !== undefined) out.push(name, value)
    }
    this.#res.writeHead(statusCode, out)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause()
      this.#res.once('drain', () => { controller.resume() })
    }
  }

  onResponseEnd (): void {
    this.#res.end()
  }

  onResponseError (_controller: Dispatcher.DispatchController, err: Error): void {
    const res = this.#res
    if (res.headersSent) res.destroy(err)
    else {
      res.writeHead(502, { 'content-type': 'text/plain' })
      res.end('bad gateway')
    }
  }
}

export async function startBare (targets: string[], port = 0): Promise<{ port: number, close: () => Promise<void> }> {
  const pools = targets.map((t) => ({ pool: new Pool(t), host: new URL(t).host }))
  let next = 0
  const server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
    const { pool, host } = pools[next]!
    next = (next + 1) % pools.length
    const headers: string[] = ['host', host]
    const raw = req.headers
    for (const name in raw) {
      if (HOP_BY_HOP.has(name) || name === 'x-forwarded-for') continue
      const value = raw[name]
      if (Array.isArray(value)) for (const v of value) headers.push(name, v)
      else if (value !== undefined) headers.push(name, value)
    }
    const prior = raw['x-forwarded-for']
    const peer = req.socket.remoteAddress ?? ''
    headers.push('x-forwarded-for', prior === undefined ? peer : `${String(prior)}, ${peer}`)
    const hasBody = raw['content-length'] !== undefined || raw['transfer-encoding'] !== undefined
    pool.dispatch({ path: req.url!, method: req.method! as Dispatcher.HttpMethod, headers, body: hasBody ? req : null }, new Relay(res))
  })
  server.keepAliveTimeout = 65_000
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await Promise.all(pools.map(async (p) => { await p.pool.close() }))
    }
  }
}

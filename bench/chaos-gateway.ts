// The gateway of the chaos run, in its own process (forked by chaos.ts): Fastify
// on 127.0.0.1:0 with the plugin, registered with the options the runner sends
// (upstreams, routes, the status route and the scenario's settings). It tells
// its port over IPC, and answers `{ type: 'sample' }` with its RSS, heap and
// active resources (after global.gc when asked and started with --expose-gc).
import Fastify from 'fastify'
import type { AddressInfo } from 'node:net'
import { setImmediate as tick, setTimeout as delay } from 'node:timers/promises'
import { getHeapSnapshot } from 'node:v8'
import sssonectorPool from '../lib/index.js'
import { failed, send } from './chaos-protocol.js'
import type { GatewayConfig, ToGateway } from './chaos-protocol.js'

const config = JSON.parse(process.argv[2] ?? '{}') as GatewayConfig

async function sample (seq: number, gc: boolean, live: boolean): Promise<void> {
  const collect = (globalThis as { gc?: (options?: object) => void }).gc
  const ran = gc && collect !== undefined
  if (ran) {
    // a last-resort collection also hands V8's pooled pages back to the OS:
    // after a plain gc() on Node 24 the young generation's freed 256 KiB pages
    // stay resident in V8's page pool until the memory reducer runs (8 s
    // later), tens of MiB of RSS that no object holds
    const lastResort = { type: 'major', execution: 'sync', flavor: 'last-resort' }
    collect(lastResort)
    await tick()
    collect(lastResort)
  }
  const resources: Record<string, number> = {}
  for (const type of process.getActiveResourcesInfo()) resources[type] = (resources[type] ?? 0) + 1
  const mem = process.memoryUsage()
  let heapLive = mem.heapUsed
  let external = mem.external
  if (ran && live) {
    // gc() can leave tens of MiB counted in heapUsed that nothing holds: seen
    // here, 51.9 MiB after repeated last-resort collections, 26.1 MiB once a
    // heap snapshot was taken (its collection frees them; its live set is what
    // a leak grows). Asked for last, after RSS was read: the snapshot's own
    // native memory stays resident.
    getHeapSnapshot().destroy()
    // Buffers no object holds are freed once V8's sweeper has run, off the
    // main thread: on a loaded machine a sample right after gc() can still
    // count them. Read again after the snapshot's collection and a pause.
    await delay(100)
    collect!({ type: 'major', execution: 'sync', flavor: 'last-resort' })
    const after = process.memoryUsage()
    heapLive = Math.min(heapLive, after.heapUsed)
    external = after.external
  }
  send({ type: 'sample', seq, rss: mem.rss, heapUsed: mem.heapUsed, heapTotal: mem.heapTotal, heapLive, external, resources, gc: ran })
}

async function main (): Promise<void> {
  const app = Fastify({ logger: config.log === null ? false : { level: config.log } })
  await app.register(sssonectorPool, config.options as unknown as Parameters<typeof sssonectorPool>[1])
  await app.listen({ host: '127.0.0.1', port: 0 })
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    setTimeout(() => { process.exit(0) }, 3000).unref()
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.on('disconnect', stop)
  process.on('message', (message: ToGateway) => {
    if (message.type === 'sample') sample(message.seq, message.gc, message.live === true).catch(failed)
  })
  send({ type: 'ready', port: (app.server.address() as AddressInfo).port })
}

main().catch(failed)

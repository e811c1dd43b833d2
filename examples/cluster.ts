// Several processes (node:cluster), one scrape, one view of the targets: each
// worker runs the gateway with its metrics on a prom-client
// AggregatorRegistry, which answers the primary's requests for them; the
// primary serves the merged series on a port of its own (each metric merged by
// its aggregator: counters summed, states such as panic or target health kept
// 0 or 1). The workers share target state through the primary
// (`shared: { cluster: true }`, the primary running `relayClusterState()`): a
// target one worker finds dead leaves the others' rotation at once.
// Run: npm run build && node dist/examples/cluster.js
//
// Environment: TARGETS (comma-separated URLs), WORKERS [2], HOST [127.0.0.1],
// PORT [3000] (the gateway, shared by the workers), METRICS_PORT [9100] (the
// primary's /metrics), HEALTH_PATH (active health checks on that path, off
// when unset), SHARED [cluster] (`off`: each worker on its own state). Port 0
// takes a free port; the primary prints where it listens.
import cluster from 'node:cluster'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { availableParallelism } from 'node:os'
import Fastify from 'fastify'
import { AggregatorRegistry } from 'prom-client'
import type { PrometheusContentType } from 'prom-client'
import sssonectorPool, { relayClusterState } from '../lib/index.js'

const TARGETS = (process.env.TARGETS ?? 'http://127.0.0.1:8081,http://127.0.0.1:8082').split(',')
const HOST = process.env.HOST ?? '127.0.0.1'
const PORT = Number(process.env.PORT ?? 3000)
const METRICS_PORT = Number(process.env.METRICS_PORT ?? 9100)
const HEALTH_PATH = process.env.HEALTH_PATH
const SHARED = process.env.SHARED !== 'off'

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS ?? Math.min(2, availableParallelism()))
  // Each worker's reports on its targets go to the others.
  if (SHARED) relayClusterState()
  // Constructed in the primary, it collects the workers' answers.
  const aggregator = new AggregatorRegistry()
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.statusCode = 404
      res.end()
      return
    }
    aggregator.clusterMetrics().then((text) => {
      res.setHeader('content-type', aggregator.contentType)
      res.end(text)
    }, (err: Error) => {
      res.statusCode = 500
      res.end(err.message)
    })
  })
  let listening = 0
  cluster.on('listening', () => {
    if (++listening === workers) server.listen(METRICS_PORT, HOST)
  })
  server.on('listening', () => {
    const { port } = server.address() as AddressInfo
    const pids = Object.values(cluster.workers ?? {}).map((w) => w?.process.pid)
    console.log(JSON.stringify({ pid: process.pid, workers: pids, metrics: `http://${HOST}:${port}/metrics`, msg: 'metrics of every worker served' }))
  })
  // A signal stops the workers (each closes its gateway gracefully), then the primary.
  const stop = (signal: NodeJS.Signals): void => {
    server.close()
    server.closeAllConnections()
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill(signal)
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  cluster.on('exit', () => {
    if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0)
  })
  for (let i = 0; i < workers; i++) cluster.fork()
} else {
  // The plugin's metrics on an AggregatorRegistry: constructed in a worker, it
  // answers the primary's requests (AggregatorRegistry.setRegistries alone sets
  // up no listener, and the primary's scrape then times out after 5 s).
  const registry = new AggregatorRegistry<PrometheusContentType>()
  AggregatorRegistry.setRegistries([registry])
  const app = Fastify({ logger: true })
  await app.register(sssonectorPool, {
    upstreams: { api: { targets: TARGETS, ...(HEALTH_PATH === undefined ? {} : { healthCheck: { path: HEALTH_PATH } }) } },
    routes: [{ prefix: '/api', upstream: 'api' }],
    metrics: { registry, path: false }, // kept, not served: the primary serves every worker's
    ...(SHARED ? { shared: { cluster: true as const } } : {})
  })
  await app.listen({ port: PORT, host: HOST }) // the workers share the port
}

// Several processes (node:cluster), one scrape: each worker runs the gateway
// and hands its registry to prom-client's cluster aggregation; the primary
// serves the sum on its own port. Run: npm run build && node dist/examples/cluster.js
import cluster from 'node:cluster'
import http from 'node:http'
import { availableParallelism } from 'node:os'
import Fastify from 'fastify'
import { AggregatorRegistry } from 'prom-client'
import sssonectorPool from '../lib/index.js'

const TARGETS = (process.env.TARGETS ?? 'http://127.0.0.1:8081,http://127.0.0.1:8082').split(',')

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS ?? Math.min(2, availableParallelism()))
  for (let i = 0; i < workers; i++) cluster.fork()
  const aggregator = new AggregatorRegistry()
  // The sum over every worker, on a port of its own.
  http.createServer((req, res) => {
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
  }).listen(9100, '127.0.0.1')
} else {
  const app = Fastify({ logger: true })
  await app.register(sssonectorPool, {
    upstreams: { api: { targets: TARGETS } },
    routes: [{ prefix: '/api', upstream: 'api' }],
    metrics: { path: false } // kept, not served: the primary serves the sum
  })
  // Each worker answers the primary's aggregation with the plugin's registry.
  AggregatorRegistry.setRegistries([app.sssonectorMetrics.registry])
  await app.listen({ port: 3000, host: '127.0.0.1' }) // the cluster shares the port
}

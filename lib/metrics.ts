import { Counter, Gauge, Registry } from 'prom-client'
import type { Upstream } from './upstream.js'

// Categories counted as connection errors (the seed's connection_errors).
const CONNECTION_CATEGORIES = ['connect_refused', 'connect_timeout', 'dns', 'tls', 'reset', 'headers_timeout', 'body_timeout', 'protocol'] as const

/**
 * prom-client metrics on an injected Registry (or one of the plugin's own, never
 * the global one). Everything is read from the upstreams' own counters in
 * collect(): the request path does no metrics work.
 */
export class Metrics {
  readonly registry: Registry

  constructor (upstreams: readonly Upstream[], prefix: string, registry?: Registry) {
    this.registry = registry ?? new Registry()
    const registers = [this.registry]
    const labelNames = ['upstream', 'target'] as const

    // eslint-disable-next-line no-new
    new Gauge({
      name: `${prefix}pool_active_connections`,
      help: 'Connections to each target in use now',
      labelNames,
      registers,
      collect () {
        this.reset()
        for (const u of upstreams) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.pool.busy)
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: `${prefix}pool_idle_connections`,
      help: 'Idle keep-alive connections to each target',
      labelNames,
      registers,
      collect () {
        this.reset()
        for (const u of upstreams) for (const t of u.targets) this.set({ upstream: u.name, target: t.url }, t.pool.idle.length)
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: `${prefix}pool_connection_errors`,
      help: 'Failed attempts on each target, by reason',
      labelNames: ['upstream', 'target', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const u of upstreams) {
          for (const t of u.targets) {
            for (const reason of CONNECTION_CATEGORIES) {
              const n = t.errors[reason]
              if (n !== undefined) this.inc({ upstream: u.name, target: t.url, reason }, n)
            }
          }
        }
      }
    })
    // eslint-disable-next-line no-new
    new Counter({
      name: `${prefix}pool_health_check_failures`,
      help: 'Failed active health checks of each target',
      labelNames,
      registers,
      collect () {
        this.reset()
        for (const u of upstreams) for (const t of u.targets) if (t.hcFailures > 0) this.inc({ upstream: u.name, target: t.url }, t.hcFailures)
      }
    })
    // eslint-disable-next-line no-new
    new Gauge({
      name: `${prefix}upstream_active_requests`,
      help: 'Requests admitted to each upstream and not yet finished',
      labelNames: ['upstream'],
      registers,
      collect () {
        this.reset()
        for (const u of upstreams) this.set({ upstream: u.name }, u.active)
      }
    })
  }
}

import type { UpstreamStats } from '../types/index.js'

function esc (s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

function ago (now: number, at: number | null): string {
  if (at === null) return ''
  const s = Math.round((now - at) / 1000)
  return s < 120 ? `${s}s` : `${Math.round(s / 60)}m`
}

/**
 * The status page for a browser, like HAProxy's stats page: one table per
 * upstream, one row per target, its state with every cause and since when;
 * it refreshes itself every 2 seconds.
 */
export function renderStatus (upstreams: UpstreamStats[], now: number): string {
  const tables = upstreams.map((u) => {
    const rows = u.targets.map((t) => {
      const state = t.state === 'draining' ? 'draining' : t.available ? 'up' : 'down'
      const causes = t.health.map((h) => `${h.cause}${h.since === null ? '' : ` for ${ago(now, h.since)}`}`).join(', ')
      return `<tr class="${state}" data-target="${esc(t.url)}" data-state="${state}">` +
        `<td>${esc(t.url)}</td><td>${t.weight}</td><td class="state">${state.toUpperCase()}</td><td>${esc(causes)}</td>` +
        `<td>${t.breaker === null ? '-' : t.breaker.state}</td><td>${t.active}</td><td>${t.idle}</td><td>${t.connections}</td>` +
        `<td>${t.requests}</td><td>${t.latency.toFixed(1)} ms</td><td>${(t.failureRatio * 100).toFixed(1)}%</td>` +
        `<td>${esc(Object.entries(t.errors).map(([k, v]) => `${k} ${v}`).join(', '))}</td></tr>`
    }).join('\n')
    return `<h2>${esc(u.name)} <small>${esc(u.balance)}, ${u.active} active, ${u.pending} queued, ${u.connections} connections (${u.idle} idle)${u.panic ? ', <b class="panic">PANIC</b>' : ''}</small></h2>
<table><thead><tr><th>target</th><th>weight</th><th>state</th><th>causes</th><th>breaker</th><th>active</th><th>idle</th><th>conns</th><th>requests</th><th>latency</th><th>errors</th><th>by category</th></tr></thead>
<tbody>
${rows}
</tbody></table>`
  }).join('\n')
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>fastify-sssonector status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}
tr.up td.state{background:#c8f0c8}tr.down td.state{background:#f4b4b4}tr.draining td.state{background:#f0e0a0}
small{font-weight:normal;color:#555}.panic{color:#b00}
</style></head><body>
<h1>fastify-sssonector</h1>
${tables}
<p><small>refreshes every 2 s; JSON with <code>Accept: application/json</code></small></p>
</body></html>`
}

import type { SharedStats, TargetHealthCause, TargetStats, TargetWindowStats, UpstreamStats } from '../types/index.js'

function esc (s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** A span of time, short: `45s`, `3m`, `2h`. */
function span (ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 120) return `${s}s`
  const m = Math.round(s / 60)
  return m < 120 ? `${m}m` : `${Math.round(m / 60)}h`
}

/** The causes panic sets aside: a target out for these alone still takes traffic (Envoy's panic threshold). */
const SET_ASIDE_IN_PANIC: ReadonlySet<TargetHealthCause> = new Set(['active_health', 'ejected', 'peer'])

/** What a row says a target is: in rotation, out of it, out but used because of panic, leaving. */
type RowState = 'up' | 'down' | 'panic' | 'draining'

function rowState (t: TargetStats, panic: boolean): RowState {
  if (t.state === 'draining') return 'draining'
  if (t.health.length === 0) return 'up'
  if (panic && t.available && t.health.every((h) => SET_ASIDE_IN_PANIC.has(h.cause))) return 'panic'
  return 'down'
}

const STATE_TEXT: Record<RowState, string> = { up: 'UP', down: 'DOWN', panic: 'DOWN, USED IN PANIC', draining: 'DRAINING' }

/** When its next trial is due, for a skipped target: in flight, due now, or in how long. */
function nextTrial (t: TargetStats, now: number): string {
  const d = t.down
  if (d === null) return ''
  if (d.trial) return 'trial in flight'
  if (d.nextTrial <= now) return 'trial due: the next request tries it'
  const wait = d.nextTrial - now
  return `next trial in ${wait < 1000 ? `${wait}ms` : `${(wait / 1000).toFixed(1)}s`}`
}

/** Each cause with since when and why, and the next trial of a skip. */
function why (t: TargetStats, now: number): string {
  const causes = t.health.map((h) => {
    const since = h.since === null ? '' : ` for ${span(now - h.since)}`
    const until = (h.cause === 'ejected' || h.cause === 'peer') && h.until !== null ? `, until in ${span(h.until - now)}` : ''
    return `<span class="cause">${esc(h.cause)}${since}${h.reason === '' ? '' : `: ${esc(h.reason)}`}${until}</span>`
  })
  const trial = nextTrial(t, now)
  if (trial !== '') causes.push(`<span class="trial">${esc(trial)}</span>`)
  if (t.slowStart) causes.push('<span>ramping up (slow start)</span>')
  return causes.join('<br>')
}

const SPARK_W = 120
const SPARK_H = 28

/** The height of a value in the sparkline, from its bottom (y grows downwards). */
function y (v: number, max: number): string {
  return (SPARK_H - 1 - (v / max) * (SPARK_H - 3)).toFixed(1)
}

/**
 * Attempts per second over the window as a line (blue), failures as bars
 * under it (orange; none drawn for a second without), scaled to the busiest
 * second: inline SVG.
 */
function sparkline (w: TargetWindowStats): string {
  const { requests, failures } = w.series
  const peak = Math.max(1, ...requests)
  // 1 px in from each side, so the first and the last second are drawn whole.
  const step = (SPARK_W - 2) / (requests.length - 1)
  const x = (i: number): string => (1 + i * step).toFixed(1)
  const line = requests.map((v, i) => `${x(i)},${y(v, peak)}`).join(' ')
  let bars = ''
  let failed = 0
  for (let i = 0; i < failures.length; i++) {
    if (failures[i] === 0) continue
    failed += failures[i]
    bars += `M${x(i)},${SPARK_H}V${y(failures[i], peak)}`
  }
  const label = `last ${w.seconds} s: ${w.attempts} attempts, ${failed} failed; busiest second ${peak}`
  return `<svg class="spark" width="${SPARK_W}" height="${SPARK_H}" viewBox="0 0 ${SPARK_W} ${SPARK_H}" role="img" aria-label="${esc(label)}">` +
    `<title>${esc(label)}</title><path class="failures" d="${bars}"/><polyline class="requests" points="${line}"/></svg>`
}

function ms (v: number | null): string {
  return v === null ? '-' : `${v} ms`
}

function count (n: number, cls: string): string {
  return `<td class="num${n > 0 ? ` ${cls}` : ''}">${n}</td>`
}

/** The target's idle timeout as the pool learned it, under its connection counts: none while nothing is learned. */
function keepAlive (t: TargetStats): string {
  const k = t.keepAlive
  if (k.learned === null) return ''
  return `<br><small class="keepalive" title="the target closed idle connections at this idle age (${k.idleCloses} seen); the pool retires them before">idle closed at ${k.learned} ms, retired at ${k.retireAt} ms</small>`
}

/** Its peak-EWMA score: the latency estimate, and the failure penalty (held until a `Retry-After`) when it has one. */
function score (t: TargetStats, now: number): string {
  const { estimate, penalty, heldUntil } = t.score
  const held = heldUntil === null ? '' : `, held ${span(heldUntil - now)}`
  return `<td class="num score">${estimate} ms${penalty === 0 ? '' : `<br><span class="warn">+${penalty} ms${held}</span>`}</td>`
}

/** The name a target serves (its Host header), under its address, where the two differ. */
function served (t: TargetStats): string {
  return t.host === new URL(t.origin).host ? '' : `<br><small class="host" title="the Host header and TLS name it is sent">${esc(t.host)}</small>`
}

/** Shared target state, when on: connected or not since when, and the reports. */
function sharedLine (s: SharedStats | null, now: number): string {
  if (s === null) return ''
  const state = s.connected ? '<span class="ok">connected</span>' : '<span class="warn">disconnected: this replica runs on its own state</span>'
  return `<p class="shared${s.connected ? '' : ' failing'}">shared state (${s.mode}): ${state} for ${span(now - s.since)}; replica <code>${esc(s.replica)}</code>; reports ${s.sent} sent, ${s.received} received, ${s.applied} applied, ${s.ignored} ignored, ${s.dropped} dropped</p>`
}

/** Where the targets come from, when discovered: what is looked up, the last lookups, a stale list kept. */
function discovery (u: UpstreamStats, now: number): string {
  const d = u.discovery
  if (d === null) return ''
  const r = d.refreshes
  const last = d.lastGood === null ? 'no good lookup yet' : `last good ${span(now - d.lastGood)} ago`
  const next = d.nextRefresh === null ? '' : `, next in ${span(Math.max(0, d.nextRefresh - now))}`
  const stale = d.staleUntil === null ? '' : `; <span class="warn">answer empty: last good list kept for ${span(Math.max(0, d.staleUntil - now))}</span>`
  const error = d.lastError === null ? '' : `; <span class="warn">last lookup: ${esc(d.lastError)}</span>`
  const name = d.kind === 'discover' ? 'discover()' : `${d.kind} <code>${esc(d.name)}</code>`
  return `<p class="discovery${d.lastError === null ? '' : ' failing'}">targets from ${name}: ${d.targets} in the last good answer, ${last}${next}; lookups ${r.ok} ok, ${r.empty} empty, ${r.failed} failed${stale}${error}</p>`
}

function row (t: TargetStats, state: RowState, now: number): string {
  const w = t.window
  const breaker = t.breaker === null ? '-' : `${t.breaker.state} (${t.breaker.ok} ok, ${t.breaker.failed} failed)`
  return `<tr class="${state}" data-target="${esc(t.url)}" data-state="${state}">` +
    `<td>${esc(t.url)}${served(t)}</td><td class="state">${STATE_TEXT[state]}</td><td class="why">${why(t, now)}</td>` +
    `<td class="num rate">${w.rate}/s</td>` +
    count(w.answers['2xx'], 'ok') + count(w.answers['3xx'], '') + count(w.answers['4xx'], 'warn') + count(w.answers['5xx'], 'bad') +
    count(w.connectionErrors, 'bad') + count(w.retries, 'warn') +
    `<td class="num">${ms(w.p50)}</td><td class="num">${ms(w.p99)}</td><td class="spark">${sparkline(w)}</td>` +
    score(t, now) +
    `<td>${esc(breaker)}</td><td class="num">${t.active} / ${t.idle} / ${t.connections}${keepAlive(t)}</td><td class="num">${t.tunnels}</td><td class="num">${t.weight}</td><td class="num">${t.requests}</td></tr>`
}

/** One sentence on what is down and why, above the table. */
function verdict (u: UpstreamStats, states: RowState[]): string {
  const n = u.targets.length
  if (n === 0) return '<p class="verdict down">no targets</p>'
  const out = u.targets.filter((_, i) => states[i] === 'down' || states[i] === 'panic')
  const draining = states.filter((s) => s === 'draining').length
  const leaving = draining === 0 ? '' : `; ${draining} draining`
  if (out.length === 0) return `<p class="verdict up">${draining === 0 ? 'all ' : ''}${n - draining} of ${n} targets in rotation${leaving}</p>`
  const list = out.map((t) => `${esc(t.url)} (${t.health.map((h) => esc(h.cause)).join(', ')})`).join('; ')
  return `<p class="verdict down">${out.length} of ${n} targets out of rotation: ${list}${leaving}</p>`
}

function panicNote (u: UpstreamStats, states: RowState[]): string {
  if (!u.panic) return ''
  const used = u.targets.filter((_, i) => states[i] === 'panic').map((t) => esc(t.url))
  return '<p class="panic"><b>PANIC</b>: fewer targets healthy than the panic threshold. Set aside: ' +
    '<code>active_health</code>, <code>ejected</code> and <code>peer</code> (traffic goes to targets flagged for these alone); ' +
    '<code>connect_failed</code> and <code>circuit_open</code> still hold.' +
    (used.length === 0 ? '' : ` Used though flagged: ${used.join(', ')}.`) + '</p>'
}

/** Its hedges, when on: sent, won, cancelled, denied by the budget. */
function hedges (u: UpstreamStats): string {
  const h = u.hedges
  return h === null ? '' : `, <span class="hedges">hedges: ${h.sent} sent, ${h.won} won, ${h.cancelled} cancelled, ${h.denied} denied</span>`
}

/** The adaptive concurrency limit, for the upstream's heading: the limit, the minimum and sample RTTs, those held back. */
function adaptive (u: UpstreamStats): string {
  const a = u.adaptiveConcurrency
  if (a === null) return ''
  const rtt = (v: number | null): string => v === null ? '-' : `${v.toFixed(1)} ms`
  return `, <span class="adaptive" title="adaptive concurrency: requests let in flight now; minimum RTT measured, last window's latency; requests that found the limit reached">adaptive limit ${a.limit}${a.measuringMinRtt ? ' (measuring min RTT)' : ''}, min RTT ${rtt(a.minRtt)}, sample RTT ${rtt(a.sampleRtt)}, ${a.limited} limited</span>`
}

function table (u: UpstreamStats, now: number): string {
  const states = u.targets.map((t) => rowState(t, u.panic))
  const refused = Object.entries(u.rejected).map(([k, v]) => `${v} ${k}`).join(', ')
  const rows = u.targets.map((t, i) => row(t, states[i], now)).join('\n')
  return `<section data-upstream="${esc(u.name)}">
<h2>${esc(u.name)} <small>${esc(u.balance)}, ${u.protocol === 'http2' ? 'HTTP/2, ' : u.protocol === 'auto' ? 'HTTP/2 or 1.1 by ALPN, ' : ''}${u.active} active, ${u.pending} queued, ${u.connections} connections (${u.idle} idle), ${u.retriesActive} retries in flight, ${u.tunnels} tunnels, ${u.admitted} admitted${adaptive(u)}${refused === '' ? '' : `, refused: ${esc(refused)}`}${hedges(u)}</small></h2>
${verdict(u, states)}
${discovery(u, now)}
${panicNote(u, states)}
<table><thead><tr><th>target</th><th>state</th><th>why</th><th>rate</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th title="failures with no answer: connect, reset, timeout, malformed">conn errors</th><th title="its failed attempts retried on another target">retries</th><th>p50</th><th>p99</th><th>last 60 s</th><th title="peak EWMA: latency estimate, + penalty for recent failures; a pick costs (estimate + penalty) × (outstanding + 1) / weight">score</th><th>breaker</th><th title="attempts in flight / idle connections / open connections">active / idle / conns</th><th title="WebSocket tunnels open now (their upgrade under way or done)">tunnels</th><th>weight</th><th title="attempts since start">total</th></tr></thead>
<tbody>
${rows}
</tbody></table>
</section>`
}

/**
 * The status page for a browser, in place of HAProxy's stats page: per
 * upstream, a sentence on what is out of rotation and why, what panic sets
 * aside, and a row per target: its state (red when down; down but used in
 * panic apart), every cause with since when and why, when its next trial is
 * due, and its last minute from `stats()`: rate, answers by class,
 * connection errors, retries, p50/p99, a sparkline of attempts and
 * failures (inline SVG). It refreshes itself every 2 seconds.
 */
export function renderStatus (upstreams: UpstreamStats[], now: number, shared: SharedStats | null = null): string {
  const rendered = new Date(now).toISOString()
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>fastify-sssonector status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#eee;font-weight:600}
td.num{text-align:right;white-space:nowrap}td.state{font-weight:700;white-space:nowrap}
tr.up td.state{background:#c8f0c8}tr.draining td.state{background:#f0e0a0}
tr.down td{background:#fde8e8}tr.down td.state{background:#d62728;color:#fff}
tr.panic td{background:#fff0dc}tr.panic td.state{background:#f08c00;color:#fff}
td.bad{color:#b00;font-weight:600}td.warn{color:#a60}.cause{white-space:nowrap}.trial{color:#555}
.spark .requests{fill:none;stroke:#1f77b4;stroke-width:1.5}.spark .failures{fill:none;stroke:#e8602c;stroke-width:2}
small{font-weight:normal;color:#555}.panic{color:#b00;background:#fff0dc;padding:.4em .6em}
.verdict.up{color:#176317}.verdict.down{color:#b00;font-weight:600}
</style></head><body>
<h1>fastify-sssonector</h1>
<p class="rendered">rendered at <time datetime="${rendered}">${rendered.replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}</time>; refreshes every 2 s. Rate: attempts per second over the last 10 s; answers, conn errors, retries, p50, p99 and the sparkline (attempts a blue line, failures orange bars): the last 60 s. JSON with <code>Accept: application/json</code>.</p>
${sharedLine(shared, now)}
${upstreams.map((u) => table(u, now)).join('\n')}
</body></html>`
}

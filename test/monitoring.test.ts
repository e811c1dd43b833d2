// The monitoring examples against the real thing: promtool on a scrape of a
// gateway under faults, the alert rules' unit tests, and the Grafana
// dashboard's queries against the series a scrape exposes.
import t from 'tap'
import { execFile } from 'node:child_process'
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { eventually, refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'
import { scrape, seriesNames } from './helpers/scrape.js'

const monitoring = fileURLToPath(new URL('../examples/monitoring/', import.meta.url))

/** promtool on PATH (Debian's `prometheus` package), or null. */
function findPromtool (): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const file = join(dir, 'promtool')
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {}
  }
  return null
}
const promtool = findPromtool()
// Under CI a missing promtool is a failure (.ci/run installs it); here it skips, saying so.
const ci = process.env.CI === 'true'
const noPromtool = promtool === null && !ci ? 'promtool not found on PATH: install Debian\'s prometheus package (apt-get install prometheus) to run this test' : false

async function run (args: string[], input?: string): Promise<{ code: number, out: string }> {
  if (promtool === null) throw new Error('promtool not found on PATH: .ci/run installs Debian\'s prometheus package, which brings it')
  return await new Promise((resolve, reject) => {
    const child = execFile(promtool, args, { cwd: monitoring, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      if (err !== null && code === -1) reject(err)
      else resolve({ code, out: stdout + stderr })
    })
    child.stdin!.end(input ?? '')
  })
}

/** A gateway under faults: a dead target, 503 answers and their retries, a target failing its checks, requests refused. */
async function faultyScrape (t: Teardown): Promise<{ text: string, statuses: number[] }> {
  const live = await startUpstream(t, (req, res) => {
    res.statusCode = req.url?.startsWith('/bad') === true ? 503 : 200
    res.end('x')
  })
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: {
      a: { targets: [dead, live.url], balance: 'round-robin' },
      b: { targets: [dead], healthCheck: { path: '/h', interval: '20ms', timeout: '100ms' } }
    },
    routes: [{ prefix: '/a', upstream: 'a' }, { prefix: '/b', upstream: 'b' }]
  })
  const statuses: number[] = []
  for (const path of ['/a/x', '/a/x', '/a/x', '/a/x', '/a/bad', '/a/bad', '/b/x', '/b/x', '/b/x']) {
    const res = await request(`${gw.url}${path}`, { dispatcher: gw.agent })
    await res.body.dump()
    statuses.push(res.statusCode)
  }
  await eventually(() => gw.app.sssonector.upstream('b').stats().targets[0].healthCheckFailures > 0)
  return { text: await scrape(`${gw.url}/metrics`, gw.agent), statuses }
}

t.test('promtool check metrics on a gateway under faults flags only the seed\'s two counters, for their names', { skip: noPromtool }, async (t) => {
  const { text, statuses } = await faultyScrape(t)
  t.ok(statuses.includes(503) && statuses.includes(200), `503s and 200s among the answers: ${statuses.join(' ')}`)
  const names = seriesNames(text)
  for (const name of ['sssonector_request_retries_total', 'sssonector_requests_rejected_total', 'sssonector_pool_connection_errors', 'sssonector_target_health_cause']) {
    t.ok(names.has(name), `the scrape has ${name}`)
  }
  const { code, out } = await run(['check', 'metrics'], text)
  const problems = out.split('\n').filter((l) => l.trim() !== '')
  t.equal(code, 3, 'promtool exits 3: lint problems only')
  t.same(problems.sort(), [
    'sssonector_pool_connection_errors counter metrics should have "_total" suffix',
    'sssonector_pool_health_check_failures counter metrics should have "_total" suffix'
  ], `only the seed's names are flagged:\n${out}`)
})

t.test('every alert rule passes its unit tests (promtool test rules), each with a firing and a quiet case', { skip: noPromtool }, async (t) => {
  const check = await run(['check', 'rules', 'sssonector-alerts.yml'])
  t.equal(check.code, 0, `promtool check rules:\n${check.out}`)
  const rules = readFileSync(join(monitoring, 'sssonector-alerts.yml'), 'utf8')
  const tests = readFileSync(join(monitoring, 'sssonector-alerts.test.yml'), 'utf8')
  const alerts = [...rules.matchAll(/^\s*- alert: (\w+)\s*$/gm)].map((m) => m[1])
  t.ok(alerts.length >= 6, `${alerts.length} alerts`)
  // alertname: X followed by exp_alerts: [] is a quiet case; by a list, a firing one.
  const cases = [...tests.matchAll(/alertname: (\w+)\s*\n\s*exp_alerts:(.*)\n(\s*- exp_labels)?/g)]
  for (const alert of alerts) {
    const mine = cases.filter((c) => c[1] === alert)
    t.ok(mine.some((c) => c[2].trim() === '[]'), `${alert}: a quiet case`)
    t.ok(mine.some((c) => c[3] !== undefined), `${alert}: a firing case`)
  }
  const unit = await run(['test', 'rules', 'sssonector-alerts.test.yml'])
  t.equal(unit.code, 0, `promtool test rules:\n${unit.out}`)
  t.match(unit.out, /SUCCESS/)
})

interface Panel { title: string, type: string, fieldConfig?: { defaults?: { unit?: string } }, targets?: Array<{ expr: string, legendFormat?: string }> }
interface Dashboard { panels: Panel[], templating: { list: Array<{ name: string, type: string, query?: unknown, definition?: string }> } }

t.test('dashboard and alerts: every query names metrics a real scrape exposes, every legend the upstream, every panel a unit', async (t) => {
  const { text } = await faultyScrape(t)
  const exposed = seriesNames(text)
  const dashboard = JSON.parse(readFileSync(join(monitoring, 'grafana-dashboard.json'), 'utf8')) as Dashboard
  const variables = dashboard.templating.list.map((v) => v.name)
  t.ok(variables.includes('instance') && variables.includes('upstream'), `instance and upstream selectors: ${variables.join(', ')}`)
  const named = (expr: string): string[] => [...expr.matchAll(/\bsssonector_[a-z0-9_]+/g)].map((m) => m[0])
  for (const v of dashboard.templating.list) {
    const query = typeof v.query === 'string' ? v.query : (v.query as { query?: string } | undefined)?.query ?? ''
    for (const name of named(query)) t.ok(exposed.has(name), `variable ${v.name}: ${name} is exposed`)
  }
  const queries: string[] = []
  for (const panel of dashboard.panels.filter((p) => p.targets !== undefined)) {
    t.ok((panel.fieldConfig?.defaults?.unit ?? '') !== '', `${panel.title}: a unit`)
    for (const target of panel.targets!) {
      queries.push(target.expr)
      const names = named(target.expr)
      t.ok(names.length > 0, `${panel.title}: a metric in ${target.expr}`)
      for (const name of names) t.ok(exposed.has(name), `${panel.title}: ${name} is exposed`)
      t.match(target.legendFormat ?? '', /\{\{\s*upstream\s*\}\}/, `${panel.title}: the legend ${JSON.stringify(target.legendFormat)} names the upstream`)
      t.match(target.expr, /instance=~"\$instance"/, `${panel.title}: filtered by the instance selector`)
      t.match(target.expr, /upstream=~"\$upstream"/, `${panel.title}: filtered by the upstream selector`)
    }
  }
  for (const title of ['connection age', 'connections opened', 'health-check failures']) {
    t.ok(dashboard.panels.some((p) => p.title.toLowerCase().includes(title)), `a panel on ${title}`)
  }
  const rules = readFileSync(join(monitoring, 'sssonector-alerts.yml'), 'utf8')
  for (const m of rules.matchAll(/^\s*expr: (.*)$/gm)) {
    for (const name of named(m[1])) t.ok(exposed.has(name), `alert rule: ${name} is exposed`)
  }

  // The queries parse as PromQL (the dashboard's variables given values).
  if (promtool === null && !ci) return
  const dir = mkdtempSync(join(tmpdir(), 'sssonector-dashboard-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'queries.yml')
  const substituted = queries.map((q) => q.replaceAll('$__rate_interval', '1m').replaceAll('$instance', '.*').replaceAll('$upstream', '.*'))
  writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules: substituted.map((expr, i) => ({ record: `dashboard:query_${i}`, expr })) }] }))
  const check = await run(['check', 'rules', file])
  t.equal(check.code, 0, `every dashboard query parses:\n${check.out}`)
})

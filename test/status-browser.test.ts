import t from 'tap'
import { existsSync, writeFileSync } from 'node:fs'
import { chromium } from 'playwright-core'
import type { Browser } from 'playwright-core'
import { request } from 'undici'
import { refusedPort, startGateway, startUpstream } from './helpers/servers.js'
import { countColor, decodePng } from './helpers/png.js'

// Debian's chromium, installed by .ci/run (apt-get install chromium).
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const skip = existsSync(executablePath) ? false : `no browser at ${executablePath} (apt-get install chromium)`

/** The state cell of a target out of rotation: #d62728 in lib/status.ts. */
const DOWN_RED: [number, number, number] = [214, 39, 40]

let browser: Browser | null = null
async function launch (): Promise<Browser> {
  browser ??= await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--force-color-profile=srgb']
  })
  return browser
}
t.teardown(async () => { await browser?.close() })

t.test('a browser shows a down target marked down on the status page, and the page refreshes itself', { skip }, async (t) => {
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { orders: { targets: [up.url, dead], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'orders' }],
    status: { path: '/status' }
  })
  for (let i = 0; i < 3; i++) await fetch(`${gw.url}/x`).then(async (r) => await r.arrayBuffer())
  const page = await (await launch()).newPage()
  t.teardown(() => page.close())
  await page.goto(`${gw.url}/status`)
  t.equal(await page.title(), 'fastify-sssonector status')
  const downRow = page.locator(`tr[data-target="${dead}"]`)
  t.equal(await downRow.getAttribute('data-state'), 'down')
  t.equal(await downRow.locator('td.state').innerText(), 'DOWN')
  t.match(await downRow.innerText(), /connect_failed/)
  t.equal(await page.locator(`tr[data-target="${up.url}"] td.state`).innerText(), 'UP')
  // It refreshes itself: a reload arrives without anyone asking.
  const reload = page.waitForEvent('load', { timeout: 10_000 })
  await reload
  t.pass('the page reloaded by itself')
})

t.test('an operator\'s page: a dead target red with its cause and next trial, a target answering 503s with its classes and retries, rates, latency, sparklines; red where the screenshot shows the dead row', { skip }, async (t) => {
  const up = await startUpstream(t)
  const failing = await startUpstream(t, (_req, res) => { res.statusCode = 503; res.end('busy') })
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: {
      orders: {
        targets: [up.url, failing.url, dead],
        balance: 'round-robin',
        // The 503s are counted and retried, but do not open its breaker here: it stays in rotation.
        circuitBreaker: { consecutiveFailures: 100, minimumRequests: 1000 }
      }
    },
    routes: [{ prefix: '/', upstream: 'orders' }],
    status: { path: '/status' }
  })
  const statuses: number[] = []
  for (let i = 0; i < 12; i++) {
    const res = await request(`${gw.url}/x/${i}`, { dispatcher: gw.agent })
    await res.body.dump()
    statuses.push(res.statusCode)
  }
  t.same(statuses, Array(12).fill(200), 'every GET answered 200: the 503s and the refused connect were retried on the live target')

  const page = await (await launch()).newPage({ viewport: { width: 1800, height: 700 }, deviceScaleFactor: 1 })
  t.teardown(() => page.close())
  const before = Date.now()
  await page.goto(`${gw.url}/status`)
  const cells = async (url: string): Promise<string[]> => await page.locator(`tr[data-target="${url}"] td`).allInnerTexts()
  const headers = await page.locator('section[data-upstream="orders"] thead th').allInnerTexts()
  const col = (name: string): number => {
    const i = headers.indexOf(name)
    if (i === -1) throw new Error(`no column ${name} in ${headers.join(', ')}`)
    return i
  }

  // The dead target: red, why, and when it is tried again.
  const deadRow = page.locator(`tr[data-target="${dead}"]`)
  t.equal(await deadRow.getAttribute('data-state'), 'down')
  const deadCells = await cells(dead)
  t.equal(deadCells[col('state')], 'DOWN')
  t.match(deadCells[col('why')], /connect_failed for \d+s: connect_refused/, 'its cause, since when, and why')
  t.match(deadCells[col('why')], /next trial in \d+\.\ds/, 'when its next trial is due')
  t.equal(deadCells[col('conn errors')], '1', 'its refused connect, apart from any answer')
  t.equal(deadCells[col('retries')], '1', 'retried on another target')
  t.match(await page.locator('section[data-upstream="orders"] .verdict').innerText(), new RegExp(`1 of 3 targets out of rotation: ${dead} \\(connect_failed\\)`))

  // The target answering 503s: in rotation, its answers by class, its retries.
  const failingCells = await cells(failing.url)
  t.equal(failingCells[col('state')], 'UP')
  const fiveXX = Number(failingCells[col('5xx')])
  t.ok(fiveXX >= 3, `its 503 answers counted as 5xx (${fiveXX})`)
  t.equal(failingCells[col('retries')], String(fiveXX), 'each retried on another target')
  t.equal(failingCells[col('conn errors')], '0', '503 answers are not connection errors')
  t.equal(failingCells[col('2xx')], '0')

  // The live target: its rate, its answers, its latency.
  const upCells = await cells(up.url)
  t.equal(upCells[col('2xx')], '12', 'it answered all 12 requests')
  const rate = Number(/^([\d.]+)\/s$/.exec(upCells[col('rate')])?.[1])
  t.ok(rate > 0, `a rate over the last 10 s (${upCells[col('rate')]})`)
  t.match(upCells[col('p50')], /^\d+(\.\d)? ms$/)
  t.match(upCells[col('p99')], /^\d+(\.\d)? ms$/)

  // Sparklines: inline SVG, attempts and failures.
  for (const url of [up.url, failing.url, dead]) {
    const svg = page.locator(`tr[data-target="${url}"] td.spark svg`)
    t.equal(await svg.count(), 1, `${url}: a sparkline`)
    t.equal(await svg.locator('polyline.requests').count(), 1)
    t.equal(await svg.locator('path.failures').getAttribute('d') !== '', url !== up.url, `${url}: failure bars drawn when it failed`)
  }
  t.match(await page.locator(`tr[data-target="${failing.url}"] svg title`).textContent(), new RegExp(`${fiveXX} failed`))
  t.equal(await page.locator('link, script, img, [src]').count(), 0, 'no external asset')

  // When it was rendered.
  const rendered = Date.parse(String(await page.locator('.rendered time').getAttribute('datetime')))
  t.ok(rendered >= before - 1000 && rendered <= Date.now(), 'the time the page was rendered')

  // The screenshot: the dead target's row holds the red; the live one's none.
  const png = await page.screenshot({ fullPage: true })
  if (process.env.STATUS_SCREENSHOT !== undefined) writeFileSync(process.env.STATUS_SCREENSHOT, png)
  const img = decodePng(png)
  const deadBox = await deadRow.boundingBox()
  const upBox = await page.locator(`tr[data-target="${up.url}"]`).boundingBox()
  t.ok(deadBox !== null && upBox !== null, 'both rows are laid out')
  const redInDead = countColor(img, deadBox!, DOWN_RED)
  t.ok(redInDead > 200, `the dead target's row shows red in the screenshot (${redInDead} pixels of #d62728)`)
  t.equal(countColor(img, upBox!, DOWN_RED), 0, 'the live target\'s row shows none')
})

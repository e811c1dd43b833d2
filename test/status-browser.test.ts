import t from 'tap'
import { existsSync } from 'node:fs'
import { chromium } from 'playwright-core'
import { refusedPort, startGateway, startUpstream } from './helpers/servers.js'

// Debian's chromium, installed by .ci/run (apt-get install chromium).
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const skip = existsSync(executablePath) ? false : `no browser at ${executablePath} (apt-get install chromium)`

t.test('a browser shows a down target marked down on the status page, and the page refreshes itself', { skip }, async (t) => {
  const up = await startUpstream(t)
  const dead = `http://127.0.0.1:${await refusedPort()}`
  const gw = await startGateway(t, {
    upstreams: { orders: { targets: [up.url, dead], balance: 'round-robin' } },
    routes: [{ prefix: '/', upstream: 'orders' }],
    status: { path: '/status' }
  })
  for (let i = 0; i < 3; i++) await fetch(`${gw.url}/x`).then(async (r) => await r.arrayBuffer())
  const browser = await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
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

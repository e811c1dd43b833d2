// The demo gateway behind `npm start`, as a newcomer uses it: requests balance
// over its three upstreams, and breaking one (down, 503, slow) costs no request.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'

const demo = fileURLToPath(new URL('../dist/examples/demo-gateway.js', import.meta.url))

t.test('npm start: the demo balances, and an upstream broken down, 503 or slow costs no request', { skip: existsSync(demo) ? false : 'dist/ is not built (npm test builds it)' }, async (t) => {
  const child = spawn(process.execPath, [demo], { env: { ...process.env, PORT: '0', LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null) process.kill(child.pid!, 'SIGKILL') })
  let out = ''
  child.stdout.setEncoding('utf8')
  while (!/break: +\S+/.test(out)) {
    const [chunk] = await once(child.stdout, 'data') as [string]
    out += chunk
  }
  const base = /proxy: +(http:\/\/[^/]+)\/api\/hello/.exec(out)![1]
  // The newcomer's client: its keep-alive connections are closed before the signal (an open idle one is waited for up to the drain).
  const agent = new Agent()
  const get = async (path: string, headers: Record<string, string> = {}): ReturnType<typeof request> => await request(`${base}${path}`, { dispatcher: agent, headers })
  const hello = async (): Promise<{ status: number, upstream: string }> => {
    const res = await get('/api/hello')
    const body = await res.body.json() as { upstream: string }
    return { status: res.statusCode, upstream: body.upstream }
  }
  const round = async (n: number): Promise<Array<{ status: number, upstream: string }>> => {
    const out = []
    for (let i = 0; i < n; i++) out.push(await hello())
    return out
  }
  t.same(new Set((await round(3)).map((r) => r.upstream)), new Set(['alpha', 'beta', 'gamma']), 'round-robin over the three')

  for (const mode of ['down', '503', 'slow']) {
    const set = await get(`/demo/beta/${mode}`)
    t.equal(set.statusCode, 200, `beta set ${mode}`)
    await set.body.dump()
    const answers = await round(6)
    t.same(answers.map((a) => a.status), Array(6).fill(200), `beta ${mode}: every request answered 200`)
    t.notOk(answers.some((a) => a.upstream === 'beta'), `beta ${mode}: none answered by beta`)
  }
  const page = await get('/status', { accept: 'text/html' })
  const html = await page.body.text()
  t.match(html, /<html/, 'the status page is HTML for a browser')
  t.match(html, /beta|127\.0\.0\.1/, 'with the upstream\'s targets')
  const mended = await get('/demo/beta/up')
  await mended.body.dump()
  const metrics = await get('/metrics')
  t.match(await metrics.body.text(), /sssonector_request_retries_total/, '/metrics shows the retries')

  await agent.close()
  process.kill(child.pid!, 'SIGTERM')
  const [code] = await once(child, 'exit') as [number | null]
  t.equal(code, 0, 'Ctrl-C (SIGTERM) closes it gracefully')
})

import t from 'tap'
import http from 'node:http'
import type net from 'node:net'
import { startUpstream } from './helpers/servers.js'
import type { Teardown } from './helpers/servers.js'
import { gateway, skip } from './fixtures/gateway-process.js'
import type { Child } from './fixtures/gateway-process.js'

// Each run starts a gateway process (about a second of CPU to load the package): on a busy
// machine the 20 runs take longer than the default file timeout.
t.setTimeout(240_000)

// Shutdown under load, as a client that does not retry sees it: a request is lost when it ends
// in a reset, a cut answer, or any answer that is not the upstream's. A new connection refused
// after the listener closed is not lost (nothing was sent; the client goes elsewhere).

/** What a client that does not retry saw of one request, and when it sent it. */
type Outcome = { sent: number } & ({ status: number, body: string, complete: boolean, connection: string | undefined } | { error: string, reused: boolean })

/** The Connection header of the last answer on each socket. */
const lastAnswer = new WeakMap<net.Socket, string | undefined>()

function send (port: number, agent: http.Agent, onSocket: (s: net.Socket) => void): Promise<Outcome> {
  return new Promise((resolve) => {
    const sent = Date.now()
    const req = http.get({ host: '127.0.0.1', port, path: '/load', agent }, (res) => {
      lastAnswer.set(req.socket!, res.headers.connection)
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('error', () => {})
      res.on('close', () => {
        resolve({ sent, status: res.statusCode!, body, complete: res.complete, connection: res.headers.connection })
      })
    })
    req.on('socket', onSocket)
    req.on('error', (err: NodeJS.ErrnoException) => { resolve({ sent, error: err.code ?? err.message, reused: req.reusedSocket }) })
  })
}

const ANSWER = 'answered by the upstream'
const WORKERS = 6
const STEADY = 60
const RUNS = 20

interface LoadRun {
  /** Answers from the upstream, in all and to requests sent after SIGTERM. */
  ok: number
  afterSignal: number
  /** Requests on their way when SIGTERM was sent. */
  inFlightAtSignal: number
  /** Answers to requests sent after the gateway began to close (its log line's time), and those of them without Connection: close. */
  whileClosing: number
  withoutClose: number
  /** Connections closed after an answer saying Connection: close, and those closed although their last answer did not say it. */
  closedAnnounced: number
  closedUnannounced: number
  /** New connections refused after the listener closed (not lost: the client knows nothing was sent). */
  refused: number
  lost: string[]
  code: number | null
  signal: string | null
  ms: number
}

/**
 * One gateway under steady keep-alive load: WORKERS clients each send
 * requests back to back through a keep-alive agent of WORKERS sockets, none is
 * retried; SIGTERM once STEADY were answered (every socket in use and reused); each worker stops at its first
 * refused connection (the listener is closed) or once the gateway has exited.
 */
async function loadRun (t: Teardown, started: Promise<Child>): Promise<LoadRun> {
  const gw = await started
  const agent = new http.Agent({ keepAlive: true, maxSockets: WORKERS })
  t.teardown(() => agent.destroy())
  const run: LoadRun = { ok: 0, afterSignal: 0, inFlightAtSignal: 0, whileClosing: 0, withoutClose: 0, closedAnnounced: 0, closedUnannounced: 0, refused: 0, lost: [], code: null, signal: null, ms: 0 }
  const sockets = new Set<net.Socket>()
  const onSocket = (s: net.Socket): void => {
    if (sockets.has(s)) return
    sockets.add(s)
    s.once('close', () => {
      if (!lastAnswer.has(s)) return
      if (lastAnswer.get(s) === 'close') run.closedAnnounced++
      else run.closedUnannounced++
    })
  }
  const gone = { exited: false }
  const exit = gw.exit.then((r) => { gone.exited = true; return r })
  let signalled = false
  const answers: Array<{ sent: number, connection: string | undefined }> = []
  let inFlight = 0
  let steady: () => void = () => {}
  const underLoad = new Promise<void>((resolve) => { steady = resolve })
  const worker = async (): Promise<void> => {
    while (!gone.exited) {
      const sentAfterSignal = signalled
      inFlight++
      const r = await send(gw.port, agent, onSocket)
      inFlight--
      if ('error' in r) {
        if (r.error === 'ECONNREFUSED') {
          run.refused++
          return
        }
        run.lost.push(`${r.error} on a ${r.reused ? 'reused' : 'new'} connection`)
        continue
      }
      if (r.status !== 200 || r.body !== ANSWER || !r.complete) {
        run.lost.push(`${r.complete ? 'complete' : 'cut'} answer ${r.status}: ${r.body.slice(0, 80)}`)
        continue
      }
      run.ok++
      if (sentAfterSignal) run.afterSignal++
      answers.push({ sent: r.sent, connection: r.connection })
      if (run.ok === STEADY) steady()
    }
  }
  const workers = Array.from({ length: WORKERS }, worker)
  await underLoad
  const start = Date.now()
  signalled = true
  run.inFlightAtSignal = inFlight
  gw.child.kill('SIGTERM')
  const [code, signal] = await exit
  run.ms = Date.now() - start
  run.code = code
  run.signal = signal
  await Promise.all(workers)
  // The gateway marks itself closing in the same synchronous step as this line: a request sent
  // in a later millisecond reached it afterwards.
  const closingAt = (await gw.logged(/closing on signal/)).time as number
  const whileClosing = answers.filter((a) => a.sent > closingAt)
  run.whileClosing = whileClosing.length
  run.withoutClose = whileClosing.filter((a) => a.connection !== 'close').length
  return run
}

t.test('SIGTERM under steady keep-alive load, 20 runs: no request lost, every answer while closing says Connection: close, exit 0', { skip }, async (t) => {
  const up = await startUpstream(t, (req, res) => { res.end(req.url === '/health' ? 'ok' : ANSWER) })
  // Three gateways start ahead of the run that uses them (starting one takes longer than a run).
  const starting = Array.from({ length: RUNS }, () => null as Promise<Child> | null)
  const start = (i: number): void => { if (i < RUNS && starting[i] === null) starting[i] = gateway(t, up.url, { delay: 3000 }) }
  const runs: LoadRun[] = []
  for (let i = 0; i < RUNS; i++) {
    for (let j = i; j < i + 3; j++) start(j)
    const r = await loadRun(t, starting[i]!)
    runs.push(r)
    t.comment(`run ${i + 1}: ${r.inFlightAtSignal} in flight at SIGTERM; ${r.ok} answered (${r.afterSignal} sent after SIGTERM, ${r.whileClosing} after the gateway began to close), ` +
      `${r.refused} refused after the listener closed, ${r.lost.length} lost${r.lost.length > 0 ? ` (${r.lost.join('; ')})` : ''}, ` +
      `connections closed: ${r.closedAnnounced} after Connection: close, ${r.closedUnannounced} without; exit ${r.code ?? r.signal} ${r.ms} ms after SIGTERM`)
  }
  const lost = runs.flatMap((r) => r.lost)
  t.same(lost, [], `no request lost over ${RUNS} runs (per run: ${runs.map((r) => r.lost.length).join(' ')})`)
  t.same(runs.map((r) => r.code), runs.map(() => 0), 'every run exits 0')
  t.equal(runs.filter((r) => r.inFlightAtSignal === 0).length, 0, 'in every run, requests were on their way when SIGTERM was sent (the signal came under load)')
  // Once closing, each connection gets one more answer, so few requests are sent after that moment:
  // the connections' last answers are where Connection: close shows.
  const whileClosing = runs.reduce((n, r) => n + r.whileClosing, 0)
  t.equal(runs.reduce((n, r) => n + r.withoutClose, 0), 0, `each of the ${whileClosing} answers to requests sent after the gateway began to close carries Connection: close`)
  const announced = runs.reduce((n, r) => n + r.closedAnnounced, 0)
  t.equal(runs.reduce((n, r) => n + r.closedUnannounced, 0), 0, `no connection was closed without a last answer saying Connection: close (${announced} were closed after one)`)
})

import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'

/** One app the process closes on a signal, with how long it may take. */
interface Closable {
  app: FastifyInstance
  delay: number
  /** Time after the signal before the app stops taking requests (a load balancer deregisters it meanwhile). */
  preStop: number
  /** Requests still in flight, for the log line when the delay runs out. */
  inFlight: () => number
  onSignal: () => void
}

/**
 * close-with-grace, once per process whatever the number of apps (50 apps in
 * one process add 50 listeners nowhere): on SIGTERM or SIGINT, every
 * registered app is closed; past the longest delay, the requests still in
 * flight are counted in a log line and the process exits 1; a second signal
 * exits at once; an uncaught error takes the same path and is logged.
 */
const apps = new Set<Closable>()
let installed: { uninstall: () => void } | null = null

export function closeOnSignal (entry: Closable): () => void {
  apps.add(entry)
  if (installed === null) install()
  return () => {
    apps.delete(entry)
    if (apps.size === 0 && installed !== null) {
      installed.uninstall()
      installed = null
    }
  }
}

function install (): void {
  const first = [...apps][0]
  const delay = Math.max(...[...apps].map((a) => a.delay))
  installed = closeWithGrace({
    delay,
    logger: { error: (msg: unknown) => { first.app.log.error(msg as object) } },
    onTimeout: (ms: number) => {
      for (const a of apps) {
        a.app.log.error({ cut: a.inFlight(), delay: ms }, `graceful close took longer than ${ms} ms: ${a.inFlight()} requests cut`)
      }
    },
    onSecondSignal: (signal: string) => { first.app.log.error({ signal }, 'second signal: exiting at once') }
  }, async ({ signal, err }) => {
    const closing = [...apps]
    for (const a of closing) {
      if (err !== undefined) a.app.log.error({ err }, 'closing after an uncaught error')
      else a.app.log.info({ signal }, 'closing on signal')
      a.onSignal()
    }
    await Promise.all(closing.map(async (a) => {
      if (a.preStop > 0) await new Promise((resolve) => setTimeout(resolve, a.preStop))
      await a.app.close()
    }))
  })
}

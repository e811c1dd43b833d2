// A real Redis for the shared-state tests: Debian's redis-server on a loopback
// port, no persistence, stopped by its PID (SIGKILL for a crash), started
// again on the same port.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import net from 'node:net'
import type { Teardown } from './servers.js'
import { findBinary, skipWithout } from './binaries.js'

export const redisServer = findBinary(['/usr/bin/redis-server', '/usr/local/bin/redis-server'])
/** Under CI a missing redis-server fails the tests (.ci/run installs it); here they skip, saying so. */
export const noRedis = skipWithout(redisServer, 'redis-server not found: install Debian\'s redis-server (apt-get install redis-server) to run this test')

export interface RedisServer {
  readonly url: string
  readonly port: number
  readonly pid: number | undefined
  /** Stops it by its PID (SIGKILL: a crash, by default) and resolves on its exit. */
  stop (signal?: NodeJS.Signals): Promise<void>
  /** Starts it again on the same port. */
  restart (): Promise<void>
}

async function freePort (): Promise<number> {
  const s = net.createServer()
  s.listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as net.AddressInfo).port
  await new Promise((resolve) => s.close(resolve))
  return port
}

export async function startRedis (t: Teardown): Promise<RedisServer> {
  if (redisServer === null) throw new Error('redis-server not found: .ci/run installs Debian\'s redis-server')
  let child: ChildProcess | null = null
  let port = 0
  const spawnOn = async (at: number): Promise<string | null> => {
    const c = spawn(redisServer, ['--port', String(at), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'no', '--loglevel', 'notice'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    const ready = await new Promise<boolean>((resolve) => {
      const read = (b: Buffer): void => {
        out += b.toString()
        if (out.includes('Ready to accept connections')) resolve(true)
      }
      c.stdout!.on('data', read)
      c.stderr!.on('data', read)
      c.once('exit', () => resolve(false))
    })
    if (!ready) return out
    child = c
    return null
  }
  for (let tries = 0; ; tries++) {
    port = await freePort()
    const failed = await spawnOn(port)
    if (failed === null) break
    if (tries >= 4 || !/Address already in use/.test(failed)) throw new Error(`redis-server did not start: ${failed}`)
  }
  const stop = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    const c = child as ChildProcess | null
    child = null
    if (c === null || c.exitCode !== null || c.signalCode !== null) return
    const exited = once(c, 'exit')
    process.kill(c.pid!, signal)
    await exited
  }
  t.teardown(() => stop('SIGTERM'))
  return {
    get url () { return `redis://127.0.0.1:${port}` },
    get port () { return port },
    get pid () { return (child as ChildProcess | null)?.pid },
    stop,
    async restart () {
      await stop()
      const failed = await spawnOn(port)
      if (failed !== null) throw new Error(`redis-server did not start again on port ${port}: ${failed}`)
    }
  }
}

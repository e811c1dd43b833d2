// HAProxy as an arm of a benchmark, where it is installed (`haproxy` on the
// PATH; Debian's package): the proxy the figures were first measured
// against, run as its users run it (its default threads, keep-alive to the
// targets, `balance leastconn`), on 127.0.0.1, stopped by its PID.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { track } from './children.js'
import type { Child } from './children.js'

/** The `haproxy` executable on the PATH, or null where there is none. */
export function haproxyPath (): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue
    const candidate = path.join(dir, 'haproxy')
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  return null
}

/** A port free on 127.0.0.1 now (the kernel's pick, released for HAProxy to bind). */
async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** Whether something accepts a connection on 127.0.0.1:port now. */
async function accepts (port: number): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { socket.destroy(); resolve(false) })
  })
}

/** The configuration: `targets` as servers (`http://host:port`), least connections, keep-alive both ways. */
export function haproxyConfig (port: number, targets: string[]): string {
  const servers = targets.map((t, i) => {
    const u = new URL(t)
    return `  server t${i} ${u.hostname}:${u.port}`
  })
  return [
    'global',
    // under the FD limit a container gives (HAProxy would ask for 2 per connection beyond it)
    '  maxconn 4000',
    'defaults',
    '  mode http',
    '  option http-keep-alive',
    '  timeout connect 5s',
    '  timeout client 30s',
    '  timeout server 30s',
    'frontend bench',
    `  bind 127.0.0.1:${port}`,
    '  default_backend targets',
    'backend targets',
    '  balance leastconn',
    ...servers,
    ''
  ].join('\n')
}

/**
 * Starts HAProxy in front of `targets` and resolves once it accepts
 * connections (a connect tried every 20 ms, up to `timeout` ms). Tracked in
 * `children`; stop it with stopChild (SIGTERM by its PID), which also
 * removes its configuration's directory.
 */
export async function startHaproxy (name: string, executable: string, targets: string[], children: Set<ChildProcess>, timeout: number): Promise<Child> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bench-haproxy-'))
  const port = await freePort()
  const file = path.join(dir, 'haproxy.cfg')
  await writeFile(file, haproxyConfig(port, targets))
  // -db: in the foreground, so its PID is the one stopped
  const cp = spawn(executable, ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  cp.stderr?.setEncoding('utf8').on('data', (chunk: string) => { if (stderr.length < 4096) stderr += chunk })
  cp.once('exit', () => { rm(dir, { recursive: true, force: true }).catch(() => {}) })
  const child = track(name, cp, children)
  const deadline = performance.now() + timeout
  while (!(await accepts(port))) {
    if (child.exit !== null) throw new Error(`${name} ${child.exit} before listening: ${stderr.trim().split('\n').slice(-2).join(' / ')}`)
    if (performance.now() > deadline) {
      cp.kill('SIGKILL')
      throw new Error(`${name}: not listening on 127.0.0.1:${port} within ${timeout} ms`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  child.port = port
  return child
}

// A real DNS server for the discovery tests: Debian's dnsmasq, started on a
// loopback port with a hosts file the test rewrites (SIGHUP rereads it) and
// SRV records given at start (a restart changes them).
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import dgram from 'node:dgram'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Teardown } from './servers.js'
import { findBinary, skipWithout } from './binaries.js'

/** dnsmasq's path (Debian's dnsmasq-base), or null. */
export const dnsmasq = findBinary(['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq'])
/** Under CI a missing dnsmasq fails the tests (.ci/run installs it); here they skip, saying so. */
export const noDnsmasq = skipWithout(dnsmasq, 'dnsmasq not found: install Debian\'s dnsmasq-base (apt-get install dnsmasq-base) to run this test')

export interface SrvRecord { name: string, target: string, port: number, priority?: number, weight?: number }

export interface DnsOptions {
  /** name -> addresses, in the hosts file. */
  hosts?: Record<string, string[]>
  srv?: SrvRecord[]
  /** TTL of the answers from the hosts file (s). @default 1 */
  ttl?: number
}

export interface DnsServer {
  /** `127.0.0.1:port`, for `servers`. */
  readonly server: string
  readonly port: number
  readonly pid: number | undefined
  /** Rewrites the hosts file and has dnsmasq reread it (SIGHUP); resolves once it says it did. */
  setHosts (hosts: Record<string, string[]>): Promise<void>
  /** Stops it (SIGTERM by its PID) and resolves on its exit. */
  stop (): Promise<void>
  /** Starts it again on the same port, with new SRV records if given. */
  restart (options?: { srv?: SrvRecord[] }): Promise<void>
}

async function freeUdpPort (): Promise<number> {
  const s = dgram.createSocket('udp4')
  s.bind(0, '127.0.0.1')
  await once(s, 'listening')
  const port = s.address().port
  s.close()
  return port
}

function hostsText (hosts: Record<string, string[]>): string {
  return Object.entries(hosts).flatMap(([name, addresses]) => addresses.map((a) => `${a} ${name}\n`)).join('')
}

/** Starts dnsmasq on 127.0.0.1 (a free port), answering only from its hosts file and SRV records, for the `.internal` domain. */
export async function startDns (t: Teardown, options: DnsOptions = {}): Promise<DnsServer> {
  if (dnsmasq === null) throw new Error('dnsmasq not found: .ci/run installs Debian\'s dnsmasq-base, which brings it')
  const dir = mkdtempSync(join(tmpdir(), 'sssonector-dns-'))
  const hostsFile = join(dir, 'hosts')
  writeFileSync(hostsFile, hostsText(options.hosts ?? {}))
  let srv = options.srv ?? []
  let child: ChildProcess | null = null
  let log = ''
  let reads = 0
  let port = 0

  /** Starts dnsmasq on `at`: true once it read its hosts file, false when it exited first (its output in `failed`). */
  let failed = ''
  const spawnOn = async (at: number): Promise<boolean> => {
    const args = [
      '--keep-in-foreground', '--log-facility=-', '--pid-file=', '--user=root',
      `--port=${at}`, '--listen-address=127.0.0.1', '--bind-interfaces',
      '--no-resolv', '--no-hosts', '--no-negcache', `--addn-hosts=${hostsFile}`,
      `--local-ttl=${options.ttl ?? 1}`, '--local=/internal/',
      ...srv.map((r) => `--srv-host=${r.name},${r.target},${r.port},${r.priority ?? 0},${r.weight ?? 1}`)
    ]
    const c = spawn(dnsmasq, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    const before = reads
    let out = ''
    const ok = await new Promise<boolean>((resolve) => {
      c.stderr!.setEncoding('utf8')
      c.stderr!.on('data', (s: string) => {
        out += s
        log += s
        reads = (log.match(/read .*hosts - \d+ names/g) ?? []).length
        if (reads > before) resolve(true)
      })
      c.once('exit', () => resolve(false))
    })
    if (ok) child = c
    else failed = out
    return ok
  }

  const launch = async (): Promise<void> => {
    for (let tries = 0; tries < 5; tries++) {
      port = await freeUdpPort()
      if (await spawnOn(port)) return
      // Its port was taken between our probe and its bind: another port.
      if (!/Address already in use/.test(failed)) throw new Error(`dnsmasq did not start: ${failed}`)
    }
    throw new Error('dnsmasq found no free port in 5 tries')
  }

  const stop = async (): Promise<void> => {
    const c = child
    child = null
    if (c === null || c.exitCode !== null || c.signalCode !== null) return
    const exited = once(c, 'exit')
    process.kill(c.pid!, 'SIGTERM')
    await exited
  }

  await launch()
  t.teardown(async () => {
    await stop()
    rmSync(dir, { recursive: true, force: true })
  })

  return {
    get server () { return `127.0.0.1:${port}` },
    get port () { return port },
    get pid () { return child?.pid },
    async setHosts (hosts) {
      writeFileSync(hostsFile, hostsText(hosts))
      const c = child
      if (c === null) return
      const want = reads + 1
      const reread = new Promise<void>((resolve) => {
        const check = (): void => {
          if (reads >= want) {
            c.stderr!.off('data', check)
            resolve()
          }
        }
        c.stderr!.on('data', check)
      })
      process.kill(c.pid!, 'SIGHUP')
      await reread
    },
    stop,
    async restart (opts = {}) {
      await stop()
      if (opts.srv !== undefined) srv = opts.srv
      // The same port, so the gateway's configured server finds it again (the old process has exited).
      if (!await spawnOn(port)) throw new Error(`dnsmasq did not start again on port ${port}: ${failed}`)
    }
  }
}

// Real servers from Debian's packages that some tests start (dnsmasq, redis-server):
// where each is, and whether its tests skip (here) or fail (under CI, which installs it).
import { execFileSync } from 'node:child_process'

/** The first of `paths` that runs with `--version`, or null. */
export function findBinary (paths: string[]): string | null {
  for (const p of paths) {
    try {
      execFileSync(p, ['--version'], { stdio: 'ignore' })
      return p
    } catch {}
  }
  return null
}

const ci = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false'

/** A tap `skip` for a missing binary: its reason here, false under CI (the test then fails, as it must). */
export function skipWithout (binary: string | null, reason: string): string | false {
  return binary === null && !ci ? reason : false
}

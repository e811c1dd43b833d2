// The fault schedules of the chaos run, drawn from a seeded source before the
// run starts: the same seed gives the same faults at the same moments (the
// interleaving with the load is the machine's).
import { mulberry32 } from './chaos-protocol.js'

export type Scenario = 'random' | 'churn' | 'rolling'

/** A mode of an upstream process switched on for a while. */
export type ModeKind = 'refuse' | 'reset' | 'slow' | 'burst503' | 'stray'

export type ScheduledFault =
  /** SIGKILL, then a restart on the same port `restartDelay` ms after the process is gone */
  | { at: number, target: number, op: 'kill', restartDelay: number }
  /** SIGTERM (listener closed, in-flight finished, exit), then a restart `restartDelay` ms later */
  | { at: number, target: number, op: 'term', restartDelay: number }
  /** a mode on from `at` for `duration` ms */
  | { at: number, target: number, op: 'mode', kind: ModeKind, duration: number, param: string | null }

/** How each fault is counted in the report. */
export function faultLabel (f: ScheduledFault): string {
  if (f.op !== 'mode') return f.op
  if (f.kind === 'reset') return `reset-${f.param ?? 'head'}`
  if (f.kind === 'stray') return `stray-${f.param ?? 'same'}`
  if (f.kind === 'burst503') return '503'
  return f.kind
}

/**
 * Whether a fault takes its target out of "answering normally" (oracle 1):
 * slowness does not; stray bytes do (a target that writes answers no request
 * asked for may hand one client another's answer: the gateway takes it out).
 */
export function unhealthy (f: ScheduledFault): boolean {
  return f.op !== 'mode' || f.kind === 'refuse' || f.kind === 'reset' || f.kind === 'burst503' || f.kind === 'stray'
}

type Pick = 'kill' | 'term' | ModeKind
const weights: Array<[Pick, number]> = [
  ['kill', 2], ['term', 1], ['refuse', 1.5], ['reset', 1.5], ['slow', 1.5], ['burst503', 1.5], ['stray', 1.5]
]

function pick<T> (random: () => number, items: Array<[T, number]>): T {
  const sum = items.reduce((a, [, w]) => a + w, 0)
  let x = random() * sum
  for (const [item, w] of items) {
    x -= w
    if (x < 0) return item
  }
  return items[items.length - 1]![0]
}

function param (random: () => number, kind: ModeKind): string | null {
  if (kind === 'reset') return random() < 0.5 ? 'head' : 'body'
  if (kind === 'stray') return random() < 0.5 ? 'same' : 'late'
  return null
}

/**
 * `random`: each of the three targets, on its own seeded stream, alternates
 * clean gaps (0.2-3.7 s) and fault episodes: a SIGKILL (restart 0-300 ms after
 * the exit), a SIGTERM restart (0-300 ms), or a mode for 0.3-2.5 s (refusing,
 * resetting, slow, 503s, stray bytes), with a 35% chance of a second mode
 * stacked on it. Faults across targets overlap freely. Nothing starts in the
 * last `tailMs`, so the last recoveries are checked while the load still runs.
 *
 * `churn`: every 500 ms one of the three (drawn at random) is SIGKILLed and
 * restarted as soon as it is gone.
 *
 * `rolling`: every 2 s the next target in turn gets a SIGTERM restart.
 */
export function schedule (scenario: Scenario, seed: number, durationMs: number, tailMs: number): ScheduledFault[] {
  const out: ScheduledFault[] = []
  if (scenario === 'churn') {
    const random = mulberry32(seed)
    for (let at = 500; at < durationMs; at += 500) out.push({ at, target: Math.floor(random() * 3), op: 'kill', restartDelay: 0 })
    return out
  }
  if (scenario === 'rolling') {
    let i = 0
    for (let at = 1000; at < durationMs - 500; at += 2000) out.push({ at, target: i++ % 3, op: 'term', restartDelay: 0 })
    return out
  }
  const end = durationMs - tailMs
  for (let target = 0; target < 3; target++) {
    const random = mulberry32((seed ^ Math.imul(target + 1, 0x9E3779B1)) >>> 0)
    let t = Math.floor(random() * 1500)
    while (t < end) {
      const kind = pick(random, weights)
      if (kind === 'kill' || kind === 'term') {
        const restartDelay = Math.floor(random() * 300)
        out.push({ at: t, target, op: kind, restartDelay })
        t += restartDelay + 400
      } else {
        const duration = Math.min(300 + Math.floor(random() * 2200), end - t)
        out.push({ at: t, target, op: 'mode', kind, duration, param: param(random, kind) })
        let episodeEnd = t + duration
        if (random() < 0.35) {
          const others = weights.filter(([k]) => k !== kind && k !== 'kill' && k !== 'term') as Array<[ModeKind, number]>
          const second = pick(random, others)
          const at = t + Math.floor(random() * duration)
          const d = Math.min(300 + Math.floor(random() * 1500), end - at)
          if (d > 0) {
            out.push({ at, target, op: 'mode', kind: second, duration: d, param: param(random, second) })
            episodeEnd = Math.max(episodeEnd, at + d)
          }
        }
        t = episodeEnd
      }
      t += 200 + Math.floor(random() * 3500)
    }
  }
  return out.sort((a, b) => a.at - b.at || a.target - b.target)
}

import t from 'tap'
import fc from 'fast-check'
import { Upstream } from '../lib/upstream.js'
import type { Lease } from '../lib/lease.js'
import { resolveOptions } from '../lib/options/index.js'
import type { ResolvedUpstream } from '../lib/options/index.js'
import { FakeClient, fakeFactory } from './helpers/fake-client.js'
import { admit, send, settled } from './helpers/leases.js'

function config (pool: Record<string, unknown>, targets = ['http://127.0.0.1:1', 'http://127.0.0.1:2']): ResolvedUpstream {
  return resolveOptions({ upstreams: { u: { targets, balance: 'round-robin', pool } } }).upstreams[0]
}

t.test('idleTimeout with an injected clock: the sweep closes connections idle that long, the most recently used last', async (t) => {
  let now = 1000
  const made: FakeClient[] = []
  const up = new Upstream(config({ idleTimeout: '10s' }, ['http://127.0.0.1:1']), { factory: fakeFactory(made), now: () => now })
  const leases = [admit(up)!, admit(up)!]
  for (const l of leases) send(l)
  made[0].complete() // idle at 1000
  await settled()
  now = 5000
  made[1].complete() // idle at 5000
  await settled()
  for (const l of leases) l.release()
  t.equal(up.stats().idle, 2)
  now = 10_999
  up.sweep()
  t.equal(up.stats().idle, 2, 'nothing idle for 10 s yet')
  now = 11_000
  up.sweep()
  t.equal(up.stats().idle, 1, 'the one idle since 1000 is closed at 11000')
  t.equal(made[0].destroyed, true)
  t.equal(made[1].destroyed, false)
  // LIFO: the next request gets the most recently used connection.
  const l = admit(up)!
  send(l)
  t.equal(made[1].dispatched, 2, 'the one idle since 5000 carries it')
  made[1].complete()
  await settled()
  l.release()
  now = 15_000 + 10_000
  up.sweep()
  t.equal(up.stats().connections, 0)
  await up.close()
})

t.test('get hands out the most recently used idle connection first (LIFO)', async (t) => {
  const made: FakeClient[] = []
  const up = new Upstream(config({}, ['http://127.0.0.1:1']), { factory: fakeFactory(made) })
  const ls = [admit(up)!, admit(up)!, admit(up)!]
  for (const l of ls) send(l)
  made[2].complete()
  made[0].complete()
  made[1].complete()
  await settled()
  for (const l of ls) l.release()
  const next = admit(up)!
  send(next)
  t.same(made.map((c) => c.dispatched), [1, 2, 1], 'last put back, first out')
  made[1].complete()
  next.release()
  await up.close()
})

t.test('a connection whose socket closed while idle leaves the idle set on the event', async (t) => {
  const made: FakeClient[] = []
  const up = new Upstream(config({}, ['http://127.0.0.1:1']), { factory: fakeFactory(made) })
  const l = admit(up)!
  send(l)
  made[0].complete()
  await settled()
  l.release()
  t.equal(up.stats().idle, 1)
  made[0].closeSocket()
  t.equal(up.stats().idle, 0)
  t.equal(up.stats().connections, 0)
  const l2 = admit(up)!
  send(l2)
  t.equal(made.length, 2, 'a fresh connection')
  t.equal(made[1].dispatched, 1)
  made[1].complete()
  l2.release()
  await up.close()
})

/** Random sequences of pool operations. */
type Op =
  | { op: 'admit' }
  | { op: 'send', i: number }
  | { op: 'complete', i: number }
  | { op: 'fail', i: number }
  | { op: 'release', i: number }
  | { op: 'closeSocket', i: number }
  | { op: 'addTarget' }
  | { op: 'removeTarget', i: number }
  | { op: 'sweep', advance: number }

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.constant({ op: 'admit' as const }) },
  { weight: 4, arbitrary: fc.nat(20).map((i) => ({ op: 'send' as const, i })) },
  { weight: 4, arbitrary: fc.nat(20).map((i) => ({ op: 'complete' as const, i })) },
  { weight: 2, arbitrary: fc.nat(20).map((i) => ({ op: 'fail' as const, i })) },
  { weight: 3, arbitrary: fc.nat(20).map((i) => ({ op: 'release' as const, i })) },
  { weight: 2, arbitrary: fc.nat(40).map((i) => ({ op: 'closeSocket' as const, i })) },
  { weight: 1, arbitrary: fc.constant({ op: 'addTarget' as const }) },
  { weight: 1, arbitrary: fc.nat(5).map((i) => ({ op: 'removeTarget' as const, i })) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 3000 }).map((advance) => ({ op: 'sweep' as const, advance })) }
)

t.test('property: any sequence of acquire, release, socket close, failure, target add and remove, and close keeps every cap and leaves nothing open', async (t) => {
  await fc.assert(fc.asyncProperty(
    fc.record({
      maxActive: fc.integer({ min: 1, max: 6 }),
      perTarget: fc.integer({ min: 1, max: 6 }),
      maxIdle: fc.integer({ min: 0, max: 4 }),
      ops: fc.array(opArb, { maxLength: 80 })
    }),
    async ({ maxActive, perTarget, maxIdle, ops }) => {
      let now = 0
      let port = 10
      const made: FakeClient[] = []
      const up = new Upstream(config({ maxActive, maxActivePerTarget: Math.min(perTarget, maxActive), maxIdle, idleTimeout: 2000 }), { factory: fakeFactory(made), now: () => now })
      const leases: Lease[] = []
      const sent: Lease[] = []
      const removals: Array<Promise<void>> = []
      const check = (): void => {
        const s = up.stats()
        if (up.limits.open > maxActive) throw new Error(`open ${up.limits.open} > maxActive ${maxActive}`)
        if (up.limits.idle > maxIdle) throw new Error(`idle ${up.limits.idle} > maxIdle ${maxIdle}`)
        for (const target of s.targets) {
          if (target.connections > Math.min(perTarget, maxActive)) throw new Error(`target open ${target.connections} > maxActivePerTarget`)
        }
        const live = made.filter((c) => !c.destroyed).length
        if (live !== up.limits.open) throw new Error(`live clients ${live} != open count ${up.limits.open}`)
        if (s.idle !== s.targets.reduce((n, x) => n + x.idle, 0) && removals.length === 0) throw new Error('idle count drift')
        for (const c of made) if (c.inflight.length > 1) throw new Error('two attempts on one connection')
      }
      for (const o of ops) {
        switch (o.op) {
          case 'admit': {
            try {
              const l = admit(up)
              if (l !== null) leases.push(l)
            } catch {}
            break
          }
          case 'send': {
            const l = leases[o.i % Math.max(1, leases.length)]
            if (l !== undefined && !sent.includes(l)) {
              send(l)
              sent.push(l)
            }
            break
          }
          case 'complete':
          case 'fail': {
            const busy = made.filter((c) => c.inflight.length > 0)
            const c = busy[o.i % Math.max(1, busy.length)]
            if (c !== undefined) {
              if (o.op === 'complete') c.complete()
              else c.fail()
            }
            break
          }
          case 'release': {
            const l = leases[o.i % Math.max(1, leases.length)]
            if (l !== undefined) {
              l.release()
              l.release() // a second release is a no-op
              leases.splice(leases.indexOf(l), 1)
            }
            break
          }
          case 'closeSocket': {
            const c = made[o.i % Math.max(1, made.length)]
            if (c !== undefined && !c.destroyed) c.closeSocket()
            break
          }
          case 'addTarget':
            up.addTarget(`http://127.0.0.1:${port++}`)
            break
          case 'removeTarget': {
            const target = up.targets[o.i % Math.max(1, up.targets.length)]
            if (target !== undefined) removals.push(up.removeTarget(target.url))
            break
          }
          case 'sweep':
            now += o.advance
            up.sweep()
            break
        }
        await settled()
        check()
      }
      // Close: what is in flight ends, leases are released, then nothing is left open.
      const closing = up.close()
      for (const c of made) while (c.inflight.length > 0) c.complete()
      await settled()
      for (const l of leases) l.release()
      await closing
      await Promise.all(removals)
      if (up.limits.open !== 0) throw new Error(`open after close: ${up.limits.open}`)
      const alive = made.filter((c) => !c.destroyed)
      if (alive.length !== 0) throw new Error(`${alive.length} clients not destroyed after close`)
      if (up.active !== 0) throw new Error(`active after close: ${up.active}`)
    }
  ), { numRuns: 300, seed: 4242 })
  t.pass('300 random sequences held every invariant')
})

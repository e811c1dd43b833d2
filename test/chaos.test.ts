// A bounded chaos run (about 45 s): three upstream processes killed, restarted,
// refusing, resetting, slow, 503ing and writing stray bytes on a seeded schedule,
// client faults on the side, steady keep-alive load through a gateway in its own
// process. Each oracle is collected as a count during the run and asserted once
// at the end. The seed is printed first; CHAOS_SEED=n replays a run.
import t from 'tap'
import { existsSync } from 'node:fs'
import { formatReport, runChaos } from '../bench/chaos.js'

const built = ['../dist/lib/index.js', '../dist/bench/chaos-gateway.js', '../dist/bench/chaos-upstream.js']
  .every((f) => existsSync(new URL(f, import.meta.url)))
const seed = process.env.CHAOS_SEED === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.CHAOS_SEED)

// the run takes about 45 s of its own; the suite's per-file timeout is shorter
t.setTimeout(150_000)

t.test('chaos: a seeded schedule of upstream and client faults under load', { skip: built ? false : 'dist/ not built: run npm run build' }, async (t) => {
  const report = await runChaos({
    seed,
    scenario: 'random',
    durationMs: 25_000,
    concurrency: 32,
    warmupMs: 2000,
    quietMs: 4000,
    log: (line) => { t.comment(line) }
  })
  t.comment(formatReport(report))
  const replay = `(replay with CHAOS_SEED=${seed})`

  // the run did what it says: load, faults, recoveries and client faults all happened
  t.ok(report.requests.GET!.sent > 200, `GETs were sent: ${report.requests.GET!.sent}`)
  t.ok(report.requests.POST!.sent > 50, `POSTs were sent: ${report.requests.POST!.sent}`)
  t.ok(Object.values(report.faults).reduce((a, b) => a + b, 0) >= 10, `faults were injected: ${JSON.stringify(report.faults)}`)
  t.ok(report.covered.gets > 100, `GETs were covered by a healthy target: ${report.covered.gets}`)
  t.ok(report.clientFaults.sent > 20, `client faults were sent: ${report.clientFaults.sent}`)
  t.same(report.harness, [], 'the harness itself saw nothing go wrong')

  // 1. a GET covered by a healthy target succeeds
  t.equal(report.oracles.coveredGetFailures, 0,
    `oracle 1: covered GETs that failed, by status/code/error: ${JSON.stringify(report.covered.failures)}; first ones: ${report.covered.evidence.slice(0, 5).join(' | ')} ${replay}`)

  // 2. no client receives another request's answer (late stray bytes on a reused connection are counted apart)
  t.equal(report.oracles.shifts, 0,
    `oracle 2: answers carrying another request's id (not explained by late stray bytes: ${report.shifts.unexplained}) or another body (${report.shifts.bodyMismatch}); ` +
    `late stray bytes, counted apart: ${report.shifts.strayLate}; ${report.shifts.evidence.filter((e) => e.includes('UNEXPLAINED')).slice(0, 5).join(' | ')} ${replay}`)

  // 3. a target healthy for the recovery bound is back in rotation
  t.ok(report.recovery.checked > 0, `oracle 3 was exercised: ${report.recovery.checked} recoveries checked, ${report.recovery.voided} voided by a new fault ${replay}`)
  t.equal(report.oracles.lateRecoveries, 0,
    `oracle 3: targets healthy for ${report.recovery.boundMs} ms and still out of rotation: ` +
    `${report.recovery.late_.slice(0, 5).map((c) => `t${c.target} at ${c.recoveredAt} ms [${c.causes.join(', ')}] breaker ${c.breaker ?? '-'}`).join(' | ')} ${replay}`)

  // 4. client faults change no target state, and never hang on the main route
  t.equal(report.oracles.edgeViolations, 0,
    `oracle 4: the edge upstream (client faults only, never faulted) had target state changed at ${report.oracles.edgeViolations} of ${report.clientFaults.edgeChecks} checkpoints: ${JSON.stringify(report.clientFaults.edgeProblems)} ${replay}`)
  t.equal(report.oracles.mainClientFaultProblems, 0,
    `oracle 4: client faults on the main route that hung (${report.clientFaults.mainHangs}) or got an improper answer (${report.clientFaults.mainImproper}): ${report.clientFaults.mainProblems.slice(0, 5).join(' | ')} ${replay}`)

  // 5. the gateway's heap, external memory and handles return to their baseline
  // (tight bounds: what the plugin can leak), RSS within a gross bound (see RSS_SLACK_MIB)
  const { baseline, final } = report.resources
  t.ok(report.resources.handlesOk, `oracle 5: gateway handles back to baseline: ${baseline?.handles} -> ${final?.handles} (${JSON.stringify(final?.resources)}) ${replay}`)
  t.ok(report.resources.rssOk, `oracle 5: gateway RSS (less V8's unused committed heap) within the gross bound of baseline + ${report.resources.rssSlackMiB} MiB: ${baseline?.netRssMiB.toFixed(1)} -> ${final?.netRssMiB.toFixed(1)} MiB (RSS ${baseline?.rssMiB.toFixed(1)} -> ${final?.rssMiB.toFixed(1)}) ${replay}`)
  t.ok(report.resources.externalOk, `oracle 5: gateway external memory (Buffers, ArrayBuffers) after gc within baseline + ${report.resources.externalSlackMiB} MiB: ${baseline?.externalMiB.toFixed(1)} -> ${final?.externalMiB.toFixed(1)} MiB ${replay}`)
  t.ok(report.resources.heapOk, `oracle 5: gateway heap after gc within baseline + ${report.resources.heapSlackMiB} MiB: ${baseline?.heapMiB.toFixed(1)} -> ${final?.heapMiB.toFixed(1)} MiB ${replay}`)
})

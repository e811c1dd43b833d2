import { executionAsyncResource } from 'node:async_hooks'

/**
 * Keeps one of `process.nextTick`'s tick objects alive for the life of the
 * process, so the hidden classes of its object literal are never collected.
 *
 * Why: nextTick builds `{ [async_id_symbol], [trigger_async_id_symbol],
 * callback, args }` for every call. V8 defines the keys after the first
 * computed one through a feedback slot that records the hidden class it saw.
 * Tick objects live for one turn of the loop, so when a full GC runs while
 * none is queued, those classes die; the next tick object gets new ones, the
 * slots see a class other than the one they recorded and turn megamorphic,
 * for good. From then on every nextTick defines three or four properties
 * through the V8 runtime. A Fastify gateway under load calls nextTick about
 * a dozen times a request, so this was the largest single item of a proxied
 * GET's main-thread work (about 46,000 instructions, 18%), in plain
 * @fastify/http-proxy as well. A tick object that never dies keeps the classes
 * (each one holds its parent), and the slots stay monomorphic.
 *
 * The tick object is the async resource of its own callback, which is how it
 * is reached. Idempotent; costs one small object. It runs when this module is
 * evaluated (the plugin's entry imports it first), as early as the plugin can:
 * slots that turned before that (a full GC earlier in the app's start, or V8's
 * precise coverage, which turns them by itself) stay megamorphic.
 */
let held: object | undefined
let asked = false

export function holdTickShape (): void {
  if (asked) return
  asked = true
  // the common shape: a callback with one argument (args is an array)
  process.nextTick((_: unknown) => { held = executionAsyncResource() }, 0)
}

/** The tick object held, once its tick has run. */
export function heldTickObject (): object | undefined {
  return held
}

holdTickShape()

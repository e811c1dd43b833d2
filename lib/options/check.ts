// The checking kit: each check takes the value and its option path, and fails
// with an error naming both (`pool.maxIdle: "10" is not an integer`).
import { inspect } from 'node:util'
import { OptionsError } from '../errors.js'

// ---------------------------------------------------------------- errors

function show (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return `[Function ${value.name || 'anonymous'}]`
  return inspect(value, { depth: 1, breakLength: Infinity })
}

/** Fails registration: `${path}: ${value} ${what}`. */
export function fail (path: string, value: unknown, what: string): never {
  throw new OptionsError(`${path}: ${show(value)} ${what}`)
}

/** Fails registration on a key the block does not take, listing those it does. */
export function unknownKey (path: string, key: string, allowed: readonly string[]): never {
  throw new OptionsError(`${path === '' ? key : `${path}.${key}`}: unknown option (allowed: ${allowed.join(', ')})`)
}

// ---------------------------------------------------------------- durations

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60 * 1000, h: 60 * 60 * 1000 }
const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/
/** Node's timers take at most 2^31 - 1 ms (about 24.8 days); a longer one fires at once, over and over. */
const MAX_DURATION = 2 ** 31 - 1

/** Milliseconds of a duration: a number is milliseconds, a string carries its unit. */
export function parseDuration (value: unknown, path: string): number {
  let ms: number | undefined
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) ms = value
  if (typeof value === 'string') {
    const m = DURATION.exec(value.trim())
    if (m !== null) ms = Math.round(Number(m[1]) * UNIT_MS[m[2]])
  }
  if (ms === undefined) fail(path, value, 'is not a duration (a number of milliseconds >= 0, or a string such as "250ms", "5s", "5m")')
  if (ms > MAX_DURATION) fail(path, value, 'is longer than Node\'s timers allow (2147483647 ms, about 24 days)')
  return ms
}

/** A duration longer than 0. */
export function positiveDuration (value: unknown, path: string): number {
  const ms = parseDuration(value, path)
  if (ms <= 0) fail(path, value, 'must be longer than 0')
  return ms
}

// ---------------------------------------------------------------- values

export function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/** A plain object whose keys are all in `allowed`. */
export function objectAt (value: unknown, path: string, allowed: readonly string[]): Record<string, unknown> {
  if (!isPlainObject(value)) fail(path, value, 'is not an object')
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) unknownKey(path, key, allowed)
  }
  return value
}

export function intAt (value: unknown, path: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) fail(path, value, 'is not an integer')
  if (value < min || value > max) fail(path, value, max === Number.MAX_SAFE_INTEGER ? `is less than ${min}` : `is not between ${min} and ${max}`)
  return value
}

export function numberAt (value: unknown, path: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, value, 'is not a number')
  if (value < min || value > max) fail(path, value, `is not between ${min} and ${max}`)
  return value
}

export function stringAt (value: unknown, path: string): string {
  if (typeof value !== 'string' || value === '') fail(path, value, 'is not a non-empty string')
  return value
}

export function boolAt (value: unknown, path: string): boolean {
  if (typeof value !== 'boolean') fail(path, value, 'is not a boolean')
  return value
}

export function pathAt (value: unknown, path: string): string {
  const s = stringAt(value, path)
  if (!s.startsWith('/')) fail(path, value, 'is not a path starting with "/"')
  return s
}

export function arrayAt (value: unknown, path: string): unknown[] {
  if (!Array.isArray(value)) fail(path, value, 'is not an array')
  return value
}

// ---------------------------------------------------------------- key lists

/** `unknown` when the list `L` names every key of `T`, else `{ missing: <the keys it leaves out> }`. */
type Complete<T, L extends readonly unknown[]> =
  [Exclude<keyof T, L[number]>] extends [never] ? unknown : { missing: Exclude<keyof T, L[number]> }

/**
 * The keys a block accepts, checked against its public type at compile time:
 * `keysOf<PoolOptions>()('maxActive', ...)` does not build with a key the type
 * lacks (`'"maxActiv"' is not assignable`), nor with a key of the type left out
 * (`Property 'missing' ... { missing: "maxIdle" }`), so what registration accepts
 * cannot drift from the contract in types/.
 */
export function keysOf<T> () {
  return <const L extends ReadonlyArray<keyof T & string>>(...keys: L & Complete<T, L>): L => keys
}

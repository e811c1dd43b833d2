// The route schema: the @fastify/http-proxy options a route passes through, and
// those the pool owns, refused with what to use instead.
import type fastifyHttpProxy from '@fastify/http-proxy'
import type { FastifyRequest } from 'fastify'
import type { PoolOwnedReplyOption, RouteOptions, WeightedUpstream } from '../../types/index.js'
import type { ResolvedRoute } from './defaults.js'
import { fail, intAt, isPlainObject, keysOf, objectAt, pathAt, stringAt, unknownKey } from './check.js'

type KeysOfUnion<T> = T extends unknown ? keyof T : never
/** Every option @fastify/http-proxy takes, its WebSocket ones (a union member of their own) included. */
type HttpProxyOption = KeysOfUnion<Parameters<typeof fastifyHttpProxy>[1]>
type ReplyOptions = NonNullable<RouteOptions['replyOptions']>

// @fastify/http-proxy options a route may pass through: every key of RouteOptions but ours.
const ROUTE_PASS = [
  'rewritePrefix', 'proxyPayloads', 'preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite',
  'config', 'replyOptions', 'routes', 'httpMethods', 'constraints', 'internalRewriteLocationHeader',
  'disableRequestLogging', 'disableCache', 'cacheURLs', 'contentTypesToEncode', 'logLevel'
] as const
/** Exactly the keys of RouteOptions (checked when built). */
const ROUTE_KEYS = keysOf<RouteOptions>()('prefix', 'upstream', 'sticky', 'bodyLimit', 'websocket', ...ROUTE_PASS)
const SPLIT_KEYS = keysOf<WeightedUpstream>()('name', 'weight')

// Options the pool owns, with what to use instead. Typed as every @fastify/http-proxy
// option that RouteOptions leaves out: a key of http-proxy's type is either accepted
// above or refused here, and an owned key that crept back into RouteOptions (and so
// into ROUTE_KEYS) would be an excess key here; both fail the build.
// A WebSocket route is a byte tunnel after the 101 (see README, WebSocket): the
// gateway never decodes a frame, so the options of http-proxy's frame relay have nothing to act on.
const WS_RELAY = 'a WebSocket route is a byte tunnel to the target after its 101 (the gateway reads no frame), so this frame relay option has nothing to act on'
const POOL_RETRIES = 'the pool retries, on another target; use the upstream\'s retry options'
const ROUTE_OWNED: Record<Exclude<HttpProxyOption, (typeof ROUTE_KEYS)[number]>, string> = {
  undici: 'the pool owns the upstream connections; use the upstream\'s pool and timeouts options',
  http: 'the pool speaks HTTP/1.1 through undici; use the upstream\'s pool and timeouts options',
  http2: 'HTTP/2 to upstreams is the upstream\'s `protocol: "http2"` (or "auto"), which balances over its targets',
  base: 'the route\'s upstream (a name) chooses the targets',
  globalAgent: 'the pool owns the upstream connections',
  destroyAgent: 'the pool owns the upstream connections',
  balancedPoolOptions: 'the pool owns the upstream connections and balances over the upstream\'s targets; use the upstream\'s balance and pool options',
  retryMethods: 'use the upstream\'s retry.methods',
  maxRetriesOn503: POOL_RETRIES,
  wsUpstream: 'the upstream\'s targets serve the WebSocket upgrades too (ws:// is http://, wss:// is https://); give a route of its own to another upstream for them',
  wsHooks: `${WS_RELAY}; use Fastify hooks (onRequest, preHandler) on the upgrade request`,
  wsReconnect: `${WS_RELAY}; a client whose tunnel closes reconnects, and the balancer gives it a target in rotation`,
  wsClientOptions: `${WS_RELAY}; headers go to the target as on the HTTP path (replyOptions.rewriteRequestHeaders applies)`,
  wsServerOptions: `${WS_RELAY}; subprotocols, permessage-deflate and message sizes are the client's and the target's, untouched`
}

// @fastify/reply-from hooks a route may pass in replyOptions: every key of RouteOptions['replyOptions'].
const REPLY_PASS = keysOf<ReplyOptions>()(
  'queryString', 'contentType', 'onResponse', 'body', 'rewriteHeaders', 'rewriteRequestHeaders', 'method', 'timeout'
)
// The replyOptions the pool owns (RouteOptions omits them).
const REPLY_OWNED: Record<PoolOwnedReplyOption, string> = {
  getUpstream: 'the pool picks the target of each request; to choose the upstream per request, give the route\'s upstream as a function of the request or a weighted split',
  retryDelay: POOL_RETRIES,
  retriesCount: POOL_RETRIES,
  maxRetriesOn503: POOL_RETRIES,
  onError: 'the pool maps upstream failures to 502/503/504 with FST_SSSONECTOR_* codes; use Fastify\'s setErrorHandler'
}
const FUNCTION_KEYS = new Set(['preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite'])

function owned (table: Record<string, string>, key: string): string | undefined {
  return Object.hasOwn(table, key) ? table[key] : undefined
}

export function resolveRoute (value: unknown, i: number, names: Set<string>): ResolvedRoute {
  const path = `routes[${i}]`
  if (!isPlainObject(value)) fail(path, value, 'is not an object')
  for (const key of Object.keys(value)) {
    const why = owned(ROUTE_OWNED, key)
    if (why !== undefined) fail(`${path}.${key}`, value[key], `is not allowed here: ${why}`)
    if (!(ROUTE_KEYS as readonly string[]).includes(key)) unknownKey(path, key, ROUTE_KEYS)
  }
  const prefix = value.prefix === undefined ? undefined : value.prefix === '' ? '' : pathAt(value.prefix, `${path}.prefix`)
  const upstream = resolveChoice(value.upstream, `${path}.upstream`, names)
  if (value.sticky !== undefined) {
    if (typeof value.sticky !== 'function') fail(`${path}.sticky`, value.sticky, 'is not a function')
    if (!Array.isArray(upstream)) fail(`${path}.sticky`, value.sticky, 'is for a weighted split: give upstream as [{ name, weight }, ...]')
  }
  const bodyLimit = value.bodyLimit === undefined ? undefined : intAt(value.bodyLimit, `${path}.bodyLimit`, 0)
  if (value.websocket !== undefined && typeof value.websocket !== 'boolean') fail(`${path}.websocket`, value.websocket, 'is not a boolean')
  if (value.rewritePrefix !== undefined && typeof value.rewritePrefix !== 'string') fail(`${path}.rewritePrefix`, value.rewritePrefix, 'is not a string')
  for (const key of FUNCTION_KEYS) {
    if (value[key] !== undefined && typeof value[key] !== 'function') fail(`${path}.${key}`, value[key], 'is not a function')
  }
  if (value.replyOptions !== undefined) {
    const at = `${path}.replyOptions`
    const reply = value.replyOptions
    if (!isPlainObject(reply)) fail(at, reply, 'is not an object')
    for (const key of Object.keys(reply)) {
      const why = owned(REPLY_OWNED, key)
      if (why !== undefined) fail(`${at}.${key}`, reply[key], `is not allowed here: ${why}`)
      if (!(REPLY_PASS as readonly string[]).includes(key)) unknownKey(at, key, REPLY_PASS)
    }
    if (reply.timeout !== undefined) intAt(reply.timeout, `${at}.timeout`, 0)
  }
  const proxy: Record<string, unknown> = {}
  for (const key of ROUTE_PASS) if (value[key] !== undefined) proxy[key] = value[key]
  return { prefix, upstream, sticky: value.sticky as ResolvedRoute['sticky'], bodyLimit, websocket: value.websocket === true, proxy }
}

/** A route's upstream: a known name, a function of the request, or a weighted split of known names. */
function resolveChoice (value: unknown, path: string, names: Set<string>): ResolvedRoute['upstream'] {
  const known = (name: string, at: string): string => {
    if (!names.has(name)) fail(at, name, `is not an upstream (the upstreams are: ${[...names].join(', ')})`)
    return name
  }
  if (typeof value === 'function') return value as (request: FastifyRequest) => string
  if (!Array.isArray(value)) return known(stringAt(value, path), path)
  if (value.length === 0) fail(path, value, 'is an empty split: give at least one { name, weight }')
  const seen = new Set<string>()
  const split = value.map((entry, i) => {
    const at = `${path}[${i}]`
    const o = objectAt(entry, at, SPLIT_KEYS)
    const name = known(stringAt(o.name, `${at}.name`), `${at}.name`)
    if (seen.has(name)) fail(`${at}.name`, name, 'is in the split twice')
    seen.add(name)
    return { name, weight: intAt(o.weight, `${at}.weight`, 0, 1000) }
  })
  if (split.every((u) => u.weight === 0)) fail(path, value, 'has no weight above 0')
  return split
}

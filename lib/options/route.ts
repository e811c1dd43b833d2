// The route schema: the @fastify/http-proxy options a route passes through, and
// those the pool owns, refused with what to use instead.
import type { ResolvedRoute } from './defaults.js'
import { fail, intAt, isPlainObject, pathAt, stringAt, unknownKey } from './check.js'

// @fastify/http-proxy options a route may pass through.
const ROUTE_PASS = [
  'rewritePrefix', 'proxyPayloads', 'preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite',
  'config', 'replyOptions', 'routes', 'httpMethods', 'constraints', 'internalRewriteLocationHeader',
  'disableRequestLogging', 'disableCache', 'cacheURLs', 'contentTypesToEncode', 'logLevel'
] as const
const ROUTE_KEYS = ['prefix', 'upstream', 'bodyLimit', ...ROUTE_PASS] as const
// Options the pool owns, with what to use instead.
const ROUTE_OWNED: Record<string, string> = {
  undici: 'the pool owns the upstream connections; use the upstream\'s pool and timeouts options',
  http: 'the pool speaks HTTP/1.1 through undici; use the upstream\'s pool and timeouts options',
  http2: 'HTTP/2 to upstreams is not supported yet',
  base: 'the route\'s upstream (a name) chooses the targets',
  globalAgent: 'the pool owns the upstream connections',
  destroyAgent: 'the pool owns the upstream connections',
  retryMethods: 'use the upstream\'s retry.methods',
  websocket: 'WebSocket proxying does not go through the pool yet; register @fastify/http-proxy directly for WebSocket routes',
  wsUpstream: 'WebSocket proxying does not go through the pool yet',
  wsHooks: 'WebSocket proxying does not go through the pool yet',
  wsReconnect: 'WebSocket proxying does not go through the pool yet',
  wsClientOptions: 'WebSocket proxying does not go through the pool yet',
  wsServerOptions: 'WebSocket proxying does not go through the pool yet'
}
const REPLY_OWNED: Record<string, string> = {
  getUpstream: 'the pool picks the target of each request',
  retryDelay: 'the pool retries, on another target; use the upstream\'s retry options',
  retriesCount: 'the pool retries, on another target; use the upstream\'s retry options',
  maxRetriesOn503: 'the pool retries, on another target; use the upstream\'s retry options',
  onError: 'the pool maps upstream failures to 502/503/504 with FST_SSSONECTOR_* codes; use Fastify\'s setErrorHandler'
}
const FUNCTION_KEYS = new Set(['preHandler', 'beforeHandler', 'preValidation', 'handler', 'preRewrite'])

export function resolveRoute (value: unknown, i: number, names: Set<string>): ResolvedRoute {
  const path = `routes[${i}]`
  if (!isPlainObject(value)) fail(path, value, 'is not an object')
  for (const key of Object.keys(value)) {
    if (key in ROUTE_OWNED) fail(`${path}.${key}`, value[key], `is not allowed here: ${ROUTE_OWNED[key]}`)
    if (!(ROUTE_KEYS as readonly string[]).includes(key)) unknownKey(path, key, ROUTE_KEYS)
  }
  const prefix = pathAt(value.prefix, `${path}.prefix`)
  const upstream = stringAt(value.upstream, `${path}.upstream`)
  if (!names.has(upstream)) fail(`${path}.upstream`, upstream, `is not an upstream (the upstreams are: ${[...names].join(', ')})`)
  const bodyLimit = value.bodyLimit === undefined ? undefined : intAt(value.bodyLimit, `${path}.bodyLimit`, 0)
  if (value.rewritePrefix !== undefined && typeof value.rewritePrefix !== 'string') fail(`${path}.rewritePrefix`, value.rewritePrefix, 'is not a string')
  for (const key of FUNCTION_KEYS) {
    if (value[key] !== undefined && typeof value[key] !== 'function') fail(`${path}.${key}`, value[key], 'is not a function')
  }
  if (value.replyOptions !== undefined) {
    if (!isPlainObject(value.replyOptions)) fail(`${path}.replyOptions`, value.replyOptions, 'is not an object')
    for (const key of Object.keys(value.replyOptions)) {
      if (key in REPLY_OWNED) fail(`${path}.replyOptions.${key}`, value.replyOptions[key], `is not allowed here: ${REPLY_OWNED[key]}`)
    }
  }
  const proxy: Record<string, unknown> = {}
  for (const key of ROUTE_PASS) if (value[key] !== undefined) proxy[key] = value[key]
  return { prefix, upstream, bodyLimit, proxy }
}

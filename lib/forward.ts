/**
 * What the upstream sees of a proxied request, and what the client sees of
 * the upstream's answer, built in one place. Hop-by-hop headers (RFC 9110
 * 7.6.1, and the classic list of RFC 2616 13.5.1) describe one connection,
 * never the next: they and the headers a `Connection` header names are
 * dropped both ways.
 */

/** Request headers never forwarded: hop-by-hop ones, `Expect` (the gateway answers `100 Continue` itself), and those the gateway sets. */
const NOT_FORWARDED = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'transfer-encoding', 'proxy-authorization',
  'expect', 'host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host'
])

/** Response headers never passed to the client. */
const HOP_BY_HOP_RESPONSE = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'transfer-encoding']
const HOP_BY_HOP_RESPONSE_SET: ReadonlySet<string> = new Set(HOP_BY_HOP_RESPONSE)

/**
 * Whether a response header describes only the upstream's connection: a
 * hop-by-hop one, or one its `Connection` header names (`listed`, from
 * `connectionListed`).
 */
export function hopByHopResponse (name: string, listed: readonly string[]): boolean {
  return HOP_BY_HOP_RESPONSE_SET.has(name) || (listed.length !== 0 && listed.includes(name))
}

const NONE: readonly string[] = Object.freeze([])

/** The header names a `Connection` header lists, lowercase. */
export function connectionListed (value: unknown): readonly string[] {
  // What nearly every message carries, without splitting it.
  if (value === undefined || value === null || value === 'keep-alive' || value === 'close') return NONE
  const text = Array.isArray(value) ? value.join(',') : String(value)
  const out: string[] = []
  for (const part of text.split(',')) {
    const name = part.trim().toLowerCase()
    if (name !== '' && name !== 'close' && name !== 'keep-alive') out.push(name)
  }
  return out
}

/** X-Forwarded-* values of one request. */
export interface Forwarded {
  /** The chain with the client's address appended; null when there is neither. */
  for: string | null
  proto: string
  host: string | undefined
}

/** X-Forwarded-For: the chain the client sent (as Node joined it), with the client's address appended. */
export function forwardedFor (prior: string | string[] | undefined, peer: string | undefined): string | null {
  const chain = prior === undefined ? null : Array.isArray(prior) ? prior.join(', ') : prior
  if (peer === undefined) return chain
  return chain === null ? peer : `${chain}, ${peer}`
}

type Headers = Record<string, string | string[] | number | undefined>

/**
 * The request headers the upstream sees, as undici's flat list: `host` first
 * (each attempt fills in its target's), then the client's own headers but
 * the ones above and those its `Connection` header names, then
 * X-Forwarded-For, -Proto and -Host (a client's own -Proto and -Host are
 * replaced). A flat list: adding properties to the headers object instead
 * makes reply-from's copy of it a slow object, at several microseconds a request.
 */
export function forwardHeaders (headers: Headers, forwarded: Forwarded): unknown[] {
  const list: unknown[] = ['host', '']
  const listed = headers.connection === undefined ? null : connectionListed(headers.connection)
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined || NOT_FORWARDED.has(name) || (listed !== null && listed.includes(name))) continue
    // An HTTP/2 client's pseudo-headers (:method, :path, :authority, :scheme) are the request line's, not headers.
    if (name.charCodeAt(0) === 58) continue
    list.push(name, value)
  }
  if (forwarded.for !== null) list.push('x-forwarded-for', forwarded.for)
  list.push('x-forwarded-proto', forwarded.proto)
  if (forwarded.host !== undefined) list.push('x-forwarded-host', forwarded.host)
  return list
}

/**
 * The headers an app's own `rewriteRequestHeaders` returned, as the flat
 * list: its X-Forwarded-* values kept as it left them (it has the last
 * word), hop-by-hop ones still dropped.
 */
export function userHeaders (headers: Headers): unknown[] {
  const list: unknown[] = ['host', '']
  const listed = headers.connection === undefined ? null : connectionListed(headers.connection)
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined || name === 'host' || (NOT_FORWARDED.has(name) && !name.startsWith('x-forwarded-')) || (listed !== null && listed.includes(name))) continue
    list.push(name, value)
  }
  return list
}

/** Drops, in place, the response headers that describe the upstream's connection: the hop-by-hop ones and those its `Connection` header names. */
export function stripResponseHeaders (headers: Record<string, unknown>): void {
  const connection = headers.connection
  if (connection !== undefined) {
    for (const name of connectionListed(connection)) delete headers[name]
  }
  for (let i = 0; i < HOP_BY_HOP_RESPONSE.length; i++) {
    if (headers[HOP_BY_HOP_RESPONSE[i]] !== undefined) delete headers[HOP_BY_HOP_RESPONSE[i]]
  }
}

import createError from '@fastify/error'
import type { FastifyErrorConstructor } from '@fastify/error'
import type { ErrorCategory } from '../types/index.js'

/**
 * Every error of the plugin, with a stable `FST_SSSONECTOR_*` code, the HTTP
 * status it answers with, and its category for metrics and logs.
 * Upstream faults map to 502 (it broke), 503 (nothing available) or 504 (too slow); never 500.
 */
export interface SssonectorError extends Error {
  code: string
  statusCode: number
  category: ErrorCategory
  /** Seconds, for 503s: when the client may try again. */
  retryAfter?: number
  cause?: unknown
}

type Ctor = FastifyErrorConstructor<{ code: string, statusCode: number }, unknown[]>

function define (code: string, message: string, statusCode: number, category: ErrorCategory): Ctor {
  const E = createError(code, message, statusCode)
  Object.defineProperty(E.prototype, 'category', { value: category, writable: true, enumerable: false, configurable: true })
  return E as Ctor
}

export const OptionsError = createError('FST_SSSONECTOR_OPTIONS', '%s', 500, TypeError)
export const UnknownUpstreamError = createError('FST_SSSONECTOR_UNKNOWN_UPSTREAM', 'Unknown upstream %s; the upstreams are: %s', 500)
export const UnknownTargetError = createError('FST_SSSONECTOR_UNKNOWN_TARGET', 'Upstream %s has no target %s', 500)
export const DiscoveryError = createError('FST_SSSONECTOR_DISCOVERY', '%s', 500)
export const ClosedError = createError('FST_SSSONECTOR_CLOSED', 'Upstream %s is closed', 503)

export const ConnectError = define('FST_SSSONECTOR_UPSTREAM_CONNECT', 'Upstream connect failed: %s', 502, 'connect_refused')
export const ConnectTimeoutError = define('FST_SSSONECTOR_UPSTREAM_CONNECT_TIMEOUT', 'Upstream connect timed out: %s', 504, 'connect_timeout')
export const DnsError = define('FST_SSSONECTOR_UPSTREAM_DNS', 'Upstream host did not resolve: %s', 502, 'dns')
export const TlsError = define('FST_SSSONECTOR_UPSTREAM_TLS', 'Upstream TLS failed: %s', 502, 'tls')
export const ResetError = define('FST_SSSONECTOR_UPSTREAM_RESET', 'Upstream closed the connection: %s', 502, 'reset')
export const RefusedError = define('FST_SSSONECTOR_UPSTREAM_REFUSED', 'Upstream refused the stream: %s', 503, 'refused')
export const HeadersTimeoutError = define('FST_SSSONECTOR_UPSTREAM_HEADERS_TIMEOUT', 'Upstream sent no response headers in time: %s', 504, 'headers_timeout')
export const BodyTimeoutError = define('FST_SSSONECTOR_UPSTREAM_BODY_TIMEOUT', 'Upstream response body stalled: %s', 504, 'body_timeout')
export const RequestTimeoutError = define('FST_SSSONECTOR_REQUEST_TIMEOUT', 'Request to upstream timed out: %s', 504, 'request_timeout')
export const ProtocolError = define('FST_SSSONECTOR_UPSTREAM_PROTOCOL', 'Upstream sent a malformed response: %s', 502, 'protocol')
export const UpstreamError = define('FST_SSSONECTOR_UPSTREAM_ERROR', 'Upstream request failed: %s', 502, 'unknown')
export const UpstreamStatusError = define('FST_SSSONECTOR_UPSTREAM_STATUS', 'Upstream answered %s', 502, 'http_5xx')
export const DeadlineError = define('FST_SSSONECTOR_DEADLINE', 'The call\'s own deadline passed: %s', 504, 'client_timeout')
export const NoTargetError = define('FST_SSSONECTOR_NO_TARGET', 'No target of upstream %s can take the request', 503, 'no_target')
export const PoolExhaustedError = define('FST_SSSONECTOR_POOL_EXHAUSTED', 'Upstream %s is at capacity', 503, 'pool_exhausted')
export const BodyTooLargeError = define('FST_SSSONECTOR_BODY_TOO_LARGE', 'Request body is larger than %s bytes', 413, 'body_too_large')
export const ClientBodyError = define('FST_SSSONECTOR_CLIENT_BODY', 'Request body from the client failed: %s', 400, 'client_body')
export const ClientBodyTimeoutError = define('FST_SSSONECTOR_CLIENT_BODY_TIMEOUT', 'The client sent no request body for %s', 408, 'client_timeout')
export const ClientAbortError = define('FST_SSSONECTOR_CLIENT_ABORT', 'The client went away: %s', 499, 'client_abort')
export const BadRequestError = define('FST_SSSONECTOR_BAD_REQUEST', 'The request cannot be forwarded: %s', 400, 'bad_request')

/**
 * Whose fault a category is: the target's own (these alone move its state:
 * skip, breaker, outlier detection), the client's (a bad, abandoned or slow
 * request body, a hang-up, a request the gateway cannot forward), or the
 * gateway's own refusal (nothing available). Envoy's outlier detector tells
 * local-origin from upstream failures the same way.
 */
export type Fault = 'target' | 'client' | 'gateway'

const FAULT: Record<ErrorCategory, Fault> = {
  connect_refused: 'target',
  connect_timeout: 'target',
  dns: 'target',
  tls: 'target',
  reset: 'target',
  refused: 'target',
  headers_timeout: 'target',
  body_timeout: 'target',
  request_timeout: 'target',
  protocol: 'target',
  http_5xx: 'target',
  unknown: 'target',
  client_abort: 'client',
  client_body: 'client',
  client_timeout: 'client',
  body_too_large: 'client',
  bad_request: 'client',
  pool_exhausted: 'gateway',
  circuit_open: 'gateway',
  no_target: 'gateway'
}

export function faultOf (category: ErrorCategory): Fault {
  return FAULT[category]
}

/** Failures of the connect itself: no byte of the request reached the upstream. */
export const CONNECT_FAILURES: ReadonlySet<ErrorCategory> = new Set<ErrorCategory>(['connect_refused', 'connect_timeout', 'dns', 'tls'])

const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID'
])

/** The category of a failure of one attempt, from undici's or Node's error. */
export function categorize (err: unknown): ErrorCategory {
  const e = err as { code?: unknown, category?: ErrorCategory } | null
  if (e == null) return 'unknown'
  if (typeof e.category === 'string') return e.category
  const code = typeof e.code === 'string' ? e.code : ''
  switch (code) {
    case 'ECONNREFUSED':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'connect_refused'
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'ETIMEDOUT':
      return 'connect_timeout'
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return 'dns'
    case 'UND_ERR_SOCKET':
      // undici's own word for a response it will not read (an unsolicited 100 or 101, an answer with no request): malformed, not a reset
      return /^bad (response|upgrade)$/.test((err as Error).message) ? 'protocol' : 'reset'
    case 'ECONNRESET':
    case 'EPIPE':
    case 'UND_ERR_CLOSED':
      return 'reset'
    case 'UND_ERR_HEADERS_TIMEOUT':
      return 'headers_timeout'
    case 'UND_ERR_BODY_TIMEOUT':
      return 'body_timeout'
    case 'UND_ERR_ABORTED':
    case 'UND_ERR_ABORT':
    case 'ABORT_ERR':
      return 'client_abort'
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
    case 'UND_ERR_INFO':
    case 'UND_ERR_HEADERS_OVERFLOW':
    case 'UND_ERR_RES_EXCEEDED_MAX_SIZE':
      return 'protocol'
    case 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH':
      // the request body did not match its Content-Length: the client's
      return 'client_body'
    case 'UND_ERR_INVALID_ARG':
    case 'UND_ERR_NOT_SUPPORTED':
      // undici refused to send the request as given (a header it does not allow)
      return 'bad_request'
  }
  const name = (err as Error).name
  if (name === 'AbortError') return 'client_abort'
  if (code.startsWith('HPE_') || name === 'HTTPParserError') return 'protocol'
  if (TLS_CODES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || code.startsWith('CERT_')) return 'tls'
  return 'unknown'
}

/**
 * Whether undici closed a connection on bytes that fit no answer: a parse
 * error, an answer with no request (a second answer, bytes on an idle
 * socket), an unsolicited 100 or 101. Its ordinary closes (the peer's FIN,
 * an answer that said close) are not.
 */
export function isFramingAnomaly (err: unknown): boolean {
  const e = err as { code?: unknown, name?: unknown, message?: unknown } | null
  if (e == null) return false
  const code = typeof e.code === 'string' ? e.code : ''
  if (code.startsWith('HPE_') || e.name === 'HTTPParserError') return true
  return code === 'UND_ERR_SOCKET' && /^bad (response|upgrade)$/.test(String(e.message))
}

const BY_CATEGORY: Partial<Record<ErrorCategory, Ctor>> = {
  connect_refused: ConnectError,
  connect_timeout: ConnectTimeoutError,
  dns: DnsError,
  tls: TlsError,
  reset: ResetError,
  refused: RefusedError,
  headers_timeout: HeadersTimeoutError,
  body_timeout: BodyTimeoutError,
  request_timeout: RequestTimeoutError,
  protocol: ProtocolError,
  unknown: UpstreamError,
  client_body: ClientBodyError,
  client_timeout: ClientBodyTimeoutError,
  bad_request: BadRequestError
}

/**
 * The plugin's error for a failed attempt: already one of ours, it is returned
 * as is; otherwise undici's error is wrapped (kept as `cause`) in the error of its category.
 * A client hang-up keeps undici's own error: it is nobody's fault upstream.
 */
export function toUpstreamError (err: unknown): SssonectorError {
  const e = err as SssonectorError
  if (e != null && typeof e.code === 'string' && e.code.startsWith('FST_SSSONECTOR_')) return e
  const category = categorize(err)
  const Ctor = BY_CATEGORY[category]
  if (Ctor === undefined) {
    const out = (err instanceof Error ? err : new Error(String(err))) as SssonectorError
    out.category = category
    return out
  }
  const message = (err as Error)?.message ?? String(err)
  return new Ctor(message, { cause: err }) as unknown as SssonectorError
}

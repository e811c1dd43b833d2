import type { ServerResponse } from 'node:http'
import type { ErrorCategory } from '../types/index.js'

/**
 * gRPC through a proxy route (gRPC over HTTP/2, PROTOCOL-HTTP2.md): a call is
 * a POST whose Content-Type is `application/grpc` (or `application/grpc+proto`
 * and the like). Its status travels in trailers, so a failure of the gateway's
 * own is answered as a gRPC client reads it: HTTP 200 with `grpc-status` and
 * `grpc-message` in a trailers-only answer (as Envoy answers), never a 502 the
 * client's library turns into UNKNOWN.
 */
export function isGrpc (contentType: unknown): boolean {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc') &&
    (contentType.length === 16 || contentType.charCodeAt(16) === 43 /* + */ || contentType.charCodeAt(16) === 59 /* ; */)
}

/** gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14
} as const

const UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000_001 }

/**
 * The `grpc-timeout` header in ms (`1S`, `250m`, `100u`...: at most 8 digits
 * and a unit), or null when absent or malformed (the spec's servers ignore a
 * malformed one too).
 */
export function grpcTimeout (value: unknown): number | null {
  if (typeof value !== 'string') return null
  const m = /^(\d{1,8})([HMSmun])$/.exec(value)
  if (m === null) return null
  return Number(m[1]) * UNITS[m[2]]
}

/**
 * The gRPC status of a failure of the gateway's own, by its category: a call
 * that ran out of time is DEADLINE_EXCEEDED; nothing to send it to, a refused
 * connection, a reset, a full pool: UNAVAILABLE (the client's library may
 * retry it); a request the gateway could not forward: INTERNAL, as the spec
 * maps HTTP 400.
 */
export function grpcStatusOf (category: ErrorCategory | undefined, statusCode: number, code?: string): number {
  if (code === 'FST_SSSONECTOR_DEADLINE') return GrpcStatus.DEADLINE_EXCEEDED
  switch (category) {
    case 'request_timeout':
    case 'headers_timeout':
    case 'body_timeout':
    case 'connect_timeout':
      return GrpcStatus.DEADLINE_EXCEEDED
    case 'client_abort':
      return GrpcStatus.CANCELLED
    case 'body_too_large':
      return GrpcStatus.RESOURCE_EXHAUSTED
    case 'bad_request':
    case 'client_body':
    case 'client_timeout':
    case 'protocol':
      return GrpcStatus.INTERNAL
  }
  // The spec's HTTP-to-gRPC mapping for the rest.
  if (statusCode === 404) return GrpcStatus.UNIMPLEMENTED
  if (statusCode === 401) return 16
  if (statusCode === 403) return 7
  if (statusCode === 429 || statusCode === 502 || statusCode === 503 || statusCode === 504) return GrpcStatus.UNAVAILABLE
  if (statusCode === 400) return GrpcStatus.INTERNAL
  return GrpcStatus.UNKNOWN
}

/** `grpc-message`: percent-encoded UTF-8, printable ASCII but `%` as is. */
export function grpcMessage (text: string): string {
  let out = ''
  for (const byte of Buffer.from(text, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

/** The answer to a call the gateway failed before any answer went out: trailers-only (HTTP 200, the status in its headers). */
export function grpcErrorHead (status: number, message: string, code: string | undefined): Record<string, string> {
  const head: Record<string, string> = {
    'content-type': 'application/grpc',
    'grpc-status': String(status),
    'grpc-message': grpcMessage(message)
  }
  if (code !== undefined) head['x-sssonector-error'] = code
  return head
}

/**
 * Ends a response with its head alone, in one HEADERS frame that ends the
 * stream (gRPC's trailers-only answer): a head written first and an empty end
 * after would reach the client as headers and no status.
 */
export function endTrailersOnly (res: ServerResponse, status: number, head: Record<string, string | string[] | number>): void {
  res.statusCode = status
  for (const name in head) res.setHeader(name, head[name])
  res.end()
}

/** Ends a call whose answer had started: its status in trailers, whatever the upstream would have sent. */
export function endWithGrpcStatus (res: ServerResponse, status: number, message: string): void {
  try {
    res.addTrailers({ 'grpc-status': String(status), 'grpc-message': grpcMessage(message) })
    res.end()
  } catch {
    res.destroy()
  }
}

// ------------------------------------------------------------ grpc.health.v1

/** `HealthCheckRequest { string service = 1; }`, framed as one gRPC message (not compressed). */
export function healthCheckRequest (service: string): Buffer {
  const name = Buffer.from(service, 'utf8')
  const message = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a]), varint(name.length), name])
  const frame = Buffer.alloc(5)
  frame.writeUInt32BE(message.length, 1)
  return Buffer.concat([frame, message])
}

function varint (n: number): Buffer {
  const out: number[] = []
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80)
    n >>>= 7
  }
  out.push(n)
  return Buffer.from(out)
}

/** The `status` of a framed `HealthCheckResponse` (1: SERVING), or -1 when it cannot be read. */
export function healthCheckStatus (body: Buffer): number {
  if (body.length < 5 || body[0] !== 0) return -1
  const length = body.readUInt32BE(1)
  const message = body.subarray(5, 5 + length)
  // An empty message: every field at its default, status UNKNOWN (0).
  let i = 0
  while (i < message.length) {
    const key = message[i++]
    if (key === 0x08) {
      let value = 0
      let shift = 0
      while (i < message.length) {
        const b = message[i++]
        value |= (b & 0x7f) << shift
        if ((b & 0x80) === 0) return value
        shift += 7
      }
      return -1
    }
    // Another field: skip it (varint or length-delimited).
    const wire = key & 7
    if (wire === 0) { while (i < message.length && (message[i++] & 0x80) !== 0); continue }
    if (wire === 2) {
      let len = 0
      let shift = 0
      while (i < message.length) {
        const b = message[i++]
        len |= (b & 0x7f) << shift
        shift += 7
        if ((b & 0x80) === 0) break
      }
      i += len
      continue
    }
    return -1
  }
  return 0
}

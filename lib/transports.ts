import { Client } from 'undici'
import type { ConnectionClient, ConnectionFactory, ConnectionSettings } from './connection-pool.js'
import { H2Client } from './h2-client.js'
import type { ResolvedHttp2 } from './options/index.js'

// The connections a pool opens, by the upstream's protocol: an undici Client
// (HTTP/1.1, one socket, one request at a time), or an H2Client (HTTP/2,
// multiplexed; or ALPN's choice over TLS).

const DEFAULT_H2: ResolvedHttp2 = { maxStreams: 100, pingInterval: 0, pingTimeout: 5000 }

export const undiciConnectionFactory: ConnectionFactory = (origin, settings) => {
  const protocol = settings.protocol ?? 'http1'
  if (protocol === 'http1') return http1Client(origin, settings)
  return new H2Client(origin, settings, settings.http2 ?? DEFAULT_H2, protocol === 'auto')
}

const http1Client = (origin: string, { pool, timeouts, tls }: ConnectionSettings): ConnectionClient => new Client(origin, {
  pipelining: 1,
  // undici closes the socket itself at the upstream's Keep-Alive hint minus its
  // margin (2 s), and never later than the idle timeout; the pool's sweep closes
  // it at the idle timeout too, by its own clock.
  keepAliveTimeout: Math.max(pool.idleTimeout, 1),
  keepAliveMaxTimeout: Math.max(pool.idleTimeout, 1),
  headersTimeout: timeouts.headers,
  bodyTimeout: timeouts.body,
  connect: {
    timeout: timeouts.connect,
    // Verified by default: reply-from turns verification off, we do not.
    rejectUnauthorized: tls.rejectUnauthorized ?? true,
    ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
    ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
    ...(tls.key !== undefined ? { key: tls.key } : {}),
    ...(tls.servername !== undefined ? { servername: tls.servername } : {})
  }
})

// gRPC peers for tests: the Echo server in a process of its own
// (test/fixtures/grpc-server.mjs, stopped by its PID), and @grpc/grpc-js
// clients of the Echo service.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import grpc from '@grpc/grpc-js'
import protoLoader from '@grpc/proto-loader'
import type { Teardown } from './servers.js'

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url))

export interface GrpcServer {
  name: string
  port: number
  url: string
  proc: ChildProcess
  /** Sends a signal to its process (SIGKILL, SIGTERM: graceful shutdown, SIGUSR2: health NOT_SERVING, SIGSTOP/SIGCONT). */
  signal: (sig: NodeJS.Signals) => void
  /** Resolves when its process has exited. */
  exited: Promise<unknown>
}

/** Starts the Echo server in a process of its own; `port` to come back on the same one; `tls` to serve TLS with the fixtures' certificate. */
export async function startGrpcServer (t: Teardown, name: string, options: { port?: number, tls?: boolean } = {}): Promise<GrpcServer> {
  const env: NodeJS.ProcessEnv = { ...process.env, NAME: name }
  if (options.port !== undefined) env.PORT = String(options.port)
  if (options.tls === true) {
    env.TLS_CERT = `${fixtures}cert.pem`
    env.TLS_KEY = `${fixtures}key.pem`
  }
  const proc = spawn(process.execPath, [`${fixtures}grpc-server.mjs`], { env, stdio: ['pipe', 'pipe', 'inherit'] })
  const exited = once(proc, 'exit')
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGCONT')
      proc.kill('SIGKILL')
      await exited
    }
  })
  const [data] = await once(proc.stdout!, 'data') as [Buffer]
  const port = Number(String(data).trim())
  return {
    name,
    port,
    url: `${options.tls === true ? 'https' : 'http'}://127.0.0.1:${port}`,
    proc,
    signal: (sig) => { proc.kill(sig) },
    exited
  }
}

export interface EchoMsg { text: string, count: number, from: string }

type Callback<T> = (err: grpc.ServiceError | null, res?: T) => void

export interface EchoClient extends grpc.Client {
  Unary: (req: Partial<EchoMsg>, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<EchoMsg>) => grpc.ClientUnaryCall
  ServerStream: (req: Partial<EchoMsg>, meta?: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<EchoMsg>
  ClientStream: (meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<EchoMsg>) => grpc.ClientWritableStream<Partial<EchoMsg>>
  Bidi: (meta?: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientDuplexStream<Partial<EchoMsg>, EchoMsg>
}

const definition = protoLoader.loadSync([`${fixtures}echo.proto`], { keepCase: true, defaults: true })
const Echo = (grpc.loadPackageDefinition(definition) as unknown as { echo: { Echo: new (address: string, creds: grpc.ChannelCredentials, options?: object) => EchoClient } }).echo.Echo

/** An Echo client of `address` (host:port), closed at teardown. */
export function echoClient (t: Teardown, address: string, credentials = grpc.credentials.createInsecure()): EchoClient {
  // No client-side retries or channel reuse across tests: what the gateway does is what is seen.
  const client = new Echo(address, credentials, { 'grpc.enable_retries': 0, 'grpc.use_local_subchannel_pool': 1 })
  t.teardown(() => { client.close() })
  return client
}

export interface CallResult<T> {
  err: grpc.ServiceError | null
  res: T | undefined
  trailers: grpc.Metadata | null
}

/** A unary call's outcome (never rejects). */
export async function unary (client: EchoClient, req: Partial<EchoMsg>, opts: grpc.CallOptions = {}): Promise<CallResult<EchoMsg>> {
  return await new Promise((resolve) => {
    let trailers: grpc.Metadata | null = null
    let out: { err: grpc.ServiceError | null, res: EchoMsg | undefined } | null = null
    let status = false
    const done = (): void => { if (out !== null && status) resolve({ ...out, trailers }) }
    const call = client.Unary(req, new grpc.Metadata(), opts, (err, res) => { out = { err, res }; done() })
    call.on('status', (s: grpc.StatusObject) => { trailers = s.metadata; status = true; done() })
  })
}

export interface StreamResult {
  messages: EchoMsg[]
  status: grpc.StatusObject
}

/** A server-streaming call read to its end (its status, whatever it is). */
export async function serverStream (client: EchoClient, req: Partial<EchoMsg>, opts: grpc.CallOptions = {}, onMessage?: (m: EchoMsg, n: number) => void): Promise<StreamResult> {
  return await new Promise((resolve) => {
    const messages: EchoMsg[] = []
    const call = client.ServerStream(req, new grpc.Metadata(), opts)
    call.on('data', (m: EchoMsg) => {
      messages.push(m)
      onMessage?.(m, messages.length)
    })
    call.on('error', () => {})
    call.on('status', (status: grpc.StatusObject) => { resolve({ messages, status }) })
  })
}

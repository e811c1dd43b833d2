// The client faults of the chaos run, sent on raw sockets (undici would refuse
// to send most of them): a malformed chunked body, an upload abandoned mid-body,
// a slow uploader, an `Expect: 100-continue` upload, and a client hanging up
// mid-response. Each one is bounded by a client-side timeout and says what came
// back: an answer (status, body), a closed connection, or nothing (a hang).
import net from 'node:net'
import { createHash } from 'node:crypto'

export type ClientFaultKind = 'chunked-bad' | 'abandon' | 'slow-upload' | 'expect-continue' | 'hang-up'
export const clientFaultKinds: ClientFaultKind[] = ['chunked-bad', 'abandon', 'slow-upload', 'expect-continue', 'hang-up']

export type RawOutcome =
  | { kind: 'answer', status: number, headers: Record<string, string>, body: Buffer, continued: boolean }
  | { kind: 'closed', status: number | null, continued: boolean }
  | { kind: 'timeout', status: number | null, continued: boolean }
  | { kind: 'client-closed', status: number | null, continued: boolean }

/** One request on its own connection, with a minimal HTTP/1.1 answer reader. */
class RawExchange {
  readonly socket: net.Socket
  readonly done: Promise<RawOutcome>
  private buf = Buffer.alloc(0)
  private status: number | null = null
  private headers: Record<string, string> = {}
  private continued = false
  private settled = false
  private resolve!: (o: RawOutcome) => void
  private readonly timer: NodeJS.Timeout
  /** called on a 100 Continue */
  onContinue: (() => void) | null = null
  /** called on the first bytes of a final answer's body */
  onBody: (() => void) | null = null

  constructor (port: number, timeoutMs: number) {
    this.done = new Promise((resolve) => { this.resolve = resolve })
    this.socket = net.connect(port, '127.0.0.1')
    this.socket.setNoDelay(true)
    this.socket.on('data', (chunk: Buffer) => { this.buf = Buffer.concat([this.buf, chunk]); this.parse() })
    this.socket.on('error', () => {})
    this.socket.on('close', () => { this.finish({ kind: 'closed', status: this.status, continued: this.continued }) })
    this.timer = setTimeout(() => { this.finish({ kind: 'timeout', status: this.status, continued: this.continued }) }, timeoutMs)
  }

  write (data: string | Buffer): void {
    if (!this.socket.destroyed) this.socket.write(data)
  }

  /** The client hangs up on purpose. */
  hangUp (): void {
    this.finish({ kind: 'client-closed', status: this.status, continued: this.continued })
  }

  get settledYet (): boolean { return this.settled }

  private finish (outcome: RawOutcome): void {
    if (this.settled) return
    this.settled = true
    clearTimeout(this.timer)
    this.socket.destroy()
    this.resolve(outcome)
  }

  private parse (): void {
    while (this.status === null) {
      const end = this.buf.indexOf('\r\n\r\n')
      if (end === -1) return
      const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n')
      this.buf = this.buf.subarray(end + 4)
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')
      if (m === null) { this.finish({ kind: 'closed', status: null, continued: this.continued }); return }
      const status = Number(m[1])
      if (status >= 100 && status < 200) {
        this.continued = true
        this.onContinue?.()
        continue
      }
      this.status = status
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':')
        if (i > 0) this.headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
      }
    }
    const body = this.body()
    if (body !== null) this.finish({ kind: 'answer', status: this.status, headers: this.headers, body, continued: this.continued })
    else if (this.buf.length > 0) this.onBody?.()
  }

  /** The whole body once it is in, else null. */
  private body (): Buffer | null {
    const status = this.status ?? 0
    if (status === 204 || status === 304) return Buffer.alloc(0)
    const cl = this.headers['content-length']
    if (cl !== undefined) {
      const n = Number(cl)
      return this.buf.length >= n ? this.buf.subarray(0, n) : null
    }
    if ((this.headers['transfer-encoding'] ?? '').toLowerCase().includes('chunked')) {
      const parts: Buffer[] = []
      let at = 0
      for (;;) {
        const eol = this.buf.indexOf('\r\n', at)
        if (eol === -1) return null
        const size = parseInt(this.buf.subarray(at, eol).toString('latin1'), 16)
        if (Number.isNaN(size)) return Buffer.concat(parts)
        if (size === 0) return Buffer.concat(parts)
        if (this.buf.length < eol + 2 + size + 2) return null
        parts.push(this.buf.subarray(eol + 2, eol + 2 + size))
        at = eol + 2 + size + 2
      }
    }
    return null // read until close
  }
}

export interface ClientFaultResult {
  kind: ClientFaultKind
  /** 'main' or 'edge' */
  route: string
  /** what came back, e.g. `answer 400`, `closed`, `timeout`, `client hung up` */
  outcome: string
  /** a hang: nothing came back before the client-side timeout */
  hang: boolean
  /** an answer that should not be: a 2xx to a malformed body, or a wrong body echo */
  improper: boolean
  /** the echoed id, when the answer is another request's (oracle 2, not counted as improper) */
  shiftedTo: string | null
  /** the echo header and body id of such an answer */
  header?: string
  bodyId?: string
}

export interface ClientFaultPlan {
  kind: ClientFaultKind
  id: string
  /** timings drawn from the run's seeded source */
  delays: number[]
  size: number
}

function sha1 (b: Buffer): string {
  return createHash('sha1').update(b).digest('hex')
}

/** The id an answer echoes (header first, else its JSON body's), if any. */
function echoes (o: RawOutcome): { header?: string, bodyId?: string } {
  if (o.kind !== 'answer') return {}
  let bodyId: string | undefined
  try { bodyId = (JSON.parse(o.body.toString('utf8')) as { id?: string }).id } catch {}
  return { header: o.headers['x-chaos-echo'], bodyId }
}

/** Another request's answer: its echo, header or body, names another id. */
function shifted (base: Omit<ClientFaultResult, 'outcome'>, o: RawOutcome, id: string): ClientFaultResult | null {
  if (o.kind !== 'answer') return null
  const { header, bodyId } = echoes(o)
  const other = header !== undefined && header !== id ? header : bodyId !== undefined && bodyId !== id ? bodyId : undefined
  if (other === undefined) return null
  return { ...base, outcome: `answer ${o.status} with another request's echo`, shiftedTo: other, header, bodyId }
}

function head (method: string, path: string, id: string, extra: string[]): string {
  return [`${method} ${path} HTTP/1.1`, 'host: 127.0.0.1', `x-chaos-id: ${id}`, ...extra, '', ''].join('\r\n')
}

/** Judges an answer to a well-formed upload: its own echo (id, length, hash), or an error status. */
function judgeUpload (kind: ClientFaultKind, route: string, o: RawOutcome, id: string, sent: Buffer): ClientFaultResult {
  const base = { kind, route, hang: o.kind === 'timeout', improper: false, shiftedTo: null as string | null }
  const other = shifted(base, o, id)
  if (other !== null) return other
  if (o.kind !== 'answer') return { ...base, outcome: o.kind === 'timeout' ? `timeout${o.status === null ? '' : ` after head ${o.status}`}` : `closed${o.status === null ? '' : ` after head ${o.status}`}` }
  if (o.status >= 400) return { ...base, outcome: `answer ${o.status}` }
  let echo: { id?: string, len?: number, hash?: string } = {}
  try { echo = JSON.parse(o.body.toString('utf8')) } catch {}
  if (o.headers['x-chaos-echo'] !== id || echo.id !== id) return { ...base, outcome: `answer ${o.status} without this request's echo`, improper: true }
  if (o.status !== 200 || echo.len !== sent.length || echo.hash !== sha1(sent)) return { ...base, outcome: `answer ${o.status} with a wrong body echo`, improper: true }
  return { ...base, outcome: `answer ${o.status} ok` }
}

/**
 * Runs one client fault against `prefix` (`/main` or `/edge`) of the gateway.
 * Every wait in here is bounded by `timeoutMs`.
 */
export async function clientFault (port: number, prefix: string, route: string, plan: ClientFaultPlan, timeoutMs: number): Promise<ClientFaultResult> {
  const { kind, id } = plan
  const x = new RawExchange(port, timeoutMs)
  const base = { kind, route, hang: false, improper: false, shiftedTo: null }
  const done = async (): Promise<{ o: RawOutcome, other: ClientFaultResult | null }> => {
    const o = await x.done
    return { o, other: shifted(base, o, id) }
  }
  switch (kind) {
    case 'chunked-bad': {
      // a valid first chunk, then a chunk size that is not hex
      x.write(head('POST', `${prefix}/echo`, id, ['content-type: application/octet-stream', 'transfer-encoding: chunked']) + '5\r\nhello\r\n')
      setTimeout(() => { x.write('zz\r\nnot a chunk\r\n0\r\n\r\n') }, plan.delays[0] ?? 0)
      const { o, other } = await done()
      if (other !== null) return other
      if (o.kind === 'timeout') return { ...base, outcome: 'timeout', hang: true }
      if (o.kind === 'answer') return { ...base, outcome: `answer ${o.status}`, improper: o.status < 400 }
      return { ...base, outcome: 'closed' }
    }
    case 'abandon': {
      const body = Buffer.alloc(plan.size, 0x62)
      x.write(head('POST', `${prefix}/echo`, id, ['content-type: application/octet-stream', `content-length: ${body.length}`]))
      x.write(body.subarray(0, body.length >> 2))
      const timer = setTimeout(() => { x.hangUp() }, plan.delays[0] ?? 0)
      const { o, other } = await done()
      clearTimeout(timer)
      if (other !== null) return other
      if (o.kind === 'answer') return { ...base, outcome: `answer ${o.status} before the client left` }
      if (o.kind === 'timeout') return { ...base, outcome: 'timeout', hang: true }
      return { ...base, outcome: o.kind === 'client-closed' ? 'client hung up' : 'closed' }
    }
    case 'slow-upload': {
      const body = Buffer.from('slow-upload-' + id).subarray(0, plan.size)
      x.write(head('POST', `${prefix}/echo`, id, ['content-type: application/octet-stream', `content-length: ${body.length}`]))
      let i = 0
      const trickle = (): void => {
        if (x.settledYet || i >= body.length) return
        x.write(body.subarray(i, i + 1))
        i++
        setTimeout(trickle, plan.delays[i % plan.delays.length] ?? 300)
      }
      trickle()
      return judgeUpload(kind, route, await x.done, id, body)
    }
    case 'expect-continue': {
      const body = Buffer.alloc(plan.size, 0x63)
      x.write(head('POST', `${prefix}/echo`, id, ['content-type: application/octet-stream', `content-length: ${body.length}`, 'expect: 100-continue']))
      // RFC 9110 10.1.1: a client that waited long enough for 100 sends the body anyway
      let sent = false
      const sendBody = (): void => { if (!sent) { sent = true; x.write(body) } }
      x.onContinue = sendBody
      const timer = setTimeout(sendBody, 1000)
      const o = await x.done
      clearTimeout(timer)
      const r = judgeUpload(kind, route, o, id, body)
      return { ...r, outcome: `${r.outcome}${o.continued ? ' (after 100)' : ''}` }
    }
    case 'hang-up': {
      x.onBody = () => { x.hangUp() }
      x.write(head('GET', `${prefix}/big?size=${plan.size}`, id, []))
      const { o, other } = await done()
      if (other !== null) return other
      if (o.kind === 'client-closed') return { ...base, outcome: `client hung up after head ${o.status ?? '?'}` }
      if (o.kind === 'timeout') return { ...base, outcome: 'timeout', hang: true }
      if (o.kind === 'answer') return { ...base, outcome: `answer ${o.status}` }
      return { ...base, outcome: 'closed' }
    }
  }
}

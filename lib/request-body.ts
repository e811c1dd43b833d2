import { Readable, Transform } from 'node:stream'
import type { TransformCallback } from 'node:stream'
import { BodyTooLargeError, ClientBodyError, ClientBodyTimeoutError } from './errors.js'

/**
 * A client's request body on its way to the upstream: counted against the
 * route's limit (413 past it, also without Content-Length: http-proxy's
 * pass-through parser skips Fastify's bodyLimit), and failed when the client
 * sends nothing for `gap` ms while the upstream is ready for more (NGINX's
 * `client_body_timeout`: a gap between two reads, not the whole body). A gap
 * the upstream causes (it does not read) is not the client's.
 */
export class BodyGuard extends Transform {
  #left: number
  readonly #limit: number
  readonly #gap: number
  #timer: NodeJS.Timeout | null = null

  constructor (limit: number, counted: number, gap: number) {
    super()
    this.#limit = limit
    this.#left = limit - counted
    this.#gap = gap
    if (gap !== 0) {
      this.#timer = setTimeout(() => { this.#idle() }, gap)
      this.#timer.unref()
    }
  }

  #idle (): void {
    // The upstream is behind (our buffers are full): not the client's gap.
    if (this.readableLength >= this.readableHighWaterMark || this.writableLength > 0) {
      this.#timer!.refresh()
      return
    }
    this.#timer = null
    this.destroy(new ClientBodyTimeoutError(`${this.#gap} ms`))
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#left -= chunk.length
    if (this.#left < 0) {
      cb(new BodyTooLargeError(this.#limit))
      return
    }
    this.#timer?.refresh()
    cb(null, chunk)
  }

  override _flush (cb: TransformCallback): void {
    this.#stop()
    cb()
  }

  override _destroy (err: Error | null, cb: (err: Error | null) => void): void {
    this.#stop()
    cb(err)
  }

  #stop (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }
}

/**
 * A request body read in full, handed to reply-from as a stream (it would
 * JSON-encode a Buffer) that the route's dispatcher swaps back for its
 * buffer, which a retry can send again. Read as a stream, it gives its buffer.
 */
export class BufferedBody extends Readable {
  readonly buffer: Buffer

  constructor (buffer: Buffer) {
    super()
    this.buffer = buffer
  }

  override _read (): void {
    this.push(this.buffer)
    this.push(null)
  }
}

/** What `prefetch` found: the whole body, or the start of it with the rest to stream. */
export type Prefetched = BufferedBody | Readable

/**
 * Reads the start of a request body before the request takes a connection:
 * the whole of it when it ends within `max` bytes (`length`: its
 * Content-Length, -1 when chunked) (a BufferedBody, which a retry
 * can send again), else the first `max` bytes, the rest streaming after them
 * through a BodyGuard. A slow client holds no upstream connection while it
 * trickles its first `max` bytes (HAProxy's `http-buffer-request`). Fails
 * with 413 past `limit`, 408 after `gap` ms without a byte, 400 when the
 * client's body breaks (malformed, or abandoned).
 */
export function prefetch (source: Readable, length: number, max: number, limit: number, gap: number, done: (err: Error | null, body: Prefetched | null) => void): void {
  // A body whose Content-Length fits is read to its end.
  const enough = length >= 0 && length <= max ? Infinity : max
  const chunks: Buffer[] = []
  let size = 0
  let timer: NodeJS.Timeout | null = null
  let settled = false
  const finish = (err: Error | null, body: Prefetched | null): void => {
    if (settled) return
    settled = true
    if (timer !== null) clearTimeout(timer)
    source.removeListener('data', onData)
    source.removeListener('end', onEnd)
    source.removeListener('error', onError)
    source.removeListener('close', onClose)
    done(err, body)
  }
  const onData = (chunk: Buffer): void => {
    size += chunk.length
    if (size > limit) {
      source.pause()
      finish(new BodyTooLargeError(limit), null)
      return
    }
    chunks.push(chunk)
    timer?.refresh()
    if (size < enough) return
    // Enough for now: the rest streams once the request has its connection.
    source.pause()
    source.unshift(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size))
    const guard = new BodyGuard(limit, 0, gap)
    source.on('error', (err) => { guard.destroy(new ClientBodyError(err.message, { cause: err })) })
    finish(null, source.pipe(guard))
  }
  const onEnd = (): void => { finish(null, new BufferedBody(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size))) }
  const onError = (err: Error): void => { finish(new ClientBodyError(err.message, { cause: err }), null) }
  const onClose = (): void => { finish(new ClientBodyError('the client closed the connection before the body ended'), null) }
  if (gap !== 0) {
    timer = setTimeout(() => {
      timer = null
      source.pause()
      finish(new ClientBodyTimeoutError(`${gap} ms`), null)
    }, gap)
    timer.unref()
  }
  source.on('data', onData)
  source.on('end', onEnd)
  source.on('error', onError)
  source.on('close', onClose)
}

/**
 * A request body that streams from its start and can still be sent again:
 * what it passed on is kept, up to `limit` bytes, so an attempt the upstream
 * never processed (a refused HTTP/2 stream, one past a GOAWAY) can go to
 * another connection with the whole body (Envoy's retry buffer, for a gRPC
 * call that cannot be read ahead). Each attempt reads a `view()` of its own:
 * the bytes kept, then the rest as it comes. Past `limit` it is no longer
 * replayable, and the exchange retries it no more.
 */
export class ReplayBody {
  readonly source: Readable
  readonly #limit: number
  readonly #kept: Buffer[] = []
  #size = 0
  #overflow = false
  #ended = false
  #view: BodyView | null = null

  constructor (source: Readable, limit: number) {
    this.source = source
    this.#limit = limit
    source.on('end', () => {
      this.#ended = true
      this.#view?.push(null)
    })
    source.on('error', (err) => { this.#view?.destroy(err) })
    source.on('readable', () => { this.#flow() })
  }

  /** Nothing of it is lost yet: it can be sent again. (Read by the exchange as a stream's `readableDidRead`.) */
  get readableDidRead (): boolean { return this.#overflow }
  /** Destroyed before its end (a source that ended is destroyed too, with all of it kept). */
  get destroyed (): boolean { return this.source.destroyed && !this.#ended }
  get errored (): unknown { return this.source.errored }
  get readableEnded (): boolean { return this.#ended }
  /** (a stream, for the exchange) */
  pipe (): never { throw new Error('ReplayBody is read through view()') }

  /** A stream of the whole body for one attempt: what was kept, then the rest; the view before it stops. */
  view (): Readable {
    this.#view?.destroy()
    const view = this.#view = new BodyView(this)
    for (const chunk of this.#kept) view.push(chunk)
    if (this.#ended) view.push(null)
    return view
  }

  /** Moves what the source has to the current view, as fast as it reads. */
  flow (view: BodyView): void {
    if (view === this.#view) this.#flow()
  }

  #flow (): void {
    const view = this.#view
    if (view === null || view.destroyed) return
    let chunk: Buffer | null
    while ((chunk = this.source.read() as Buffer | null) !== null) {
      if (!this.#overflow) {
        this.#size += chunk.length
        if (this.#size > this.#limit) {
          this.#overflow = true
          this.#kept.length = 0
        } else this.#kept.push(chunk)
      }
      if (!view.push(chunk)) return
    }
  }
}

class BodyView extends Readable {
  readonly #body: ReplayBody

  constructor (body: ReplayBody) {
    super()
    this.#body = body
  }

  override _read (): void {
    this.#body.flow(this)
  }
}

import { randomBytes } from 'node:crypto'

/**
 * Where the frames of one direction of a WebSocket end, read from the bytes
 * as they pass (RFC 6455 5.2): only each frame's header is read, its payload
 * skipped by count, so it costs a few operations per chunk. Lets the gateway
 * put a close frame of its own between two frames when it closes a tunnel.
 */
export class FrameEdges {
  /** Payload bytes left of the current frame. */
  #skip = 0
  /** The start of a header split across chunks. */
  #head: Buffer | null = null

  /** Whether the bytes so far end exactly at the end of a frame. */
  get atEdge (): boolean {
    return this.#skip === 0 && this.#head === null
  }

  feed (chunk: Buffer): void {
    let i = 0
    while (i < chunk.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - i)
        this.#skip -= n
        i += n
        continue
      }
      const kept = this.#head
      const buf = kept === null ? chunk.subarray(i) : Buffer.concat([kept, chunk.subarray(i)])
      const header = headerLength(buf)
      if (header < 0 || buf.length < header) {
        this.#head = Buffer.from(buf)
        return
      }
      const b1 = buf[1] & 0x7f
      this.#skip = b1 === 126 ? buf.readUInt16BE(2) : b1 === 127 ? Number(buf.readBigUInt64BE(2)) : b1
      this.#head = null
      i += header - (kept === null ? 0 : kept.length)
    }
  }
}

/** A frame header's length in bytes, from its first two bytes; -1 with fewer. */
function headerLength (buf: Buffer): number {
  if (buf.length < 2) return -1
  const b1 = buf[1]
  const len = b1 & 0x7f
  return (len === 126 ? 4 : len === 127 ? 10 : 2) + ((b1 & 0x80) !== 0 ? 4 : 0)
}

/** A close frame with its code and reason; masked, as a client must send it (RFC 6455 5.3). */
export function closeFrame (code: number, reason: string, masked: boolean): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason))
  payload.writeUInt16BE(code, 0)
  payload.write(reason, 2)
  const head = Buffer.from([0x88, (masked ? 0x80 : 0) | payload.length])
  if (!masked) return Buffer.concat([head, payload])
  const mask = randomBytes(4)
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3]
  return Buffer.concat([head, mask, payload])
}

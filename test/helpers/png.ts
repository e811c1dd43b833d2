import { inflateSync } from 'node:zlib'

/** A decoded image: RGBA, 8 bits per channel, row after row. */
export interface Image {
  width: number
  height: number
  /** width x height x 4 bytes. */
  rgba: Uint8Array
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

function paeth (a: number, b: number, c: number): number {
  const p = a + b - c
  const pa = Math.abs(p - a)
  const pb = Math.abs(p - b)
  const pc = Math.abs(p - c)
  if (pa <= pb && pa <= pc) return a
  return pb <= pc ? b : c
}

/**
 * Decodes a PNG as Chromium writes its screenshots: 8-bit RGB or RGBA, not
 * interlaced (anything else throws). The five scanline filters of the spec
 * are undone; chunk CRCs are not checked.
 */
export function decodePng (png: Buffer): Image {
  if (!png.subarray(0, 8).equals(SIGNATURE)) throw new Error('not a PNG')
  let width = 0
  let height = 0
  let channels = 0
  const idat: Buffer[] = []
  for (let at = 8; at < png.length;) {
    const length = png.readUInt32BE(at)
    const type = png.toString('latin1', at + 4, at + 8)
    const data = png.subarray(at + 8, at + 8 + length)
    if (type === 'IHDR') {
      width = data.readUInt32BE(0)
      height = data.readUInt32BE(4)
      const depth = data[8]
      const color = data[9]
      if (depth !== 8 || (color !== 2 && color !== 6) || data[12] !== 0) throw new Error(`unsupported PNG: depth ${depth}, color type ${color}, interlace ${data[12]}`)
      channels = color === 6 ? 4 : 3
    } else if (type === 'IDAT') {
      idat.push(data)
    } else if (type === 'IEND') {
      break
    }
    at += 12 + length
  }
  const raw = inflateSync(Buffer.concat(idat))
  const stride = width * channels
  const rows = new Uint8Array(height * stride)
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]
    const src = y * (stride + 1) + 1
    const out = y * stride
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? rows[out + x - channels] : 0
      const b = y > 0 ? rows[out - stride + x] : 0
      const c = x >= channels && y > 0 ? rows[out - stride + x - channels] : 0
      let v = raw[src + x]
      switch (filter) {
        case 0: break
        case 1: v += a; break
        case 2: v += b; break
        case 3: v += (a + b) >> 1; break
        case 4: v += paeth(a, b, c); break
        default: throw new Error(`bad PNG filter ${filter} on row ${y}`)
      }
      rows[out + x] = v & 0xff
    }
  }
  const rgba = new Uint8Array(width * height * 4)
  for (let i = 0, j = 0; i < width * height; i++, j += channels) {
    rgba[i * 4] = rows[j]
    rgba[i * 4 + 1] = rows[j + 1]
    rgba[i * 4 + 2] = rows[j + 2]
    rgba[i * 4 + 3] = channels === 4 ? rows[j + 3] : 255
  }
  return { width, height, rgba }
}

/** Pixels inside the box (CSS pixels at scale 1) whose color is within `tolerance` of `rgb` on every channel. */
export function countColor (img: Image, box: { x: number, y: number, width: number, height: number }, rgb: [number, number, number], tolerance = 2): number {
  let n = 0
  const x0 = Math.max(0, Math.floor(box.x))
  const y0 = Math.max(0, Math.floor(box.y))
  const x1 = Math.min(img.width, Math.ceil(box.x + box.width))
  const y1 = Math.min(img.height, Math.ceil(box.y + box.height))
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = (y * img.width + x) * 4
      if (Math.abs(img.rgba[i] - rgb[0]) <= tolerance && Math.abs(img.rgba[i + 1] - rgb[1]) <= tolerance && Math.abs(img.rgba[i + 2] - rgb[2]) <= tolerance) n++
    }
  }
  return n
}

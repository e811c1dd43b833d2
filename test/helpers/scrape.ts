// Reading Prometheus' text format in tests: a scrape, one series' value, the series' names.
import { request } from 'undici'
import type { Dispatcher } from 'undici'

/** The text of one scrape of `url`; throws on a status other than 200. */
export async function scrape (url: string, dispatcher?: Dispatcher): Promise<string> {
  const res = await request(url, dispatcher === undefined ? {} : { dispatcher })
  const text = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`scrape of ${url}: ${res.statusCode} ${text}`)
  return text
}

/** The value of the first series of `name` carrying every one of `labels`, or undefined. */
export function value (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue
    const inside = line.includes('{') ? line.slice(name.length + 1, line.indexOf('}')).split(',') : []
    if (want.every((w) => inside.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return undefined
}

/** Every series of `name` with its labels and value. */
export function series (text: string, name: string): Array<{ labels: Record<string, string>, value: number }> {
  const out: Array<{ labels: Record<string, string>, value: number }> = []
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue
    const labels: Record<string, string> = {}
    if (line.includes('{')) {
      for (const m of line.slice(name.length + 1, line.lastIndexOf('}')).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]] = m[2]
    }
    out.push({ labels, value: Number(line.slice(line.lastIndexOf(' ') + 1)) })
  }
  return out
}

/** The names of the series present (not only declared), histogram suffixes included. */
export function seriesNames (text: string): Set<string> {
  const out = new Set<string>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    out.add(/^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0])
  }
  return out
}

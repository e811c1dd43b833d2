// The parent side of a bench's child processes: each one tracked until it
// exits, its messages awaited with a timeout, and stopped by its PID.
import type { ChildProcess } from 'node:child_process'
import { isChildMessage, stopProcess } from './protocol.js'

/** A child process as the parent tracks it. */
export interface Child {
  name: string
  process: ChildProcess
  /** Its port, once it listens (0 before, or for a child that serves none). */
  port: number
  /** How it exited ('killed by SIGKILL', 'exited with code 1'), null while it runs. */
  exit: string | null
}

/** Tracks a child just started (added to `children`, which kills what is left on exit). */
export function track (name: string, cp: ChildProcess, children: Set<ChildProcess>): Child {
  children.add(cp)
  const child: Child = { name, process: cp, port: 0, exit: null }
  cp.once('exit', (code, signal) => {
    child.exit = signal !== null ? `killed by ${signal}` : `exited with code ${String(code)}`
  })
  cp.on('error', () => {})
  return child
}

/** Waits for a child's first message `accept` takes; rejects on its failure, exit or silence. */
export async function next<T> (child: Child, accept: (m: unknown) => T | undefined, timeout: number, what: string): Promise<T> {
  const cp = child.process
  return await new Promise<T>((resolve, reject) => {
    const done = (err: Error | null, value?: T): void => {
      clearTimeout(timer)
      cp.off('message', onMessage)
      cp.off('exit', onExit)
      if (err === null) resolve(value as T)
      else reject(err)
    }
    const onMessage = (m: unknown): void => {
      if (isChildMessage(m) && m.type === 'failed') {
        done(new Error(`${child.name}: ${m.error}`))
        return
      }
      const value = accept(m)
      if (value !== undefined) done(null, value)
    }
    const onExit = (): void => done(new Error(`${child.name} ${child.exit ?? 'exited'} before ${what}`))
    const timer = setTimeout(() => done(new Error(`${child.name}: no ${what} within ${timeout} ms`)), timeout)
    cp.on('message', onMessage)
    cp.once('exit', onExit)
    if (child.exit !== null) onExit()
  })
}

/** Stops a child (if it still runs) by its PID, and forgets it. */
export async function stopChild (child: Child, children: Set<ChildProcess>, timeout: number): Promise<void> {
  const cp = child.process
  if (child.exit === null && cp.exitCode === null && cp.signalCode === null) await stopProcess(cp, timeout)
  children.delete(cp)
}

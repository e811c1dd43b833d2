// The parent side of a bench's child processes: each one tracked until it
// exits, its messages awaited with a timeout, and stopped by its PID.
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { isChildMessage, stopProcess } from './protocol.js'
import type { UsageMessage } from './protocol.js'

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

/** Forks a bench script (`args` its argv, IPC open, stdout and stderr shared) and tracks it. */
export function forkTracked (name: string, script: URL, args: string[], children: Set<ChildProcess>, execArgv: string[] = []): Child {
  return track(name, fork(fileURLToPath(script), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv }), children)
}

/** Waits for a child's `ready` and keeps its port; stops it by its PID when it fails, exits or stays silent. */
export async function listening (child: Child, children: Set<ChildProcess>, timeout: number, stopTimeout: number): Promise<Child> {
  try {
    child.port = await next(child, (m) => isChildMessage(m) && m.type === 'ready' ? m.port : undefined, timeout, 'listening')
    return child
  } catch (err) {
    await stopChild(child, children, stopTimeout)
    throw err
  }
}

/** A child's answer to a `usage` request; null when it does not answer within `timeout`. */
export async function askUsage (child: Child, timeout: number): Promise<UsageMessage | null> {
  if (child.exit !== null || !child.process.connected) return null
  const answer = next(child, (m) => isChildMessage(m) && m.type === 'usage' ? m : undefined, timeout, 'a usage answer').catch(() => null)
  child.process.send({ type: 'usage' }, () => {})
  return await answer
}

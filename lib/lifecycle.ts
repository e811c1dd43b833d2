type Callback = (err: Error | null, data: null) => void

/**
 * `close()` and `destroy()` written once (undici's DispatcherBase): each is
 * idempotent and takes a callback or returns a promise. `close()` lets what
 * is queued and in flight finish, then closes; `destroy()` fails what is
 * queued and ends what is in flight at once. A `close()` under way is
 * overtaken by a `destroy()`; both settle when the work is done.
 */
export abstract class Lifecycle {
  #closing: Promise<void> | null = null
  #destroying: Promise<void> | null = null

  /** Closing or destroyed: takes nothing new. */
  get closed (): boolean {
    return this.#closing !== null || this.#destroying !== null
  }

  /** Destroyed (or being destroyed). */
  get destroyed (): boolean {
    return this.#destroying !== null
  }

  /** Lets what is queued and in flight finish, then closes. */
  protected abstract onClose (): Promise<void>
  /** Fails what is queued, ends what is in flight, closes. */
  protected abstract onDestroy (err: Error | null): Promise<void>

  close (): Promise<void>
  close (callback: Callback): void
  close (callback?: Callback): Promise<void> | undefined {
    this.#closing ??= this.#destroying ?? this.onClose()
    return settle(this.#closing, callback)
  }

  destroy (err?: Error | null): Promise<void>
  destroy (callback: Callback): void
  destroy (err: Error | null, callback: Callback): void
  destroy (errOrCallback?: Error | null | Callback, callback?: Callback): Promise<void> | undefined {
    if (typeof errOrCallback === 'function') {
      callback = errOrCallback
      errOrCallback = null
    }
    this.#destroying ??= this.onDestroy(errOrCallback ?? null)
    return settle(this.#destroying, callback)
  }
}

function settle (p: Promise<void>, callback: Callback | undefined): Promise<void> | undefined {
  if (callback === undefined) return p
  p.then(() => { callback(null, null) }, (err: Error) => { callback(err, null) })
  return undefined
}

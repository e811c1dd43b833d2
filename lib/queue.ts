/** Something waiting for admission: granted a lease, or failed. */
export interface Waiter<L> {
  /** When it gives up (ms, the upstream's clock). */
  deadline: number
  cancelled: boolean
  grant (lease: L): void
  fail (err: Error): void
}

/**
 * The bounded FIFO of requests waiting for a connection. Push and shift are
 * O(1); a waiter whose client hangs up is cancelled in O(1) and skipped when
 * it reaches the head.
 */
export class WaitQueue<L> {
  #items: Array<Waiter<L> | undefined> = []
  #head = 0
  /** Waiters not cancelled. */
  size = 0

  push (w: Waiter<L>): void {
    this.#items.push(w)
    this.size++
  }

  /** The first live waiter, without removing it. */
  peek (): Waiter<L> | undefined {
    this.#skipCancelled()
    return this.#items[this.#head]
  }

  shift (): Waiter<L> | undefined {
    this.#skipCancelled()
    if (this.#head >= this.#items.length) return undefined
    const w = this.#items[this.#head]!
    this.#items[this.#head++] = undefined
    this.size--
    this.#compact()
    return w
  }

  cancel (w: Waiter<L>): void {
    if (w.cancelled) return
    w.cancelled = true
    this.size--
  }

  #skipCancelled (): void {
    const items = this.#items
    while (this.#head < items.length && items[this.#head]!.cancelled) items[this.#head++] = undefined
    this.#compact()
  }

  #compact (): void {
    if (this.#head === this.#items.length) {
      this.#items = []
      this.#head = 0
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head)
      this.#head = 0
    }
  }
}

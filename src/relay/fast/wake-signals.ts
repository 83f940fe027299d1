import { dataPlaneCalls } from '../../sockopt/libc.js'

/**
 * The wake-up eventfds of a pool's workers, by worker index in shared memory (-1: not made yet).
 * A worker sleeps in epoll_wait with its eventfd in the set; the main thread signals it after
 * posting a message, and the workers signal each other's to poke them (see pokeWorker). So no
 * eventfd is closed while any worker of the pool may still run: they all close with the pool,
 * once every worker exited. A descriptor closed earlier could be reused by a socket, and a late
 * poke would write 8 bytes into it.
 */
export class WakeSignals {
  /** One Int32 per worker: its eventfd, or -1. */
  readonly fds: Int32Array

  constructor (count: number) {
    this.fds = new Int32Array(new SharedArrayBuffer(count * Int32Array.BYTES_PER_ELEMENT)).fill(-1)
  }

  /** Worker `index`'s eventfd, made on first use; -errno when none could be made. */
  open (index: number): number {
    const made = this.fds[index] ?? -1
    if (made >= 0) return made
    const fd = dataPlaneCalls().eventfd()
    if (fd >= 0) Atomics.store(this.fds, index, fd)
    return fd
  }

  /** Eventfds made and not closed (the descriptor budget counts them). */
  get count (): number {
    return this.fds.reduce((open, fd) => fd >= 0 ? open + 1 : open, 0)
  }

  /** Close them all: only once no worker of the pool runs. */
  close (): void {
    for (const [index, fd] of this.fds.entries()) {
      if (fd < 0) continue
      Atomics.store(this.fds, index, -1)
      dataPlaneCalls().close(fd)
    }
  }
}

/**
 * Have worker `worker` look at a route again: raise its flag in `pokes` (one Int32 per worker,
 * the route's), then wake it. The flag goes first: a worker reads the flags after its eventfd
 * woke it, so a poke is never lost between the two.
 */
export function pokeWorker (pokes: Int32Array, wakeFds: Int32Array, worker: number): void {
  Atomics.store(pokes, worker, 1)
  const fd = Atomics.load(wakeFds, worker)
  if (fd >= 0) dataPlaneCalls().signal(fd)
}

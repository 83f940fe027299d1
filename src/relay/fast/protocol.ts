import type { MessagePort } from 'node:worker_threads'

// The messages between the main thread (control plane) and the splice worker (data plane).
// Plain data only: they cross a MessageChannel by structured clone.

/** Float64 fields per connection in the shared statistics (see STAT_*). */
export const STAT_FIELDS = 5
export const STAT_BYTES_FROM_CLIENT = 0
export const STAT_BYTES_FROM_UPSTREAM = 1
/** performance.timeOrigin + performance.now() (ms) of the last byte either way; the worker's clock, comparable across threads. */
export const STAT_LAST_BYTE_AT = 2
export const STAT_LAST_SILENCE_MS = 3
export const STAT_LAST_SILENCE_ENDED_AT = 4
/** Connections per shared statistics block; blocks are added as connections need them. */
export const SLOTS_PER_BLOCK = 1024

/** A connected pair to relay. Node keeps owning both descriptors: the worker never closes them. */
export interface AddPair {
  type: 'add'
  id: number
  clientFd: number
  upstreamFd: number
  /** Statistics slot: block `slot / SLOTS_PER_BLOCK`, index `slot % SLOTS_PER_BLOCK`. */
  slot: number
  /** Close the pair after this many ms without a byte either way; 0 for never. */
  idleTimeoutMs: number
  /** The client's FIN arrived before the hand-over (already passed on by Node). */
  clientEnded: boolean
  /** Silence tracking carried over: last byte (absolute ms, see STAT_LAST_BYTE_AT). */
  lastByteAt: number
}

export interface DropPair { type: 'drop', id: number }
export interface AddBlock { type: 'block', buffer: SharedArrayBuffer }
export interface Stop { type: 'stop' }
export type ToWorker = AddPair | DropPair | AddBlock | Stop

/**
 * How the worker let go of a pair (it no longer touches either descriptor):
 * `closed`: both directions ended with a FIN and everything was relayed; `error`: a socket failed
 * (`side`, `errno`); `idle`: idleTimeoutMs passed without a byte; `dropped`: the main thread asked.
 */
export interface PairEnded {
  id: number
  how: 'closed' | 'error' | 'idle' | 'dropped'
  /** The side whose socket failed (`error`); null otherwise. */
  side: 'client' | 'upstream' | null
  /** The errno value (`error`); 0 otherwise. */
  errno: number
  /** The side whose FIN came first, if any. */
  firstFin: 'client' | 'upstream' | null
}

/** The worker's batch of ended pairs, posted once per turn of its loop. */
export type FromWorker = PairEnded[]

export interface WorkerStart {
  port: MessagePort
  /** Int32 [0]: descriptors the worker holds (its epoll set and pipes), for the descriptor budget. */
  descriptors: SharedArrayBuffer
  /** eventfd the main thread signals after posting to `port`. */
  wakeFd: number
}

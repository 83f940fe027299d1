/** How many of the latest silences before resets are kept per route and side. */
export const RESET_SILENCES_KEPT = 256

/**
 * The silences (seconds) that preceded resets and keepalive timeouts on one route and side: a count
 * of all of them and the latest RESET_SILENCES_KEPT values in a fixed ring, so memory stays bounded
 * however many connections reset.
 */
export class ResetSilences {
  /** Every silence recorded, including those the ring no longer holds. */
  count = 0
  private readonly ring = new Float64Array(RESET_SILENCES_KEPT)

  record (silenceSec: number): void {
    this.ring[this.count % RESET_SILENCES_KEPT] = silenceSec
    this.count++
  }

  /** The kept silences, oldest first. */
  recent (): number[] {
    const kept = Math.min(this.count, RESET_SILENCES_KEPT)
    const out: number[] = []
    for (let i = this.count - kept; i < this.count; i++) out.push(this.ring[i % RESET_SILENCES_KEPT] as number)
    return out
  }
}

/** One kaproxy_idle_before_reset_seconds series: observations, their sum (seconds) and cumulative buckets by `le`. */
export interface IdleHistogram {
  count: number
  sum: number
  buckets: Record<string, number>
}

/**
 * Count, sum and buckets of the kaproxy_idle_before_reset_seconds series of `route` and `side`, read
 * from the exposition text (parse-prometheus-text-format folds labelled histograms together).
 */
export function idleBeforeReset (text: string, route: string, side: string): IdleHistogram | undefined {
  const series: { count?: number, sum?: number, buckets: Record<string, number> } = { buckets: {} }
  for (const line of text.split('\n')) {
    const m = /^kaproxy_idle_before_reset_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)$/.exec(line)
    if (m === null) continue
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]))
    if (labels.route !== route || labels.side !== side) continue
    const value = Number(m[3])
    if (m[1] === 'bucket') series.buckets[labels.le ?? ''] = value
    else if (m[1] === 'sum') series.sum = value
    else series.count = value
  }
  if (series.count === undefined || series.sum === undefined) return undefined
  return { count: series.count, sum: series.sum, buckets: series.buckets }
}

import { readFileSync } from 'node:fs'

/**
 * The CPU quota of this process's cgroup (and its ancestors), in CPUs: 0.5 for a container limited
 * to half a CPU; null when there is none or it cannot be read (not Linux, no cgroup filesystem).
 * cgroup v2 (`cpu.max`: "QUOTA PERIOD" or "max PERIOD") and v1 (`cpu.cfs_quota_us`, -1 for none).
 */
export function cpuQuota (): number | null {
  let memberships: string
  try {
    memberships = readFileSync('/proc/self/cgroup', 'utf8')
  } catch {
    return null
  }
  let lowest: number | null = null
  for (const line of memberships.split('\n')) {
    // "ID:CONTROLLERS:PATH"; v2 has an empty controller list, v1 names "cpu" among its controllers.
    const [, controllers, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? []
    if (controllers === undefined || path === undefined) continue
    const v1 = controllers.split(',').includes('cpu')
    if (controllers !== '' && !v1) continue
    const roots = v1 ? ['/sys/fs/cgroup/cpu', '/sys/fs/cgroup/cpu,cpuacct', '/sys/fs/cgroup/cpuacct,cpu'] : ['/sys/fs/cgroup']
    for (const root of roots) {
      // The cgroup itself and each parent: a quota anywhere above limits it too.
      for (let dir = path; ; dir = dir.slice(0, Math.max(0, dir.lastIndexOf('/')))) {
        const quota = v1 ? quotaV1(`${root}${dir}`) : quotaV2(`${root}${dir}`)
        if (quota !== null && (lowest === null || quota < lowest)) lowest = quota
        if (dir === '' || dir === '/') break
      }
    }
  }
  return lowest
}

function read (file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

function quotaV2 (dir: string): number | null {
  const [quota, period] = read(`${dir}/cpu.max`)?.split(' ') ?? []
  return ratio(quota, period)
}

function quotaV1 (dir: string): number | null {
  return ratio(read(`${dir}/cpu.cfs_quota_us`), read(`${dir}/cpu.cfs_period_us`))
}

function ratio (quota: string | undefined, period: string | undefined): number | null {
  const q = Number(quota)
  const p = Number(period)
  return Number.isFinite(q) && q > 0 && Number.isFinite(p) && p > 0 ? q / p : null
}

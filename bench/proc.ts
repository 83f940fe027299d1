import { readdirSync, readFileSync } from 'node:fs'

// CPU and memory of a process tree, read from /proc (Linux only; so is the suite).
const TICKS_PER_SEC = 100

interface Stat { ppid: number, cpuTicks: number, childTicks: number }

function stat (pid: number): Stat | null {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return null
  }
  // Fields after the command name, which may itself hold spaces: state is field 3.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
  const field = (n: number): number => Number(rest[n - 3] ?? 0)
  return { ppid: field(4), cpuTicks: field(14) + field(15), childTicks: field(16) + field(17) }
}

/** `root` and every live descendant. */
export function treePids (root: number): number[] {
  const children = new Map<number, number[]>()
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry)
    if (!Number.isInteger(pid)) continue
    const s = stat(pid)
    if (s === null) continue
    const list = children.get(s.ppid) ?? []
    list.push(pid)
    children.set(s.ppid, list)
  }
  const out: number[] = []
  const queue = [root]
  while (queue.length > 0) {
    const pid = queue.shift() as number
    out.push(pid)
    queue.push(...(children.get(pid) ?? []))
  }
  return out
}

/** User + system CPU seconds of the tree, including children it has already reaped (socat's forks). */
export function treeCpuSec (root: number): number {
  let ticks = 0
  for (const pid of treePids(root)) {
    const s = stat(pid)
    if (s === null) continue
    ticks += s.cpuTicks
    if (pid === root) ticks += s.childTicks
  }
  return ticks / TICKS_PER_SEC
}

/** Resident set size of the tree in bytes (VmRSS summed: shared pages of forked workers count once per process). */
export function treeRssBytes (root: number): number {
  let kb = 0
  for (const pid of treePids(root)) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
      if (m !== null) kb += Number(m[1])
    } catch {}
  }
  return kb * 1024
}

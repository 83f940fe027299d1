// Running a lab process as another user: `setpriv` drops to a uid/gid (and may keep chosen capabilities
// as ambient ones, as a container runtime would grant them), then execs the command. `ip netns exec`
// and setpriv both exec, so the spawned pid is the command's own pid.

/** Who a process runs as. */
export interface RunAs {
  uid: number
  gid: number
  /** Capabilities kept across the uid change (ambient), without the `cap_` prefix, e.g. `['net_admin']`. */
  caps?: readonly string[]
}

/** The unprivileged application of the sidecar tests. */
export const NOBODY: RunAs = { uid: 65534, gid: 65534 }

/** The uid kaproxy runs as in the sidecar tests and the Kubernetes example. */
export const KAPROXY_UID = 1337
export const KAPROXY_USER: RunAs = { uid: KAPROXY_UID, gid: KAPROXY_UID }

/** `[cmd, args]` that run `cmd args` as `user` (unchanged when `user` is undefined). */
export function asUser (user: RunAs | undefined, cmd: string, args: readonly string[]): [string, string[]] {
  if (user === undefined) return [cmd, [...args]]
  const caps = user.caps ?? []
  const capArgs = caps.length === 0 ? [] : [`--inh-caps=${caps.map((c) => `+${c}`).join(',')}`, `--ambient-caps=${caps.map((c) => `+${c}`).join(',')}`]
  return ['setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', ...capArgs, cmd, ...args]]
}

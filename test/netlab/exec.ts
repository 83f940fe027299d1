// Running short commands (ip, iptables, conntrack, tshark) with a bound on their duration.
import { execFile, execFileSync } from 'node:child_process'

export interface ExecResult {
  stdout: string
  stderr: string
}

/** Error of a command that exited non-zero, timed out or could not start; `stderr` is kept for the message. */
export class ExecError extends Error {
  readonly code = 'NETLAB_ERR_EXEC'
  constructor (readonly argv: readonly string[], readonly stderr: string, options: { cause: unknown }) {
    super(`command failed: ${argv.join(' ')}${stderr === '' ? '' : `: ${stderr.trim()}`}`, options)
  }
}

/**
 * Run `cmd args` and resolve with its output; reject with an ExecError if it exits non-zero.
 * `timeoutMs` (default 10000) kills a command that hangs.
 */
export async function run (cmd: string, args: readonly string[], timeoutMs = 10_000): Promise<ExecResult> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null) reject(new ExecError([cmd, ...args], stderr, { cause: err }))
      else resolve({ stdout, stderr })
    })
  })
}

/** Synchronous variant for signal and exit handlers; never throws, returns stdout or '' on failure. */
export function runSync (cmd: string, args: readonly string[], timeoutMs = 5_000): string {
  try {
    return execFileSync(cmd, args, { timeout: timeoutMs, stdio: ['ignore', 'pipe', 'ignore'], encoding: 'utf8' })
  } catch {
    return ''
  }
}

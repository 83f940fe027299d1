// A child process run inside a namespace, whose stdout is read as lines (JSON when it parses),
// with bounded waits for a line matching a predicate.
import { spawn as spawnChild } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'

/** One stdout line; `json` is the parsed object when the line is a JSON object, else undefined. */
export interface Line {
  index: number
  /** Wall-clock time (ms since the epoch, sub-ms precision) at which the test process read the line. */
  readAt: number
  text: string
  json: Record<string, unknown> | undefined
}

export type LinePredicate = (line: Line) => boolean

/** Error of a wait that timed out or whose process exited first; carries the last stdout and stderr lines. */
export class WaitError extends Error {
  readonly code = 'NETLAB_ERR_WAIT'
}

const STDERR_KEEP = 50

/** Wall-clock now in ms with sub-ms precision (comparable across processes on the same host). */
export function nowMs (): number {
  return performance.timeOrigin + performance.now()
}

export class LabProcess {
  readonly child: ChildProcess
  readonly lines: Line[] = []
  readonly stderrLines: string[] = []
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<number | string>
  exitStatus: number | string | undefined
  private readonly waiters = new Set<() => void>()

  constructor (readonly label: string, cmd: string, args: readonly string[]) {
    // Own pipes for all three streams: a child that outlives the test must not hold the test's stdout.
    this.child = spawnChild(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitStatus = code ?? signal ?? 'unknown'
        resolve(this.exitStatus)
        this.wake()
      })
      this.child.once('error', (err) => {
        this.stderrLines.push(`spawn error: ${err.message}`)
        this.exitStatus ??= 'spawn-error'
        resolve(this.exitStatus)
        this.wake()
      })
    })
    // An unused stdin pipe must not break the test process when the child has gone.
    this.child.stdin?.on('error', () => {})
    if (this.child.stdout !== null) {
      createInterface({ input: this.child.stdout })
        .on('line', (text) => {
          this.lines.push({ index: this.lines.length, readAt: nowMs(), text, json: parseObject(text) })
          this.wake()
        })
        .on('close', () => { this.wake() })
    }
    if (this.child.stderr !== null) {
      createInterface({ input: this.child.stderr }).on('line', (text) => {
        this.stderrLines.push(text)
        if (this.stderrLines.length > STDERR_KEEP) this.stderrLines.shift()
        this.wake()
      })
    }
  }

  get pid (): number | undefined {
    return this.child.pid
  }

  get running (): boolean {
    return this.exitStatus === undefined
  }

  /** The index the next stdout line will get: pass it to `waitFor` to only match lines read later. */
  mark (): number {
    return this.lines.length
  }

  /** Write one line to the child's stdin (a JSON object is serialised). */
  send (message: string | Record<string, unknown>): void {
    const text = typeof message === 'string' ? message : JSON.stringify(message)
    this.child.stdin?.write(text + '\n')
  }

  /**
   * Resolve with the first stdout line at index >= `from` matching `pred`; reject with a WaitError
   * after `timeoutMs`, or as soon as the process exits without such a line.
   */
  async waitFor (pred: LinePredicate, timeoutMs: number, what: string, from = 0): Promise<Line> {
    let scanned = from
    const scan = (): Line | undefined => {
      for (; scanned < this.lines.length; scanned++) {
        const line = this.lines[scanned]
        if (line !== undefined && pred(line)) return line
      }
      return undefined
    }
    const found = scan()
    if (found !== undefined) return found
    return await new Promise<Line>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
      }
      const check = (): void => {
        const line = scan()
        if (line !== undefined) {
          done()
          resolve(line)
        } else if (!this.running && this.stdoutDrained()) {
          done()
          reject(this.waitError(`${what}: process exited (${String(this.exitStatus)}) first`))
        }
      }
      const timer = setTimeout(() => {
        done()
        reject(this.waitError(`${what}: not seen within ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiters.add(check)
      check()
    })
  }

  /** Like waitFor on JSON lines, with a predicate over the parsed object. */
  async waitJson (pred: (obj: Record<string, unknown>) => boolean, timeoutMs: number, what: string, from = 0): Promise<Record<string, unknown>> {
    const line = await this.waitFor((l) => l.json !== undefined && pred(l.json), timeoutMs, what, from)
    return line.json ?? {}
  }

  /** All parsed JSON lines so far. */
  json (): Array<Record<string, unknown>> {
    const out: Array<Record<string, unknown>> = []
    for (const l of this.lines) if (l.json !== undefined) out.push(l.json)
    return out
  }

  /** Send `signal`, then SIGKILL if the process has not exited after `graceMs`; resolves once it has exited. */
  async stop (signal: NodeJS.Signals = 'SIGTERM', graceMs = 2_000): Promise<number | string> {
    if (this.running) {
      this.child.kill(signal)
      const timer = setTimeout(() => { this.child.kill('SIGKILL') }, graceMs)
      await this.exited
      clearTimeout(timer)
    }
    this.child.stdin?.destroy()
    return this.exitStatus ?? 'unknown'
  }

  /** Last stderr lines, for failure messages. */
  stderrTail (n = 10): string {
    return this.stderrLines.slice(-n).join('\n')
  }

  private stdoutDrained (): boolean {
    const out = this.child.stdout
    return out === null || out.readableEnded || out.destroyed
  }

  private wake (): void {
    for (const w of [...this.waiters]) w()
  }

  private waitError (message: string): WaitError {
    const out = this.lines.slice(-10).map((l) => l.text).join('\n')
    return new WaitError(`[${this.label}] ${message}\n--- last stdout ---\n${out}\n--- last stderr ---\n${this.stderrTail()}`)
  }
}

function parseObject (text: string): Record<string, unknown> | undefined {
  if (!text.startsWith('{')) return undefined
  try {
    const value: unknown = JSON.parse(text)
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>
  } catch {}
  return undefined
}

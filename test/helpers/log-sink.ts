import { Writable } from 'node:stream'

export type LogLine = Record<string, unknown>

/**
 * An in-memory pino destination: keeps every JSON line and lets a test await the first line
 * matching a predicate (bounded by a timeout), instead of sleeping.
 */
export class LogSink extends Writable {
  readonly lines: LogLine[] = []
  private partial = ''
  private readonly waiters = new Set<{ match: (line: LogLine) => boolean, resolve: (line: LogLine) => void }>()

  override _write (chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.push(chunk.toString('utf8'))
    callback()
  }

  /** Feed raw text (also used for a child process's stdout). */
  push (text: string): void {
    this.partial += text
    let newline: number
    while ((newline = this.partial.indexOf('\n')) >= 0) {
      const raw = this.partial.slice(0, newline)
      this.partial = this.partial.slice(newline + 1)
      if (raw.trim() === '') continue
      let line: LogLine
      try { line = JSON.parse(raw) as LogLine } catch { line = { msg: raw, unparsed: true } }
      this.lines.push(line)
      for (const waiter of this.waiters) {
        if (waiter.match(line)) { this.waiters.delete(waiter); waiter.resolve(line) }
      }
    }
  }

  /** The first line (already seen or future) matching `fields` exactly on each given key. */
  async waitFor (fields: LogLine, timeoutMs = 10_000): Promise<LogLine> {
    const match = (line: LogLine): boolean => Object.entries(fields).every(([key, value]) => line[key] === value)
    const seen = this.lines.find(match)
    if (seen !== undefined) return seen
    return await new Promise<LogLine>((resolve, reject) => {
      const waiter = { match, resolve: (line: LogLine) => { clearTimeout(timer); resolve(line) } }
      const timer = setTimeout(() => {
        this.waiters.delete(waiter)
        reject(new Error(`no log line matching ${JSON.stringify(fields)} within ${timeoutMs} ms; last lines:\n${this.lines.slice(-5).map((l) => JSON.stringify(l)).join('\n')}`))
      }, timeoutMs)
      this.waiters.add(waiter)
    })
  }

  /** Resolves once `count` lines match `fields` (each wait bounded by the timeout). */
  async waitForCount (fields: LogLine, count: number, timeoutMs = 10_000): Promise<LogLine[]> {
    const deadline = Date.now() + timeoutMs
    let seen = this.find(fields)
    while (seen.length < count) {
      await new Promise<LogLine>((resolve, reject) => {
        const before = seen.length
        const match = (line: LogLine): boolean => Object.entries(fields).every(([key, value]) => line[key] === value) && this.find(fields).length > before
        const waiter = { match, resolve: (line: LogLine) => { clearTimeout(timer); resolve(line) } }
        const timer = setTimeout(() => {
          this.waiters.delete(waiter)
          reject(new Error(`only ${seen.length} of ${count} log lines matching ${JSON.stringify(fields)}`))
        }, Math.max(1, deadline - Date.now()))
        this.waiters.add(waiter)
      })
      seen = this.find(fields)
    }
    return seen
  }

  find (fields: LogLine): LogLine[] {
    return this.lines.filter((line) => Object.entries(fields).every(([key, value]) => line[key] === value))
  }
}

import { BlockList, isIP } from 'node:net'

/** A destination rule: a CIDR block (or one address), optionally with a port: `10.0.0.0/8`, `10.0.5.0/24:5432`, `[fd00::/8]:443`. */
export interface AddressRule {
  readonly text: string
  readonly port: number | null
  readonly matches: (address: string, port: number) => boolean
}

/** Parse a rule; returns it or the rule it breaks. */
export function parseAddressRule (value: unknown): AddressRule | { rule: string } {
  const rule = 'must be CIDR or CIDR:port, e.g. 10.0.0.0/8, 192.168.1.10/32:5432, [fd00::/8]:443'
  if (typeof value !== 'string') return { rule }
  let block = value
  let portText: string | null = null
  if (value.startsWith('[')) {
    const end = value.indexOf(']')
    if (end < 0) return { rule }
    block = value.slice(1, end)
    const after = value.slice(end + 1)
    if (after !== '') {
      if (!after.startsWith(':')) return { rule }
      portText = after.slice(1)
    }
  } else if (value.split(':').length === 2) {
    const colon = value.lastIndexOf(':')
    block = value.slice(0, colon)
    portText = value.slice(colon + 1)
  }
  const slash = block.indexOf('/')
  const address = slash < 0 ? block : block.slice(0, slash)
  const family = isIP(address)
  if (family === 0) return { rule }
  const max = family === 4 ? 32 : 128
  const prefixText = slash < 0 ? String(max) : block.slice(slash + 1)
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) return { rule: `${rule} (prefix 0..${max})` }
  let port: number | null = null
  if (portText !== null) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) return { rule: `${rule} (port 1..65535)` }
    port = Number(portText)
  }
  const list = new BlockList()
  const type = family === 4 ? 'ipv4' : 'ipv6'
  list.addSubnet(address, Number(prefixText), type)
  return {
    text: value,
    port,
    matches: (candidate, candidatePort) => (port === null || port === candidatePort) && isIP(candidate) === family && list.check(candidate, type)
  }
}

import { createHash } from 'node:crypto'

// The status page: one self-contained HTML document (inline CSS and JS, no CDN, no build step).
// It polls /routes, /connections and /stats every 2 s with the bearer token if one is needed,
// and builds the tables with textContent only (peer addresses never become markup).

const STYLE = `
:root { color-scheme: light; --fg: #1d232a; --muted: #5b6670; --line: #d5dbe1; --head: #eef2f5; --ok: #1f7a3f; --bad: #b3261e; --warn: #9a6700; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #fafbfc; display: inline-block; min-width: 100%; }
header { display: flex; align-items: baseline; gap: 16px; padding: 10px 16px; background: #16202a; color: #f3f6f9; }
header h1 { font-size: 18px; margin: 0; letter-spacing: 0.5px; }
header .meta { color: #b7c3cf; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 9px; font-weight: 600; font-size: 12px; }
.badge.ok { background: #d8f0df; color: var(--ok); }
.badge.bad { background: #fbe0de; color: var(--bad); }
main { padding: 8px 16px 24px; }
section { margin-top: 14px; }
h2 { font-size: 14px; margin: 0 0 6px; color: var(--accent); }
h2 .count { color: var(--muted); font-weight: normal; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { padding: 3px 8px; border: 1px solid var(--line); text-align: left; white-space: nowrap; }
thead th { background: var(--head); font-weight: 600; }
thead tr.group th { text-align: center; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
td.empty { color: var(--muted); text-align: center; font-style: italic; }
td.off { color: var(--muted); }
td.warn { color: var(--warn); font-weight: 600; }
td.bad { color: var(--bad); font-weight: 600; }
tbody tr:nth-child(even) td { background: #f7f9fb; }
#closes { width: auto; min-width: 520px; }
#error { margin-top: 10px; color: var(--bad); min-height: 1em; }
#auth { margin-top: 12px; padding: 10px; border: 1px solid var(--line); background: #fff; max-width: 520px; }
#auth[hidden] { display: none; }
#auth input { width: 320px; padding: 4px; font: inherit; }
footer { color: var(--muted); padding: 0 16px 16px; }
`

const SCRIPT = `
'use strict';
var REFRESH_MS = 2000;
var token = sessionStorage.getItem('kaproxy-admin-token') || '';
var timer = null;

function el(tag, text, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function bytes(n) {
  var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  var i = 0;
  while (n >= 1024 && i < units.length - 1) { n = n / 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[i];
}
function duration(ms) {
  if (ms === null || ms === undefined) return '';
  var s = Math.floor(ms / 1000);
  if (ms < 1000) return ms + 'ms';
  if (s < 60) return (ms / 1000).toFixed(s < 10 ? 1 : 0) + 's';
  var m = Math.floor(s / 60);
  if (m < 60) return m + 'm' + String(s % 60).padStart(2, '0') + 's';
  var h = Math.floor(m / 60);
  if (h < 48) return h + 'h' + String(m % 60).padStart(2, '0') + 'm';
  return Math.floor(h / 24) + 'd' + String(h % 24).padStart(2, '0') + 'h';
}
function secs(n) { return duration(n * 1000); }
// Settings as a config file writes them: 90s, 2m, 1h, 500ms.
function setting(ms) {
  if (ms !== 0 && ms % 3600000 === 0) return ms / 3600000 + 'h';
  if (ms !== 0 && ms % 60000 === 0) return ms / 60000 + 'm';
  if (ms % 1000 === 0) return ms / 1000 + 's';
  return ms + 'ms';
}
function keepaliveConfig(k) {
  var ut = k.userTimeoutMs ? ', user timeout ' + setting(k.userTimeoutMs) : '';
  if (!k.enabled) return 'off' + ut;
  return setting(k.idleSec * 1000) + ' / ' + setting(k.intervalSec * 1000) + ' / ' + k.count + ut;
}
function keepaliveRead(k) {
  if (!k) return '';
  var ut = k.userTimeoutMs ? ' ut ' + setting(k.userTimeoutMs) : '';
  if (!k.enabled) return 'off' + ut;
  return setting(k.idleSec * 1000) + '/' + setting(k.intervalSec * 1000) + '/' + k.count + ut;
}
function upstreams(r) {
  if (r.upstreams.length === 0) return r.upstream;
  return r.upstreams.map(function (u) { return u.target + (u.state === 'down' ? ' (down)' : ''); }).join(', ');
}
function row(cells) {
  var tr = document.createElement('tr');
  cells.forEach(function (c) { tr.appendChild(c); });
  return tr;
}
function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    var td = el('td', emptyText, 'empty');
    td.colSpan = columns;
    tbody.appendChild(row([td]));
    return;
  }
  rows.forEach(function (r) { tbody.appendChild(r); });
}

async function get(path) {
  var headers = token ? { Authorization: 'Bearer ' + token } : {};
  var res = await fetch(path, { headers: headers, cache: 'no-store' });
  if (res.status === 401) { var e = new Error('unauthorized'); e.unauthorized = true; throw e; }
  if (!res.ok) throw new Error(path + ': HTTP ' + res.status);
  return res.json();
}

function render(routes, conns, stats) {
  var ready = document.getElementById('ready');
  ready.textContent = stats.ready ? 'ready' : 'not ready';
  ready.className = 'badge ' + (stats.ready ? 'ok' : 'bad');
  document.getElementById('uptime').textContent = 'up ' + (stats.uptimeSec < 60 ? stats.uptimeSec + 's' : secs(stats.uptimeSec));
  document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();

  var byName = {};
  stats.routes.forEach(function (s) { byName[s.name] = s; });
  fill(document.querySelector('#routes tbody'), routes.routes.map(function (r) {
    var s = byName[r.name] || { active: 0, connectionsTotal: 0, bytesFromClient: 0, bytesFromUpstream: 0, connectMsMean: null };
    var tr = row([
      el('td', r.name), el('td', r.address || r.listen, 'mono'), el('td', upstreams(r), 'mono'),
      el('td', keepaliveConfig(r.keepalive.client)), el('td', keepaliveConfig(r.keepalive.upstream)),
      el('td', s.active, 'num'), el('td', s.connectionsTotal, 'num'),
      el('td', bytes(s.bytesFromClient), 'num'), el('td', bytes(s.bytesFromUpstream), 'num'),
      el('td', s.connectMsMean === null ? '' : s.connectMsMean.toFixed(1) + ' ms', 'num')
    ]);
    tr.dataset.route = r.name;
    return tr;
  }), 10, 'no routes');

  var closes = [];
  stats.routes.forEach(function (s) {
    s.closes.forEach(function (c) {
      var cls = c.reason === 'keepalive-timeout' ? 'warn' : (/reset|error|refused|unreachable|timeout|failed/.test(c.reason) ? 'bad' : '');
      closes.push(row([el('td', s.name), el('td', c.reason, cls), el('td', c.side), el('td', c.count, 'num')]));
    });
  });
  fill(document.querySelector('#closes tbody'), closes, 4, 'no connection closed yet');

  document.getElementById('conn-count').textContent = conns.total > conns.connections.length
    ? '(' + conns.connections.length + ' of ' + conns.total + ')' : '(' + conns.total + ')';
  fill(document.querySelector('#connections tbody'), conns.connections.map(function (c) {
    var cells = [el('td', c.id, 'num'), el('td', c.route), el('td', c.client, 'mono'), el('td', c.upstream, 'mono'), el('td', duration(c.ageMs), 'num'),
      el('td', bytes(c.bytesFromClient), 'num'), el('td', bytes(c.bytesFromUpstream), 'num')];
    ['client', 'upstream'].forEach(function (side) {
      var v = c.sides[side];
      var t = v.tcpInfo;
      if (v.error) {
        var td = el('td', v.error, 'off');
        td.colSpan = 5;
        cells.push(td);
        return;
      }
      cells.push(el('td', keepaliveRead(v.keepalive), v.keepalive && v.keepalive.enabled ? '' : 'off'));
      cells.push(el('td', t ? t.state : '', t && t.state !== 'ESTABLISHED' ? 'warn' : ''));
      cells.push(el('td', t ? (t.rttUs / 1000).toFixed(2) + ' ms' : '', 'num'));
      cells.push(el('td', t ? t.probes : '', 'num' + (t && t.probes > 0 ? ' warn' : '')));
      cells.push(el('td', t ? duration(t.lastDataRecvMs) : '', 'num'));
    });
    var tr = row(cells);
    tr.dataset.id = String(c.id);
    return tr;
  }), 17, 'no live connection');
}

async function refresh() {
  clearTimeout(timer);
  try {
    var results = await Promise.all([get('/routes'), get('/connections?limit=500'), get('/stats')]);
    document.getElementById('auth').hidden = true;
    document.getElementById('error').textContent = '';
    render(results[0], results[1], results[2]);
    document.body.dataset.loaded = 'true';
  } catch (e) {
    if (e.unauthorized) {
      document.getElementById('auth').hidden = false;
      document.getElementById('error').textContent = token ? 'the token was refused' : 'this admin API needs a bearer token';
    } else {
      document.getElementById('error').textContent = 'cannot load: ' + e.message + ' (retrying)';
    }
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

document.getElementById('auth').addEventListener('submit', function (event) {
  event.preventDefault();
  token = document.getElementById('token').value.trim();
  sessionStorage.setItem('kaproxy-admin-token', token);
  refresh();
});
refresh();
`

function sha256 (text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('base64')
}

/** The page's Content-Security-Policy: only its own inline script and style, fetches to this origin. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src 'sha256-${sha256(SCRIPT)}'`,
  `style-src 'sha256-${sha256(STYLE)}'`,
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join('; ')

/** GET / of the admin API. */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kaproxy status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>kaproxy</h1>
  <span id="ready" class="badge bad">loading</span>
  <span id="uptime" class="meta"></span>
  <span id="updated" class="meta"></span>
</header>
<main>
  <form id="auth" hidden>
    <label for="token">Admin token</label>
    <input id="token" type="password" autocomplete="off" placeholder="KAPROXY_ADMIN_TOKEN">
    <button type="submit">Use</button>
  </form>
  <div id="error" role="alert"></div>
  <section>
    <h2>Routes</h2>
    <table id="routes">
      <thead><tr><th>Route</th><th>Listen</th><th>Upstream</th><th>Client keepalive (idle / interval / count)</th><th>Upstream keepalive</th>
        <th class="num">Active</th><th class="num">Total</th><th class="num">From client</th><th class="num">From upstream</th><th class="num">Avg connect</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Live connections <span id="conn-count" class="count"></span></h2>
    <table id="connections">
      <thead>
        <tr class="group"><th colspan="7"></th><th colspan="5">Client side (kernel now)</th><th colspan="5">Upstream side (kernel now)</th></tr>
        <tr><th class="num">ID</th><th>Route</th><th>Client</th><th>Upstream</th><th class="num">Age</th><th class="num">From client</th><th class="num">From upstream</th>
          <th>Keepalive</th><th>State</th><th class="num">RTT</th><th class="num">Probes</th><th class="num">Last recv</th>
          <th>Keepalive</th><th>State</th><th class="num">RTT</th><th class="num">Probes</th><th class="num">Last recv</th></tr>
      </thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Closes by reason</h2>
    <table id="closes">
      <thead><tr><th>Route</th><th>Reason</th><th>Side</th><th class="num">Count</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<footer>Keepalive read back with getsockopt (idle / interval / count); state, RTT, probes and last receive from TCP_INFO. Refreshes every 2 s.</footer>
<script>${SCRIPT}</script>
</body>
</html>
`

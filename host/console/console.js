// The sockhost debug console: apps, an app's live figures and log, and a form that sends an
// event. Plain JavaScript with no build step; every value from the server is written with
// textContent, never parsed as HTML.
'use strict';

const LOG_ROWS = 500; // rows the log keeps; older ones are removed
const REFRESH_MS = 2000; // how often an app's figures are fetched
const KINDS = ['connected', 'disconnected', 'subscribed', 'unsubscribed', 'api_event',
  'client_event', 'webhook', 'error', 'skipped', 'watching'];

const view = document.getElementById('view');
const crumbs = document.getElementById('crumbs');
const statusLine = document.getElementById('status');
let leave = () => {}; // undoes the current page's timers and streams

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'onclick' || name === 'onsubmit' || name === 'oninput' || name === 'onchange') {
      node.addEventListener(name.slice(2), value);
    } else if (value !== undefined && value !== null && value !== false) {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function say(message, kind = 'info') {
  statusLine.textContent = message;
  statusLine.className = kind;
}

/** A request to the admin API as the signed-in console; the parsed answer, or an Error. */
async function api(path, { method = 'GET', body } = {}) {
  const headers = { 'x-sockhost-console': '1' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.reload(); // signed out: the server shows the sign-in form
    throw new Error('Signed out');
  }
  const text = await response.text();
  const answer = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(answer.error ?? `${response.status}`);
  return answer;
}

// ---- Apps ----

async function appsPage() {
  crumbs.replaceChildren(el('span', {}, 'Apps'));
  const table = el('table', { id: 'apps-table' },
    el('thead', {}, el('tr', {}, ['App id', 'Key', 'Enabled', 'Max connections', 'Client events', ''].map((h) => el('th', {}, h)))),
    el('tbody'));
  const create = el('form', { id: 'create-form', class: 'inline', onsubmit: createApp },
    el('h2', {}, 'Create an app'),
    el('label', {}, 'Id ', el('input', { name: 'id', placeholder: 'generated' })),
    el('label', {}, 'Max connections ', el('input', { name: 'max_connections', type: 'number', min: 0, value: 0 })),
    el('label', {}, el('input', { name: 'enable_client_messages', type: 'checkbox' }), ' Client events'),
    el('button', { type: 'submit' }, 'Create'));
  view.replaceChildren(el('h1', {}, 'Apps'), table, create);
  const { apps } = await api('/apps?limit=1000');
  const body = table.querySelector('tbody');
  for (const app of apps) {
    const open = el('a', { href: `#/apps/${encodeURIComponent(app.id)}`, class: 'open-app' }, app.id);
    const toggle = el('button', { class: 'quiet', onclick: () => act(app.id, app.enabled === false ? 'enable' : 'disable') },
      app.enabled === false ? 'Enable' : 'Disable');
    const rotate = el('button', { class: 'quiet', onclick: () => rotateSecret(app.id) }, 'Rotate secret');
    body.append(el('tr', { 'data-app': app.id },
      el('td', {}, open), el('td', {}, el('code', {}, app.key ?? '')),
      el('td', {}, app.enabled === false ? 'no' : 'yes'),
      el('td', {}, app.max_connections === undefined ? '—' : (app.max_connections ? String(app.max_connections) : 'unlimited')),
      el('td', {}, app.enable_client_messages === undefined ? '—' : (app.enable_client_messages ? 'yes' : 'no')),
      el('td', { class: 'actions' }, toggle, rotate)));
  }
  if (apps.length === 0) body.append(el('tr', {}, el('td', { colspan: 6 }, 'No apps.')));
}

async function act(id, action) {
  try {
    await api(`/apps/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
    say(`App ${id}: ${action}d.`);
    await appsPage();
  } catch (error) { say(`App ${id}: ${error.message}`, 'error'); }
}

async function rotateSecret(id) {
  const overlap = prompt('Seconds the old secret keeps working', '3600');
  if (overlap === null) return;
  try {
    const app = await api(`/apps/${encodeURIComponent(id)}/rotate-secret`, { method: 'POST', body: { overlap_seconds: Number(overlap) } });
    say(`App ${id}: the new secret is ${app.secret}; the old one works for ${overlap} s more.`);
  } catch (error) { say(`App ${id}: ${error.message}`, 'error'); }
}

async function createApp(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = {
    max_connections: Number(form.get('max_connections') || 0),
    enable_client_messages: form.get('enable_client_messages') === 'on',
  };
  if (form.get('id')) body.id = form.get('id');
  try {
    const app = await api('/apps', { method: 'POST', body });
    say(`Created app ${app.id} (key ${app.key}, secret ${app.secret}).`);
    await appsPage();
  } catch (error) { say(`Creating an app: ${error.message}`, 'error'); }
}

// ---- One app: figures, plot, log, send ----

const PLOT_SPAN_MS = [60 * 1000, 10 * 60 * 1000]; // the plots show one to ten minutes

/** An SVG plot of `points` ({t, v}, oldest first) over the minutes they cover (one to ten),
 * `label` above. */
function plot(label, points, unit) {
  const ns = 'http://www.w3.org/2000/svg';
  const [w, h, pad] = [480, 120, 6];
  const svgEl = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  };
  const svg = svgEl('svg', { viewBox: `0 0 ${w} ${h}`, class: 'plot', role: 'img', preserveAspectRatio: 'none' });
  const now = Date.now();
  const span = Math.min(PLOT_SPAN_MS[1], Math.max(PLOT_SPAN_MS[0], now - (points[0]?.t ?? now)));
  const minutes = Math.round(span / 60000);
  const max = Math.max(1, ...points.map((p) => p.v));
  svg.setAttribute('aria-label', `${label}: ${points.length} samples over ${minutes} min, at most ${fmt(max)}`);
  const x = (t) => pad + Math.max(0, (t - (now - span)) / span) * (w - 2 * pad);
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  for (const level of [0, 0.5, 1]) {
    svg.append(svgEl('line', { x1: pad, x2: w - pad, y1: y(level * max), y2: y(level * max), class: 'grid' }));
  }
  const xy = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
  // A lone point (no sample yet) is drawn as a short stroke ending now.
  if (points.length === 1) xy.unshift(`${(x(points[0].t) - 8).toFixed(1)},${y(points[0].v).toFixed(1)}`);
  if (points.length > 0) {
    const first = x(points[0].t).toFixed(1);
    const last = x(points.at(-1).t).toFixed(1);
    svg.append(svgEl('polygon', { points: `${first},${y(0)} ${xy.join(' ')} ${last},${y(0)}`, class: 'area' }));
    svg.append(svgEl('polyline', { points: xy.join(' ') }));
  }
  const latest = points.at(-1)?.v ?? 0;
  return el('figure', {},
    el('figcaption', {}, `${label}: ${fmt(latest)}${unit} now, peak ${fmt(max)}${unit}`),
    svg,
    el('div', { class: 'axis' }, el('span', {}, `${minutes} min ago`), el('span', {}, 'now')));
}

const fmt = (n) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

function card(id, label, value) {
  return el('div', { class: 'card' }, el('span', { class: 'label' }, label), el('strong', { id }, String(value)));
}

function showFigures(box, f) {
  const perSecond = f.sample_seconds || 5;
  box.replaceChildren(
    el('div', { class: 'cards' },
      card('fig-connections', 'Connections', f.connections),
      card('fig-channels', 'Channels', f.channel_count),
      card('fig-users', 'Presence users', f.presence_users),
      card('fig-events', 'Events/s', fmt(f.events_per_second)),
      card('fig-webhooks-queued', 'Webhooks queued', f.webhooks.queued),
      card('fig-webhooks-failed', 'Webhooks failed', f.webhooks.failed)),
    el('div', { class: 'plots' },
      // The samples, then the figures of this moment, so each line ends now.
      plot('Connections', [...f.history.map((s) => ({ t: s.t, v: s.connections })), { t: Date.now(), v: f.connections }], ''),
      plot('Events/s', [...f.history.map((s) => ({ t: s.t, v: s.events / perSecond })), { t: Date.now(), v: f.events_per_second }], '/s')),
    el('details', {}, el('summary', {}, `Channels (${f.channel_count})`),
      el('table', { id: 'channels-table' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Channel'), el('th', {}, 'Subscribers'), el('th', {}, 'Users'))),
        el('tbody', {}, f.channels.map((c) => el('tr', {}, el('td', {}, c.name), el('td', {}, String(c.subscription_count)), el('td', {}, String(c.user_count))))))),
    el('details', {}, el('summary', {}, `Nodes (${f.nodes.length})${f.complete ? '' : ': some did not answer'}`),
      el('table', {},
        el('thead', {}, el('tr', {}, ['Node', 'Connections', 'Events', 'Webhooks sent', 'Failed'].map((h) => el('th', {}, h)))),
        el('tbody', {}, f.nodes.map((n) => el('tr', {}, el('td', {}, n.node), el('td', {}, String(n.connections)),
          el('td', {}, String(n.events)), el('td', {}, String(n.webhooks_sent)), el('td', {}, String(n.webhooks_failed))))))));
}

function logRow(entry, here) {
  const time = new Date(entry.t).toISOString().slice(11, 23);
  const node = entry.node === here ? 'this node' : entry.node.slice(0, 8);
  let detail = entry.detail ?? '';
  if (entry.data !== undefined) detail = `${detail ? `${detail} ` : ''}${entry.data}${entry.truncated ? ' (cut)' : ''}`;
  return el('tr', {
    class: `entry kind-${entry.kind}`, 'data-kind': entry.kind, 'data-node': entry.node,
    'data-channel': entry.channel ?? '', 'data-event': entry.event ?? '',
  },
  el('td', {}, time), el('td', { title: entry.node }, node), el('td', {}, entry.kind.replace('_', ' ')),
  el('td', {}, entry.channel ?? ''), el('td', {}, entry.event ?? ''), el('td', {}, entry.socket_id ?? ''),
  el('td', {}, el('code', {}, detail)));
}

function appPage(id) {
  crumbs.replaceChildren(el('a', { href: '#/apps' }, 'Apps'), ' / ', el('span', {}, id));
  const figures = el('section', { id: 'figures' }, 'Loading figures…');
  const channelFilter = el('input', { id: 'filter-channel', placeholder: 'Channel contains', oninput: () => refilter() });
  const kindFilter = el('select', { id: 'filter-kind', onchange: () => refilter() },
    el('option', { value: '' }, 'Every kind'), KINDS.map((k) => el('option', { value: k }, k.replace('_', ' '))));
  const rows = el('tbody');
  const feedState = el('span', { id: 'log-state' }, 'connecting…');
  const log = el('section', { id: 'log-section' },
    el('h2', {}, 'Live log ', feedState),
    el('div', { class: 'inline' }, channelFilter, kindFilter,
      el('button', { class: 'quiet', onclick: () => rows.replaceChildren() }, 'Clear')),
    el('table', { id: 'log' },
      el('thead', {}, el('tr', {}, ['Time', 'Node', 'Kind', 'Channel', 'Event', 'Socket', 'Detail'].map((h) => el('th', {}, h)))),
      rows));
  const result = el('p', { id: 'send-result', role: 'status' });
  const send = el('form', { id: 'send-form', onsubmit: (e) => sendEvent(e, id, result) },
    el('h2', {}, 'Send an event'),
    el('label', {}, 'Channel ', el('input', { id: 'send-channel', name: 'channel', required: true, value: 'test-channel' })),
    el('label', {}, 'Event ', el('input', { id: 'send-event', name: 'event', required: true, value: 'test-event' })),
    el('label', { class: 'wide' }, 'Data (JSON) ', el('textarea', { id: 'send-data', name: 'data', rows: 3 }, '{"message": "hello"}')),
    el('button', { type: 'submit', id: 'send-submit' }, 'Send'), result);
  view.replaceChildren(el('h1', {}, `App ${id}`), figures, send, log);

  function refilter() {
    for (const row of rows.children) row.hidden = !matches(row);
  }
  function matches(row) {
    const channel = channelFilter.value.trim();
    const kind = kindFilter.value;
    return (!kind || row.dataset.kind === kind) && (!channel || row.dataset.channel.includes(channel));
  }

  let here = '';
  const source = new EventSource(`/apps/${encodeURIComponent(id)}/log`);
  source.addEventListener('hello', (e) => { here = JSON.parse(e.data).node; feedState.textContent = 'live'; });
  source.onmessage = (e) => {
    const row = logRow(JSON.parse(e.data), here);
    row.hidden = !matches(row);
    rows.prepend(row);
    while (rows.children.length > LOG_ROWS) rows.lastElementChild.remove();
  };
  source.onerror = () => { feedState.textContent = 'reconnecting…'; };

  const refresh = async () => {
    try { showFigures(figures, await api(`/apps/${encodeURIComponent(id)}/figures`)); } catch (error) { say(error.message, 'error'); }
  };
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  leave = () => { clearInterval(timer); source.close(); };
}

async function sendEvent(event, id, result) {
  event.preventDefault();
  const form = new FormData(event.target);
  const text = String(form.get('data') ?? '');
  try { JSON.parse(text); } catch {
    result.textContent = 'The data is not valid JSON.';
    result.className = 'error';
    return;
  }
  try {
    await api(`/apps/${encodeURIComponent(id)}/events`, {
      method: 'POST', body: { channel: form.get('channel'), name: form.get('event'), data: text },
    });
    result.textContent = `Sent ${form.get('event')} on ${form.get('channel')}.`;
    result.className = 'ok';
  } catch (error) {
    result.textContent = `Not sent: ${error.message}`;
    result.className = 'error';
  }
}

// ---- Routing ----

async function route() {
  leave();
  leave = () => {};
  say('');
  const match = location.hash.match(/^#\/apps\/(.+)$/);
  try {
    if (match) appPage(decodeURIComponent(match[1]));
    else await appsPage();
  } catch (error) { say(error.message, 'error'); }
}

/** Sign out with the console's header (the server refuses a sign-out without it, so no other
 * site can sign a user out), then show the sign-in form. */
async function signOut(event) {
  event.preventDefault();
  try {
    const response = await fetch('/console/sign-out', {
      method: 'POST', headers: { 'x-sockhost-console': '1' }, credentials: 'same-origin',
    });
    if (!response.ok) throw new Error(`${response.status}`);
    location.assign('/console');
  } catch (error) { say(`Not signed out: ${error.message}`, 'error'); }
}

document.getElementById('sign-out').addEventListener('submit', signOut);
window.addEventListener('hashchange', route);
route();

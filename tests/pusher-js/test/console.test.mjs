// The debug console in a real browser: Debian's headless Chromium driven over the DevTools
// protocol (puppeteer-core), against two real sockhost nodes joined by a real Redis. The
// screenshots of each page are left in target/test-artifacts/console/.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import {
  APP, connect, freePort, once, serverSdk, startAuthEndpoint, startSockhost, subscribe,
} from '../lib/harness.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const artifacts = join(root, 'target', 'test-artifacts', 'console');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TOKEN = 'console-test-admin-token-0123456789abcdef';
const PATIENCE_MS = 10_000;

/** A Redis of the test's own on a free port; resolves once it answers PING. */
async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sockhost-js-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const answered = await new Promise((resolve) => {
      const socket = createConnection(port, '127.0.0.1');
      socket.on('connect', () => socket.write('PING\r\n'));
      socket.on('data', (d) => { socket.destroy(); resolve(d.toString().startsWith('+PONG')); });
      socket.on('error', () => resolve(false));
    });
    if (answered) break;
    if (child.exitCode !== null || Date.now() > deadline) throw new Error('redis-server did not start');
    await new Promise((r) => setTimeout(r, 20));
  }
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

/** Resolve once the node's metrics say the cluster has `nodes` nodes. */
async function clusterOf(node, nodes) {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const text = await (await fetch(`http://127.0.0.1:${node.metricsPort}/metrics`)).text();
    if (new RegExp(`^sockhost_cluster_nodes ${nodes}$`, 'm').test(text)) return;
    if (Date.now() > deadline) throw new Error(`the cluster never had ${nodes} nodes`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('the debug console in a headless Chromium', () => {
  let redis; let a; let b; let adminPort; let browser; let auth;
  const admin = (path) => `http://127.0.0.1:${adminPort}${path}`;

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    redis = await startRedis();
    adminPort = await freePort();
    const bus = { ADAPTER_DRIVER: 'redis', REDIS_URL: redis.url };
    [a, b] = await Promise.all([
      startSockhost({ env: { ...bus, ADMIN_ENABLED: 'true', ADMIN_HOST: '127.0.0.1', ADMIN_PORT: String(adminPort), ADMIN_TOKEN: TOKEN } }),
      startSockhost({ env: bus }),
    ]);
    await Promise.all([clusterOf(a, 2), clusterOf(b, 2)]);
    auth = await startAuthEndpoint(serverSdk(a.port));
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  });

  after(async () => {
    await browser?.close();
    await auth?.close();
    await Promise.all([a?.stop(), b?.stop()]);
    redis?.stop();
  });

  /** Sign in through the form with `token`; the page and the answer to the form. */
  async function signIn(token) {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const first = await page.goto(admin('/console'));
    assert.equal(first.status(), 401, 'the console starts at the sign-in form');
    await page.type('#token', token);
    const [answer] = await Promise.all([page.waitForNavigation(), page.click('#sign-in button')]);
    return { page, answer };
  }

  test('without the token there is no page and no data', async () => {
    const form = await fetch(admin('/console'));
    assert.equal(form.status, 401);
    const html = await form.text();
    assert.match(html, /name="token"/);
    assert.doesNotMatch(html, new RegExp(APP.id));
    for (const path of ['/apps', `/apps/${APP.id}/figures`, `/apps/${APP.id}/log`, '/console/console.js']) {
      assert.equal((await fetch(admin(path))).status, 401, path);
      const wrong = await fetch(admin(path), { headers: { authorization: 'Bearer wrong-token' } });
      assert.equal(wrong.status, 401, path);
    }
    const forged = await fetch(admin('/apps'), { headers: { cookie: 'sockhost_console=99999999999999.00' } });
    assert.equal(forged.status, 401, 'a made-up cookie');
    const send = await fetch(admin(`/apps/${APP.id}/events`), {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'e', channel: 'c', data: '{}' }),
    });
    assert.equal(send.status, 401);

    const { page, answer } = await signIn('not-the-admin-token');
    assert.equal(answer.status(), 401);
    assert.match(await page.$eval('.refused', (e) => e.textContent), /not the admin token/);
    assert.deepEqual(await page.cookies(), [], 'no cookie for a wrong token');
    await page.screenshot({ path: join(artifacts, 'sign-in-refused.png') });
    await page.close();
  });

  test('the console shows the app, a live log from both nodes, and sends events', async () => {
    const client = await connect(a.port, auth);
    try {
      const { page, answer } = await signIn(TOKEN);
      assert.equal(answer.status(), 200);
      await page.waitForSelector(`tr[data-app="${APP.id}"]`);
      const cells = await page.$$eval(`tr[data-app="${APP.id}"] td`, (tds) => tds.map((td) => td.textContent));
      assert.deepEqual(cells.slice(1, 5), [APP.key, 'yes', 'unlimited', 'yes'], 'the app as configured');
      await page.screenshot({ path: join(artifacts, 'apps.png'), fullPage: true });

      await page.click(`tr[data-app="${APP.id}"] a.open-app`);
      await page.waitForFunction(() => document.querySelector('#log-state')?.textContent === 'live');
      const figures = await (await fetch(admin(`/apps/${APP.id}/figures`), { headers: { authorization: `Bearer ${TOKEN}` } })).json();
      const nodeA = figures.node;
      const row = (kind, filter) => page.waitForFunction(
        (k, f) => [...document.querySelectorAll('#log tr.entry')].some((r) => r.dataset.kind === k
          && Object.entries(f).every(([name, value]) => (name === 'notNode' ? r.dataset.node !== value : r.dataset[name] === value))),
        { timeout: PATIENCE_MS }, kind, filter,
      );

      // The other node feeds this log once it knows a console watches.
      await row('watching', { notNode: nodeA });
      const channel = await subscribe(client, 'console-test');
      await row('subscribed', { channel: 'console-test', node: nodeA });

      await serverSdk(a.port).trigger('console-test', 'from-a', { n: 1 });
      await row('api_event', { event: 'from-a', node: nodeA });
      const fromB = once(channel, 'from-b');
      await serverSdk(b.port).trigger('console-test', 'from-b', { n: 2 });
      await row('api_event', { event: 'from-b', notNode: nodeA });
      assert.deepEqual(await fromB, { n: 2 });
      const dataOfB = await page.$eval('#log tr[data-event="from-b"] code', (e) => e.textContent);
      assert.match(dataOfB, /"n":2/, 'the event data is shown');

      // The figures count the subscriber's connection and channel (refreshed every 2 s).
      await page.waitForFunction(() => Number(document.querySelector('#fig-connections')?.textContent) >= 1
        && Number(document.querySelector('#fig-channels')?.textContent) >= 1, { timeout: PATIENCE_MS });
      assert.equal(await page.$$eval('svg.plot', (plots) => plots.length), 2, 'connections and events/s plotted');
      await page.screenshot({ path: join(artifacts, 'app-live-log.png'), fullPage: true });

      const fromForm = once(channel, 'from-form');
      await page.$eval('#send-channel', (e) => { e.value = 'console-test'; });
      await page.$eval('#send-event', (e) => { e.value = 'from-form'; });
      await page.$eval('#send-data', (e) => { e.value = '{"via":"the form"}'; });
      await page.click('#send-submit');
      assert.deepEqual(await fromForm, { via: 'the form' }, 'pusher-js receives the form\'s event');
      await page.waitForFunction(() => document.querySelector('#send-result')?.textContent.startsWith('Sent'));
      await row('api_event', { event: 'from-form' });

      await page.select('#filter-kind', 'subscribed');
      const shown = await page.$$eval('#log tr.entry:not([hidden])', (rows) => rows.map((r) => r.dataset.kind));
      assert.ok(shown.length > 0 && shown.every((k) => k === 'subscribed'), `filtered by kind: ${shown}`);
      await page.screenshot({ path: join(artifacts, 'app-sent-and-filtered.png'), fullPage: true });
      await page.close();
    } finally {
      client.disconnect();
    }
  });
});

// The harness: the real sockhost binary on a free port, an auth endpoint built on the official
// `pusher` server SDK, and pusher-js clients pointed at both.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import PusherServer from 'pusher';
import PusherClient from 'pusher-js';
import { after, before } from 'node:test';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const PATIENCE_MS = 10_000;

export const APP = { id: 'js-app', key: 'js-key', secret: 'js-secret-of-the-test-app' };

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolve when `emitter` emits `event` (pusher-js style `bind`), or fail after a deadline. */
export function once(emitter, event, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), PATIENCE_MS);
    const handler = (data) => {
      clearTimeout(timer);
      emitter.unbind(event, handler);
      resolve(data);
    };
    emitter.bind(event, handler);
  });
}

/** A PostgreSQL program: on the PATH, else in Debian's newest versioned directory. */
function pgProgram(name) {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (existsSync(join(dir, name))) return join(dir, name);
  }
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').sort() : [];
  return join('/usr/lib/postgresql', versions.at(-1) ?? '', 'bin', name);
}

/** A PostgreSQL of the suite's own (initdb in a temp dir, a free port), for apps in a database. */
async function startPostgres() {
  const dir = mkdtempSync(join(tmpdir(), 'sockhost-js-pg-'));
  // PostgreSQL refuses to run as root: as root, its programs run as the postgres user.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) execFileSync('chown', ['postgres', dir]);
  const run = (name, args) => (asRoot
    ? execFileSync('runuser', ['-u', 'postgres', '--', pgProgram(name), ...args], { stdio: 'ignore' })
    : execFileSync(pgProgram(name), args, { stdio: 'ignore' }));
  run('initdb', ['-D', join(dir, 'data'), '-U', 'postgres', '--auth=trust', '--no-sync']);
  const port = await freePort();
  const options = `-p ${port} -c listen_addresses=127.0.0.1 -k ${dir} -c fsync=off`;
  run('pg_ctl', ['-D', join(dir, 'data'), '-l', join(dir, 'log'), '-o', options, '-w', 'start']);
  return { port, stop: () => run('pg_ctl', ['-D', join(dir, 'data'), '-m', 'immediate', '-w', 'stop']) };
}

/** Where the test app lives: the configuration file, or (SOCKHOST_APPS=postgres) a PostgreSQL
 * database of the suite's own, the app created through the admin API. */
async function appSource(appSettings = '') {
  const file = `
[[app_manager.array.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
enable_client_messages = true
${appSettings}
`;
  if (process.env.SOCKHOST_APPS !== 'postgres') return { config: file, created: async () => {}, stop: () => {} };
  const postgres = await startPostgres();
  const adminPort = await freePort();
  const token = 'pusher-js-suite-admin-token-0123456789';
  return {
    config: `
[app_manager]
driver = "postgres"
[database.postgres]
host = "127.0.0.1"
port = ${postgres.port}
database = "postgres"
[admin]
enabled = true
host = "127.0.0.1"
port = ${adminPort}
token = "${token}"
`,
    created: async () => {
      const response = await fetch(`http://127.0.0.1:${adminPort}/apps`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ ...APP, enable_client_messages: true }),
      });
      if (response.status !== 201) throw new Error(`creating the app: ${response.status} ${await response.text()}`);
    },
    stop: () => postgres.stop(),
  };
}

/** Start sockhost with the test app; resolves when /up answers. With `tls` ({ cert, key }
 * PEM paths) it serves wss:// and https://, which this Node must trust (NODE_EXTRA_CA_CERTS);
 * `env` adds to its environment; `app` is more TOML for the test app's table. */
export async function startSockhost({ tls, env = {}, app = '' } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'sockhost-js-'));
  const config = join(dir, 'sockhost.toml');
  const apps = await appSource(app);
  writeFileSync(config, apps.config);
  const port = await freePort();
  const metricsPort = await freePort();
  const binary = join(root, 'target', process.env.SOCKHOST_PROFILE ?? 'debug', 'sockhost');
  const tlsEnv = tls ? { SSL_ENABLED: 'true', SSL_CERT_PATH: tls.cert, SSL_KEY_PATH: tls.key } : {};
  const scheme = tls ? 'https' : 'http';
  const child = spawn(binary, ['--config', config, '--plugins', join(root, 'plugins.toml')], {
    env: { ...process.env, ...env, ...tlsEnv, HOST: '127.0.0.1', PORT: String(port), METRICS_PORT: String(metricsPort), RUST_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sockhost exited early:\n${stderr}`);
    try {
      const response = await fetch(`${scheme}://127.0.0.1:${port}/up`);
      if (response.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`sockhost did not answer /up:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    await apps.created();
  } catch (error) {
    // Nothing left running to keep the test process alive past the failure.
    child.kill('SIGKILL');
    apps.stop();
    throw error;
  }
  return {
    port,
    stop: () => new Promise((resolve) => {
      child.once('exit', () => { apps.stop(); resolve(); });
      child.kill('SIGTERM');
    }),
    signal: (name) => child.kill(name),
    metricsPort,
    stderr: () => stderr,
  };
}

/** The official server SDK, aimed at the server. */
export function serverSdk(port, { tls = false } = {}) {
  return new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(port), useTLS: tls });
}

/**
 * The app's auth endpoint, as an application would run it: channel authorisation (with a
 * presence user taken from the `user` header the test sets per client) and user sign-in.
 */
export async function startAuthEndpoint(sdk) {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const user = req.headers['x-test-user'];
      let answer;
      if (req.url === '/pusher/auth') {
        const channel = form.get('channel_name');
        if (req.headers['x-test-deny']) {
          res.writeHead(403, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'denied' }));
          return;
        }
        answer = channel.startsWith('presence-')
          ? sdk.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: `name of ${user}` } })
          : sdk.authorizeChannel(socketId, channel);
      } else if (req.url === '/pusher/user-auth') {
        answer = sdk.authenticateUser(socketId, { id: user, user_info: { name: `name of ${user}` } });
      } else {
        res.writeHead(404);
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(r)) };
}

/** A pusher-js client connected to sockhost; resolves once connected. `setup` gets the client
 * before it connects (to add a helper such as `enableDeltas`). */
export async function connect(port, auth, { user = 'anonymous', deny = false, tls = false, setup } = {}) {
  const headers = { 'x-test-user': user };
  if (deny) headers['x-test-deny'] = '1';
  const client = new PusherClient(APP.key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: port,
    wssPort: port,
    forceTLS: tls,
    enabledTransports: ['ws'],
    enableStats: false,
    channelAuthorization: { endpoint: `${auth.url}/pusher/auth`, transport: 'ajax', headers },
    userAuthentication: { endpoint: `${auth.url}/pusher/user-auth`, transport: 'ajax', headers },
  });
  setup?.(client);
  if (client.connection.state !== 'connected') {
    await once(client.connection, 'connected', 'the connection');
  }
  return client;
}

/** Subscribe and resolve once the subscription succeeded. */
export async function subscribe(client, name) {
  const channel = client.subscribe(name);
  await once(channel, 'pusher:subscription_succeeded', `subscription to ${name}`);
  return channel;
}

/**
 * A suite's setup, registered in the current `describe`: before its tests, sockhost (with
 * `options` as for `startSockhost`), the server SDK and the auth endpoint; after them, every
 * client made through `suite.connect` disconnected, every `suite.cleanup(fn)` run, and both
 * servers stopped. Its fields are filled in once `before` has run.
 */
export function suite(options = {}) {
  const made = {
    server: undefined,
    sdk: undefined,
    auth: undefined,
    cleanups: [],
    cleanup(fn) {
      this.cleanups.push(fn);
    },
    /** A pusher-js client (as `connect`) disconnected after the suite. */
    async connect(clientOptions = {}) {
      const client = await connect(this.server.port, this.auth, { tls: Boolean(options.tls), ...clientOptions });
      this.cleanup(() => client.disconnect());
      return client;
    },
  };
  before(async () => {
    made.server = await startSockhost(options);
    made.sdk = serverSdk(made.server.port, { tls: Boolean(options.tls) });
    made.auth = await startAuthEndpoint(made.sdk);
  });
  after(async () => {
    for (const fn of made.cleanups) fn();
    await made.auth?.close();
    await made.server?.stop();
  });
  return made;
}

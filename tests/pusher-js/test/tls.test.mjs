// pusher-js over wss:// and the pusher SDK over https:// against sockhost's own TLS, with
// certificates from a throwaway CA, and a renewal (SIGHUP) while the client stays connected.
//
// Node reads NODE_EXTRA_CA_CERTS only when it starts, so this file runs itself again in a Node
// that trusts the test CA: the outer run makes the certificates, the inner one tests.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { X509Certificate } from 'node:crypto';
import { once, subscribe, suite } from '../lib/harness.mjs';

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function openssl(dir, args) {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

/** A server certificate for 127.0.0.1 signed by the CA in `dir`: `<name>.pem`, `<name>.key`. */
function issue(dir, name) {
  openssl(dir, ['req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=localhost']);
  writeFileSync(join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' +
    'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', 'server.ext']);
}

/** The fingerprint of the certificate 127.0.0.1:`port` presents. */
function presented(port) {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost' }, () => {
      resolve(socket.getPeerX509Certificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
}

function fingerprint(pem) {
  return new X509Certificate(readFileSync(pem)).fingerprint256;
}

const dir = process.env.SOCKHOST_TEST_TLS_DIR;

if (!dir) {
  test('pusher-js and the SDK over TLS (in a Node that trusts the test CA)', () => {
    const made = mkdtempSync(join(tmpdir(), 'sockhost-tls-'));
    openssl(made, ['req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
      '-subj', '/CN=sockhost test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    issue(made, 'first');
    issue(made, 'second');
    copyFileSync(join(made, 'first.pem'), join(made, 'cert.pem'));
    copyFileSync(join(made, 'first.key'), join(made, 'key.pem'));
    // Not as a child of this test runner (NODE_TEST_CONTEXT would make it report to us in
    // the runner's own format): a run of its own, reporting TAP.
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: join(made, 'ca.pem'), SOCKHOST_TEST_TLS_DIR: made };
    delete env.NODE_TEST_CONTEXT;
    const run = spawnSync(process.execPath, ['--test', '--test-reporter=tap', fileURLToPath(import.meta.url)], {
      env,
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
    // The inner run really ran its test (a file that found none would pass too).
    assert.match(run.stdout, /^# pass 1$/m, run.stdout);
  });
} else {
  describe('pusher-js over wss and the pusher SDK over https', () => {
    const setup = suite({ tls: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } });

    test('a subscriber over wss receives a trigger sent over https, also after a renewal', async () => {
      const c = await setup.connect();
      assert.equal(await presented(setup.server.port), fingerprint(join(dir, 'first.pem')));
      const channel = await subscribe(c, 'private-tls');
      let received = once(channel, 'news');
      await setup.sdk.trigger('private-tls', 'news', { n: 1 });
      assert.deepEqual(await received, { n: 1 });

      // Renew: swap the files in, then SIGHUP; new handshakes get the new certificate.
      for (const [from, to] of [['second.key', 'key.pem'], ['second.pem', 'cert.pem']]) {
        copyFileSync(join(dir, from), join(dir, `${to}.new`));
        renameSync(join(dir, `${to}.new`), join(dir, to));
      }
      setup.server.signal('SIGHUP');
      const renewed = fingerprint(join(dir, 'second.pem'));
      const deadline = Date.now() + 10_000;
      while (await presented(setup.server.port) !== renewed) {
        assert.ok(Date.now() < deadline, 'the renewed certificate was not served in time');
        await new Promise((r) => setTimeout(r, 50));
      }

      // The client connected before the renewal is still there, and the SDK (a new TLS
      // connection) still reaches the server.
      assert.equal(c.connection.state, 'connected');
      received = once(channel, 'news');
      await setup.sdk.trigger('private-tls', 'news', { n: 2 });
      assert.deepEqual(await received, { n: 2 });
      const late = await setup.connect();
      assert.equal(late.connection.state, 'connected');
    });
  });
}

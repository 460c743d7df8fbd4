// Connection recovery for pusher-js: through a TCP proxy that cuts every connection, a client
// with `enableRecovery` gets the events published while it was away, once each and in order,
// after pusher-js reconnects by itself; a channel that cannot be recovered is reported.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect as tcpConnect } from 'node:net';
import { connect, freePort, once, subscribe, suite } from '../lib/harness.mjs';
import { enableRecovery } from '../lib/recovery.mjs';

/** A TCP proxy to `port` whose connections can all be cut at once; a connection made while it
 * is cut waits (the client's handshake pending) until it is restored. */
async function startProxy(port) {
  const open = new Set();
  let held = null;
  const join = (client) => {
    const upstream = tcpConnect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const server = createServer((client) => {
    if (held) {
      client.pause();
      held.push(client);
    } else {
      join(client);
    }
  });
  const listenPort = await freePort();
  await new Promise((resolve) => server.listen(listenPort, '127.0.0.1', resolve));
  return {
    port: listenPort,
    cut: () => {
      held = [];
      for (const socket of open) socket.destroy();
    },
    restore: () => {
      const waiting = held ?? [];
      held = null;
      for (const client of waiting) {
        join(client);
        client.resume();
      }
    },
    close: () => new Promise((resolve) => {
      for (const socket of [...open, ...(held ?? [])]) socket.destroy();
      server.close(resolve);
    }),
  };
}

/** Resolve once `events` holds `count` entries. */
function until(events, count, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 10_000;
    const check = () => {
      if (events.length >= count) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(events)}`));
      return setTimeout(check, 10);
    };
    check();
  });
}

describe('connection recovery for pusher-js', () => {
  const setup = suite({
    env: { CONNECTION_RECOVERY_ENABLED: 'true', CONNECTION_RECOVERY_MAX_BUFFER_SIZE: '5' },
    app: 'v1_recovery_fields = true',
  });

  test('a cut connection loses nothing and doubles nothing', async () => {
    const proxy = await startProxy(setup.server.port);
    setup.cleanup(() => proxy.close());
    const gaps = [];
    let recovery;
    const client = await connect(proxy.port, setup.auth, {
      setup: (c) => { recovery = enableRecovery(c, { onGap: (channel, failure) => gaps.push({ channel, failure }) }); },
    });
    setup.cleanup(() => client.disconnect());
    const got = [];
    const publicChannel = await subscribe(client, 'news');
    publicChannel.bind('tick', (data) => got.push(`news:${data}`));
    const privateChannel = await subscribe(client, 'private-desk');
    privateChannel.bind('tick', (data) => got.push(`desk:${data}`));
    for (const n of [1, 2]) {
      await setup.sdk.trigger('news', 'tick', String(n));
      await setup.sdk.trigger('private-desk', 'tick', String(n));
    }
    await until(got, 4, 'the live events');

    // Cut: pusher-js sees its socket die and reconnects by itself.
    const closed = once(client.connection, 'connecting', 'the reconnect');
    proxy.cut();
    await closed;
    for (const n of [3, 4, 5]) {
      await setup.sdk.trigger('news', 'tick', String(n));
      await setup.sdk.trigger('private-desk', 'tick', String(n));
    }
    proxy.restore();
    await until(got, 10, 'the missed events');
    await setup.sdk.trigger('news', 'tick', '6');
    await until(got, 11, 'a live event after the resume');
    assert.deepEqual(got.filter((e) => e.startsWith('news:')), ['1', '2', '3', '4', '5', '6'].map((n) => `news:${n}`));
    assert.deepEqual(got.filter((e) => e.startsWith('desk:')), ['1', '2', '3', '4', '5'].map((n) => `desk:${n}`));
    assert.deepEqual(gaps, []);
    assert.equal(recovery.positions.get('news').serial, 6);
  });

  test('a channel that cannot be recovered is reported, and goes on live', async () => {
    const proxy = await startProxy(setup.server.port);
    setup.cleanup(() => proxy.close());
    const gaps = [];
    const client = await connect(proxy.port, setup.auth, {
      setup: (c) => { enableRecovery(c, { onGap: (channel, failure) => gaps.push({ channel, failure }) }); },
    });
    setup.cleanup(() => client.disconnect());
    const got = [];
    const channel = await subscribe(client, 'busy');
    channel.bind('tick', (data) => got.push(data));
    await setup.sdk.trigger('busy', 'tick', 'before');
    await until(got, 1, 'the live event');
    const reconnecting = once(client.connection, 'connecting', 'the reconnect');
    proxy.cut();
    await reconnecting;
    // More than the server keeps for a resume (5).
    for (let n = 0; n < 8; n += 1) await setup.sdk.trigger('busy', 'tick', `missed ${n}`);
    proxy.restore();
    await until(gaps, 1, 'the gap report');
    assert.equal(gaps[0].channel, 'busy');
    assert.equal(gaps[0].failure.code, 'position_expired');
    await setup.sdk.trigger('busy', 'tick', 'after');
    await until(got, 2, 'the live event after the gap');
    assert.deepEqual(got, ['before', 'after']);
  });
});

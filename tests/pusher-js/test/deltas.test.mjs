// Delta compression from JavaScript: a raw protocol-2 socket rebuilds every event with the npm
// `fossil-delta` and `@ably/vcdiff-decoder` (lib/deltas.mjs), and a pusher-js app gets the
// same events through `enableDeltas` as it would whole.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { APP, once, suite } from '../lib/harness.mjs';
import { DeltaDecoder, enableDeltas } from '../lib/deltas.mjs';

/** A ticker quote: about 2 KB of JSON where only the price changes. */
function quote(sym, n) {
  const book = Array.from({ length: 40 }, (_, i) => ({ level: i, size: 1000 + i, venue: 'XNAS' }));
  return { sym, price: 1000 + n, book };
}

/** A raw WebSocket whose frames are read in order. */
async function rawSocket(port, protocol) {
  const socket = new WebSocket(`ws://127.0.0.1:${port}/app/${APP.key}?protocol=${protocol}&client=js&version=1`);
  const queue = [];
  const waiting = [];
  socket.on('message', (data) => {
    const text = data.toString();
    const next = waiting.shift();
    if (next) next(text);
    else queue.push(text);
  });
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  const next = () => {
    if (queue.length) return Promise.resolve(queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no frame in time')), 10_000);
      waiting.push((text) => { clearTimeout(timer); resolve(text); });
    });
  };
  const send = (message) => socket.send(JSON.stringify(message));
  return { socket, next, send };
}

describe('delta compression from JavaScript', () => {
  const setup = suite({ env: { DELTA_COMPRESSION_CONFLATION_KEY_PATH: 'sym' } });

  for (const algorithm of ['fossil', 'xdelta3']) {
    test(`a protocol-2 socket rebuilds every event (${algorithm})`, async () => {
      const raw = await rawSocket(setup.server.port, 2);
      setup.cleanup(() => raw.socket.close());
      assert.equal(JSON.parse(await raw.next()).event, 'sockudo:connection_established');
      raw.send({ event: 'sockudo:subscribe', data: { channel: `ticker-${algorithm}`, delta: { enabled: true, algorithm } } });
      assert.equal(JSON.parse(await raw.next()).event, 'sockudo_internal:subscription_succeeded');
      const sent = [];
      for (let n = 0; n < 16; n += 1) {
        const data = quote(n % 2 ? 'ETH' : 'BTC', n);
        sent.push(data);
        await setup.sdk.trigger(`ticker-${algorithm}`, 'price', data);
      }
      const decoder = new DeltaDecoder();
      let kinds = '';
      let deltaBytes = 0;
      let fullBytes = 0;
      for (const data of sent) {
        const text = await raw.next();
        const got = decoder.receive(text);
        assert.ok(got.event, `an event of the stream: ${text.slice(0, 120)}`);
        assert.equal(got.event.event, 'price');
        assert.deepEqual(JSON.parse(got.event.data), data);
        if (got.delta) {
          assert.equal(JSON.parse(text).data.algorithm, algorithm);
          deltaBytes += text.length;
        } else {
          fullBytes += text.length;
        }
        kinds += got.delta ? 'd' : 'F';
      }
      // Two whole per conflation key, then deltas.
      assert.equal(kinds, 'FFFFdddddddddddd');
      assert.ok(deltaBytes / 12 < fullBytes / 4 / 4, `deltas of ${deltaBytes / 12} bytes against ${fullBytes / 4}`);
    });
  }

  test('a pusher-js app gets every event through enableDeltas, with deltas on the wire', async () => {
    let decoder;
    const client = await setup.connect({ setup: (c) => { decoder = enableDeltas(c); } });
    const channel = client.subscribe('private-quotes');
    await once(channel, 'pusher:subscription_succeeded', 'the subscription');
    const seen = [];
    channel.bind('price', (data) => seen.push(data));
    const last = new Promise((resolve) => channel.bind('price', (data) => { if (data.price === 1000 + 13) resolve(); }));
    const sent = [];
    for (let n = 0; n < 14; n += 1) {
      const data = quote('BTC', n);
      sent.push(data);
      await setup.sdk.trigger('private-quotes', 'price', data);
    }
    await last;
    assert.deepEqual(seen, sent);
    assert.ok(decoder.counts.deltas >= 10, JSON.stringify(decoder.counts));
    assert.equal(decoder.counts.resyncs, 0);
  });
});

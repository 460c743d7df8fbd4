// pusher-js with tag filters (lib/filters.mjs) against sockhost with tag filtering on: events
// published through the pusher SDK with `tags` reach only the subscribers whose filter passes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, once, serverSdk, startAuthEndpoint, startSockhost, subscribe } from '../lib/harness.mjs';
import { subscribeWithFilter } from '../lib/filters.mjs';

describe('tag filters from pusher-js', () => {
  let server;
  let sdk;
  let auth;
  const clients = [];

  before(async () => {
    server = await startSockhost({ env: { TAG_FILTERING_ENABLED: 'true' } });
    sdk = serverSdk(server.port);
    auth = await startAuthEndpoint(sdk);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await auth.close();
    await server.stop();
  });

  test('a filtered subscriber gets only the events its filter passes', async () => {
    const filteredClient = await connect(server.port, auth);
    const plainClient = await connect(server.port, auth);
    clients.push(filteredClient, plainClient);
    const btc = subscribeWithFilter(filteredClient, 'private-ticker', { key: 'sym', cmp: 'eq', val: 'BTC' });
    await once(btc, 'pusher:subscription_succeeded', 'the filtered subscription');
    const all = await subscribe(plainClient, 'private-ticker');

    const seenFiltered = [];
    btc.bind('price', (data) => seenFiltered.push(data.sym));
    const seenAll = [];
    all.bind('price', (data) => seenAll.push(data.sym));
    const last = once(btc, 'price-end');
    const lastAll = once(all, 'price-end');
    for (const sym of ['ETH', 'BTC', 'SOL']) {
      // The SDK sends extra parameters in the event's body: here, its tags.
      await sdk.trigger('private-ticker', 'price', { sym }, { tags: { sym } });
    }
    await sdk.trigger('private-ticker', 'price-end', {}, { tags: { sym: 'BTC' } });
    await last;
    await lastAll;
    assert.deepEqual(seenFiltered, ['BTC']);
    assert.deepEqual(seenAll, ['ETH', 'BTC', 'SOL']);
  });
});

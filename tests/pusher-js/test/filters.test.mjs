// pusher-js with tag filters (lib/filters.mjs) against sockhost with tag filtering on: events
// published through the pusher SDK with `tags` reach only the subscribers whose filter passes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once, subscribe, suite } from '../lib/harness.mjs';
import { subscribeWithFilter } from '../lib/filters.mjs';

describe('tag filters from pusher-js', () => {
  const setup = suite({ env: { TAG_FILTERING_ENABLED: 'true' } });

  test('a filtered subscriber gets only the events its filter passes', async () => {
    const filteredClient = await setup.connect();
    const plainClient = await setup.connect();
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
      await setup.sdk.trigger('private-ticker', 'price', { sym }, { tags: { sym } });
    }
    await setup.sdk.trigger('private-ticker', 'price-end', {}, { tags: { sym: 'BTC' } });
    await last;
    await lastAll;
    assert.deepEqual(seenFiltered, ['BTC']);
    assert.deepEqual(seenAll, ['ETH', 'BTC', 'SOL']);
  });
});

// The official pusher-js client and pusher server SDK against the real sockhost binary.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once, subscribe, suite } from '../lib/harness.mjs';

describe('pusher-js and the pusher SDK against sockhost', () => {
  const setup = suite();
  const client = (options) => setup.connect(options);

  test('connects and gets a socket id', async () => {
    const c = await client();
    assert.equal(c.connection.state, 'connected');
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  });

  test('a public subscriber receives a trigger from the SDK', async () => {
    const c = await client();
    const channel = await subscribe(c, 'js-public');
    const received = once(channel, 'greeting');
    await setup.sdk.trigger('js-public', 'greeting', { text: 'hello' });
    assert.deepEqual(await received, { text: 'hello' });
  });

  test('a private channel is authorised through the auth endpoint', async () => {
    const c = await client();
    const channel = await subscribe(c, 'private-js');
    const received = once(channel, 'secret');
    await setup.sdk.trigger('private-js', 'secret', { n: 42 });
    assert.deepEqual(await received, { n: 42 });
  });

  test('a refused authorisation surfaces as a subscription error', async () => {
    const c = await client({ deny: true });
    const channel = c.subscribe('private-denied');
    const error = await once(channel, 'pusher:subscription_error');
    assert.equal(error.status, 403);
  });

  test('presence members join, are counted once, and leave', async () => {
    const ann = await client({ user: 'ann' });
    const annChannel = await subscribe(ann, 'presence-js');
    assert.equal(annChannel.members.count, 1);
    assert.deepEqual(annChannel.members.me, { id: 'ann', info: { name: 'name of ann' } });

    const added = once(annChannel, 'pusher:member_added');
    const ben = await client({ user: 'ben' });
    const benChannel = await subscribe(ben, 'presence-js');
    assert.equal(benChannel.members.count, 2);
    assert.deepEqual(await added, { id: 'ben', info: { name: 'name of ben' } });

    const users = await (await setup.sdk.get({ path: '/channels/presence-js/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'ben']);

    const removed = once(annChannel, 'pusher:member_removed');
    ben.unsubscribe('presence-js');
    assert.equal((await removed).id, 'ben');
  });

  test('a batch trigger delivers every event in order', async () => {
    const c = await client();
    const channel = await subscribe(c, 'js-batch');
    const seen = [];
    const done = new Promise((resolve) => {
      channel.bind('item', (data) => { seen.push(data.i); if (seen.length === 3) resolve(); });
    });
    await setup.sdk.triggerBatch([0, 1, 2].map((i) => ({ channel: 'js-batch', name: 'item', data: { i } })));
    await done;
    assert.deepEqual(seen, [0, 1, 2]);
  });

  test('a trigger excludes the socket it names', async () => {
    const a = await client();
    const b = await client();
    const aChannel = await subscribe(a, 'js-exclude');
    const bChannel = await subscribe(b, 'js-exclude');
    let aGot = 0;
    aChannel.bind('ev', () => { aGot += 1; });
    const bGot = once(bChannel, 'ev');
    await setup.sdk.trigger('js-exclude', 'ev', { x: 1 }, { socket_id: a.connection.socket_id });
    await bGot;
    const marker = once(aChannel, 'marker');
    await setup.sdk.trigger('js-exclude', 'marker', {});
    await marker;
    assert.equal(aGot, 0);
  });

  test('client events reach the other subscriber and carry the presence user', async () => {
    const ann = await client({ user: 'cara' });
    const ben = await client({ user: 'dan' });
    const annChannel = await subscribe(ann, 'presence-js-chat');
    const benChannel = await subscribe(ben, 'presence-js-chat');
    const received = new Promise((resolve) => {
      annChannel.bind('client-typing', (data, metadata) => resolve({ data, metadata }));
    });
    assert.equal(benChannel.trigger('client-typing', { typing: true }), true);
    const { data, metadata } = await received;
    assert.deepEqual(data, { typing: true });
    assert.equal(metadata.user_id, 'dan');
  });

  test('channel queries through the SDK report occupied channels and counts', async () => {
    const c = await client({ user: 'eve' });
    await subscribe(c, 'js-query');
    await subscribe(c, 'presence-js-query');
    const list = await (await setup.sdk.get({ path: '/channels', params: { filter_by_prefix: 'js-query' } })).json();
    assert.deepEqual(list, { channels: { 'js-query': {} } });
    const info = await (await setup.sdk.get({
      path: '/channels/presence-js-query', params: { info: 'user_count,subscription_count' },
    })).json();
    assert.deepEqual(info, { occupied: true, user_count: 1, subscription_count: 1 });
    const triggered = await (await setup.sdk.trigger('js-query', 'e', {}, { info: 'subscription_count' })).json();
    assert.deepEqual(triggered, { channels: { 'js-query': { subscription_count: 1 } } });
  });

  test('signin lets the SDK send to the user, and terminate disconnects the user', async () => {
    const c = await client({ user: 'frank' });
    c.signin();
    await c.user.signinDonePromise;
    assert.equal(c.user.user_data.id, 'frank');
    const received = once(c.user, 'notice');
    await setup.sdk.sendToUser('frank', 'notice', { text: 'for frank only' });
    assert.deepEqual(await received, { text: 'for frank only' });

    const gone = new Promise((resolve) => {
      c.connection.bind('state_change', ({ current }) => { if (current !== 'connected') resolve(current); });
    });
    await setup.sdk.terminateUserConnections('frank');
    assert.notEqual(await gone, 'connected');
  });

  test('a cache channel says cache_miss when empty and replays its last event', async () => {
    const first = await client();
    const firstChannel = first.subscribe('cache-js');
    await once(firstChannel, 'pusher:cache_miss');
    await setup.sdk.trigger('cache-js', 'latest', { v: 7 });
    const second = await client();
    const secondChannel = second.subscribe('cache-js');
    assert.deepEqual(await once(secondChannel, 'latest'), { v: 7 });
  });
});

// Tag filters for pusher-js apps: subscribe to a channel with a filter that sockhost applies to
// events published with `tags` (see README, "Tag filtering").
//
//   import { subscribeWithFilter } from './filters.mjs';
//   const channel = subscribeWithFilter(pusher, 'ticker', { key: 'sym', cmp: 'eq', val: 'BTC' });
//   channel.bind('price', (data) => { ... });
//
// pusher-js has no field for a filter in its subscribe message, so this adds one to every
// `pusher:subscribe` it sends for that channel, the resubscribes after a reconnect included.
// The channel is otherwise an ordinary pusher-js channel (auth, bind, unsubscribe).

const FILTERS = Symbol('sockhost tag filters');

/** Subscribe `pusher` to `name` with `filter`; the pusher-js channel. */
export function subscribeWithFilter(pusher, name, filter) {
  if (!pusher[FILTERS]) {
    const filters = new Map();
    const send = pusher.send_event.bind(pusher);
    pusher.send_event = (event, data, channel) => {
      if (event === 'pusher:subscribe' && data && filters.has(data.channel)) {
        return send(event, { ...data, filter: filters.get(data.channel) }, channel);
      }
      return send(event, data, channel);
    };
    pusher[FILTERS] = filters;
  }
  pusher[FILTERS].set(name, filter);
  return pusher.subscribe(name);
}

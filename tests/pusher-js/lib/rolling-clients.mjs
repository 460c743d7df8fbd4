// pusher-js clients with the recovery helper, for the Rust rolling-restart test
// (tests/tests/recovery_across_nodes.rs): `node rolling-clients.mjs <port> <key> <count>`
// connects `count` clients to 127.0.0.1:<port> (a balancer in front of the nodes), subscribes
// each to `news`, prints `ready` once all are subscribed; for each number N that comes on
// stdin, it waits until every client has N ticks (or 60 s pass), then prints one JSON line: per
// client, the `tick` data it got (in order), the channels it was told could not be recovered,
// and how many times it connected. It ends when stdin closes. pusher-js reconnects by itself.
import { createInterface } from 'node:readline';
import PusherClient from 'pusher-js';
import { enableRecovery } from './recovery.mjs';

const [port, key, count] = process.argv.slice(2);
const clients = [];

function start() {
  const state = { ticks: [], gaps: [], connections: 0 };
  const client = new PusherClient(key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
  });
  enableRecovery(client, { onGap: (channel, failure) => state.gaps.push(`${channel}: ${failure.code} ${failure.reason}`) });
  client.connection.bind('connected', () => { state.connections += 1; });
  const channel = client.subscribe('news');
  channel.bind('tick', (data) => state.ticks.push(Number(data)));
  const subscribed = new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
  clients.push({ client, state });
  return subscribed;
}

await Promise.all(Array.from({ length: Number(count) }, start));
process.stdout.write('ready\n');
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const wanted = Number(line);
  const deadline = Date.now() + 60_000;
  const check = () => {
    const behind = clients.some(({ state }) => state.ticks.length < wanted);
    if (behind && Date.now() < deadline) return setTimeout(check, 50);
    return process.stdout.write(`${JSON.stringify(clients.map((c) => c.state))}\n`);
  };
  check();
});
lines.on('close', () => {
  for (const { client } of clients) client.disconnect();
  process.exit(0);
});

// Delta compression for JavaScript clients of sockhost (see README, "Delta compression").
//
// `DeltaDecoder` rebuilds events from the frames of a delta stream, whatever the client:
//
//   const decoder = new DeltaDecoder();
//   socket.onmessage = ({ data }) => {
//     const got = decoder.receive(data);          // the raw frame text
//     if (got.resync) socket.send(JSON.stringify({ event: 'pusher:delta_sync_error', data: { channel: got.resync } }));
//     else if (got.event) handle(got.event);      // { event, channel, data } as published
//   };
//
// `enableDeltas(pusher)` does it for a pusher-js client: it asks for deltas on every channel
// at each (re)connection, reads the raw frames beside pusher-js, and hands each rebuilt event
// to its channel as if it had come whole. Bindings see only the app's events, as before (and a
// `pusher:delta` event per delta, which they can ignore).
//
// Full frames carry `__delta_seq` (and `__conflation_key`) as their last members; the decoder
// strips them byte for byte and keeps the frame as the base of its stream (channel, event,
// conflation key). A delta frame names its base's seq (`base_index`); the decoder applies it with
// `fossil-delta` or `@ably/vcdiff-decoder` (xdelta3), keeps the result as the new base, and
// answers a resync request when it does not hold that base.

import { applyDelta } from 'fossil-delta';
import vcdiff from '@ably/vcdiff-decoder';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const DELTA_MEMBERS = /,"__delta_seq":(\d+)(,"__conflation_key":"(?:[^"\\]|\\.)*")?}$/;

function readData(data) {
  // As pusher-js does: a string that holds JSON is parsed.
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

export class DeltaDecoder {
  constructor() {
    /** stream key -> { seq, text } */
    this.bases = new Map();
    this.counts = { full: 0, deltas: 0, plain: 0, resyncs: 0 };
  }

  static key(channel, event, conflationKey) {
    return JSON.stringify([channel ?? '', event ?? '', conflationKey ?? '']);
  }

  /** Read one frame's text. Answers `{ event }` (a frame of a delta stream, rebuilt or
   * stripped: `{ event, channel, data }` with data as sent), `{ resync: channel }` (a delta
   * whose base is not held: ask for a resync), or `{ plain: frame }` (any other frame). */
  receive(text) {
    const frame = JSON.parse(text);
    if (frame.event === 'pusher:delta' || frame.event === 'sockudo:delta') {
      const d = typeof frame.data === 'string' ? JSON.parse(frame.data) : frame.data;
      const key = DeltaDecoder.key(frame.channel, d.event, d.conflation_key);
      const base = this.bases.get(key);
      if (!base || base.seq !== d.base_index) {
        this.bases.delete(key);
        this.counts.resyncs += 1;
        return { resync: frame.channel };
      }
      const delta = Buffer.from(d.delta, 'base64');
      const source = encoder.encode(base.text);
      const rebuilt = d.algorithm === 'xdelta3'
        ? decoder.decode(vcdiff.decode(new Uint8Array(delta), source))
        : decoder.decode(new Uint8Array(applyDelta(source, new Uint8Array(delta))));
      this.bases.set(key, { seq: d.seq, text: rebuilt });
      this.counts.deltas += 1;
      const event = JSON.parse(rebuilt);
      return { event: { event: event.event, channel: event.channel, data: event.data }, text: rebuilt, delta: true };
    }
    const members = DELTA_MEMBERS.exec(text);
    if (frame.__delta_seq === undefined || !members) {
      this.counts.plain += 1;
      return { plain: frame };
    }
    const stripped = text.slice(0, members.index) + '}';
    const key = DeltaDecoder.key(frame.channel, frame.event, frame.__conflation_key);
    this.bases.set(key, { seq: frame.__delta_seq, text: stripped });
    this.counts.full += 1;
    return { event: { event: frame.event, channel: frame.channel, data: frame.data }, text: stripped, delta: false };
  }
}

/** Ask for deltas (in `algorithm`: 'fossil' or 'xdelta3') on every channel of `pusher`, a
 * pusher-js client, and deliver the events rebuilt. Answers the decoder (its `counts` say what
 * arrived how). Call before `connect()` or right after constructing the client. */
export function enableDeltas(pusher, { algorithm = 'fossil' } = {}) {
  let state = new DeltaDecoder();
  const onRaw = (message) => {
    const text = typeof message.data === 'string' ? message.data : String(message.data);
    let got;
    try {
      got = state.receive(text);
    } catch (error) {
      // Not ours to judge (pusher-js reports frames it cannot read).
      return;
    }
    if (got.resync) {
      pusher.send_event('pusher:delta_sync_error', { channel: got.resync });
    } else if (got.delta) {
      // A full frame reached pusher-js whole already; a delta is handed over rebuilt.
      const channel = pusher.channel(got.event.channel);
      if (channel) channel.handleEvent({ ...got.event, data: readData(got.event.data) });
    }
  };
  pusher.connection.bind('connected', () => {
    // A new connection starts new streams: the bases of the last one are worthless.
    const counts = state.counts;
    state = new DeltaDecoder();
    state.counts = counts;
    decoderRef.current = state;
    pusher.connection.connection.transport.bind('message', onRaw);
    pusher.send_event('pusher:enable_delta_compression', { algorithms: [algorithm] });
  });
  const decoderRef = { current: state, get counts() { return this.current.counts; } };
  return decoderRef;
}

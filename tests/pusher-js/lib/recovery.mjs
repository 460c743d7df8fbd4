// Connection recovery for pusher-js: with the app's `v1_recovery_fields` on, sockhost keeps
// each event's position (`message_id`, `stream_id`, `serial`) on protocol-7 frames, which
// pusher-js ignores. This helper tracks them, asks for what was missed after pusher-js
// reconnects by itself, drops what arrives twice, and tells the app which channels could not
// be recovered, so it refetches their state.

/** Keep the last `size` message ids. */
class Recent {
  constructor(size) {
    this.size = size;
    this.order = [];
    this.ids = new Set();
  }

  /** Whether `id` was seen already; remembers it. */
  seen(id) {
    if (this.ids.has(id)) return true;
    this.ids.add(id);
    this.order.push(id);
    if (this.order.length > this.size) this.ids.delete(this.order.shift());
    return false;
  }
}

/**
 * Recover `pusher`'s channels across reconnections. Call before `connect()` or right after
 * constructing the client. `onGap(channel, failure)` is called for each channel the server
 * could not recover (`failure`: its `code` and `reason`); the channel stays subscribed and
 * carries on from the live events. Answers `{ positions, dropped }`.
 */
export function enableRecovery(pusher, { onGap = () => {}, remember = 1000 } = {}) {
  const positions = new Map();
  const recent = new Recent(remember);
  const state = { positions, dropped: 0 };

  /** Whether the frame goes on to pusher-js (a duplicate does not). */
  const look = (text) => {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return true;
    }
    const { event, channel } = frame;
    if (event === 'pusher_internal:subscription_succeeded' && frame.stream_id !== undefined) {
      // The head at subscribe: where a first subscription starts. After a reconnect the
      // position before the cut stands, and the resume sent with the subscribe fills the gap.
      if (!positions.has(channel)) positions.set(channel, { stream_id: frame.stream_id, serial: frame.serial });
    } else if (frame.message_id !== undefined && frame.serial !== undefined && channel) {
      if (recent.seen(frame.message_id)) {
        state.dropped += 1;
        return false;
      }
      positions.set(channel, { stream_id: frame.stream_id, serial: frame.serial, last_message_id: frame.message_id });
    } else if (event === 'pusher:resume_failed') {
      // Live from the next event: start again from the current head.
      positions.delete(channel);
      const failure = typeof frame.data === 'string' ? JSON.parse(frame.data) : frame.data;
      onGap(channel, failure);
    }
    return true;
  };

  // Every frame is looked at before pusher-js dispatches it, on each new connection.
  pusher.connection.bind('connected', () => {
    const transport = pusher.connection.connection.transport;
    const emit = transport.emit;
    transport.emit = function emitUnlessDuplicate(name, message, metadata) {
      if (name === 'message' && !look(typeof message.data === 'string' ? message.data : String(message.data))) return this;
      return emit.call(this, name, message, metadata);
    };
  });

  // pusher-js subscribes again by itself after reconnecting (private channels once their auth
  // is back): each such subscribe is preceded by a resume from the channel's position, which
  // the server holds until the subscribe lands and answers right after its acknowledgement,
  // before any live event (a resume sent after the subscribe could come behind live events).
  const send = pusher.connection.send_event.bind(pusher.connection);
  pusher.connection.send_event = (name, data, channel) => {
    const position = name === 'pusher:subscribe' ? positions.get(data.channel) : undefined;
    if (position) send('pusher:resume', { channel_positions: { [data.channel]: position } });
    return send(name, data, channel);
  };
  return state;
}

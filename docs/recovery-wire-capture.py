#!/usr/bin/env python3
"""Capture connection-recovery frames from a running Pusher-protocol server (Sockudo 5.2.0 or sockhost).

Standard library only: a raw WebSocket client (no compression negotiated, so the text frames are the
server's exact bytes) and a signed Pusher HTTP API publisher. Prints `-> sent` / `<- received` lines.

  recovery-wire-capture.py PORT APP_ID KEY SECRET SCENARIO [SCENARIO...]

Scenarios: basic escaping p7 resume resume_before_sub legacy unknown_stream ahead never_published
empty data_object at_head pusher_prefix expired disabled client_events
live_vs_replay idempotent ttl multi key_order
pyclient (run with the python of a venv that has sockudo-python 2.2.0 installed)
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time
import urllib.request

PORT, APP_ID, KEY, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
QUIET = 0.6  # seconds without a frame that end a read
PY_REFUSE = os.environ.get("PY_REFUSE") == "1"  # pyclient: refuse (1) or hold (else) connections during the cut


class WS:
    def __init__(self, query, tag):
        self.tag = tag
        self.sock = socket.create_connection(("127.0.0.1", PORT))
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /app/{KEY}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed during handshake: %r" % buf)
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(head.decode(errors="replace"))
        self.closed = None

    def _read(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("eof")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self, timeout):
        deadline = time.monotonic() + timeout
        b1, b2 = self._read(2, deadline)
        op, n = b1 & 0x0F, b2 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2, deadline))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8, deadline))[0]
        payload = self._read(n, deadline)
        return op, payload

    def send_raw(self, op, payload):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | op])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text):
        print(f"{self.tag} -> {text}")
        self.send_raw(1, text.encode())

    def recv_all(self, quiet=QUIET):
        """Print and return every text frame until `quiet` seconds pass without one."""
        got = []
        while True:
            try:
                op, payload = self.frame(quiet)
            except TimeoutError:
                return got
            except (ConnectionError, OSError) as e:
                print(f"{self.tag} <- [connection ended: {e}]")
                return got
            if op == 1:
                t = payload.decode()
                print(f"{self.tag} <- {t}")
                got.append(t)
            elif op == 8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                print(f"{self.tag} <- [close frame code={code} reason={payload[2:].decode(errors='replace')!r}]")
                self.closed = code
                return got
            elif op == 9:
                self.send_raw(10, payload)

    def close(self):
        try:
            self.send_raw(8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


def publish(channel, name, data, extra=None, show=True):
    body = {"name": name, "channels": [channel], "data": data}
    body.update(extra or {})
    raw = json.dumps(body, separators=(",", ":")).encode()
    path = f"/apps/{APP_ID}/events"
    q = {"auth_key": KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
         "body_md5": hashlib.md5(raw).hexdigest()}
    qs = "&".join(f"{k}={q[k]}" for k in sorted(q))
    sig = hmac.new(SECRET.encode(), f"POST\n{path}\n{qs}".encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}?{qs}&auth_signature={sig}", data=raw,
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    if show:
        print(f"HTTP POST {path} {raw.decode()} => {status} {text}")
    return status, text


def j(obj):
    return json.dumps(obj, separators=(",", ":"))


def p2(tag):
    ws = WS("protocol=2", tag)
    frames = ws.recv_all()
    sid = json.loads(json.loads(frames[0])["data"])["socket_id"]
    return ws, sid


def p7(tag):
    ws = WS("protocol=7&client=js&version=8.4.0", tag)
    frames = ws.recv_all()
    sid = json.loads(json.loads(frames[0])["data"])["socket_id"]
    return ws, sid


def sub(ws, ch, prefix="sockudo", auth=None):
    d = {"channel": ch}
    if auth:
        d["auth"] = auth
    ws.send(j({"event": f"{prefix}:subscribe", "data": d}))
    return ws.recv_all()


def last_position(frames, ch):
    pos = None
    for f in frames:
        o = json.loads(f)
        if o.get("channel") == ch and "serial" in o:
            pos = {"stream_id": o.get("stream_id"), "serial": o["serial"], "last_message_id": o.get("message_id")}
    return pos


def resume_frame(positions, prefix="sockudo", as_string=True):
    d = {"channel_positions": positions}
    return j({"event": f"{prefix}:resume", "data": j(d) if as_string else d})


def resumed_on(tag, ch, pos):
    """A new protocol-2 socket subscribed to `ch` that resumes from `pos`, its answer printed."""
    ws, _ = p2(tag)
    sub(ws, ch)
    ws.send(resume_frame({ch: pos}))
    ws.recv_all()
    return ws


def section(name):
    print(f"\n===== {name} =====")


# ---------------------------------------------------------------- scenarios

def basic():
    section("basic: connect, subscribe before/after publishes, publish")
    ch = "rec-basic"
    a, _ = WS("protocol=2", "A"), None
    first = a.recv_all()
    f = sub(a, ch)
    publish(ch, "ev", '{"n":1}')
    publish(ch, "ev", '{"n":2}')
    a.recv_all()
    b, _ = p2("B")
    sub(b, ch)
    publish(ch, "ev", '{"n":3}')
    a.recv_all()
    b.recv_all()
    a.close(); b.close()


def escaping():
    section("escaping: data with quotes, backslash, slash, non-ASCII, U+2028, control char; object data; socket_id; message_id")
    ch = "rec-esc"
    a, sid = p2("A")
    c, _ = p7("P7")
    sub(a, ch)
    sub(c, ch, prefix="pusher")
    publish(ch, "ev", 'q"uote \\ back /slash </script> h\u00e9llo \u2028 \u0001 \U0001F600')
    a.recv_all(); c.recv_all()
    publish(ch, "ev", {"obj": True, "s": "x\"y"})
    a.recv_all(); c.recv_all()
    publish(ch, "ev", '{"n":1}', {"socket_id": sid})
    a.recv_all(); c.recv_all()
    publish(ch, "ev", '{"n":2}', {"message_id": "pub-msg-1"})
    a.recv_all(); c.recv_all()
    publish(ch, "ev", '{"n":3}', {"message_id": "pub-msg-1"})
    a.recv_all(); c.recv_all()
    a.close(); c.close()


def p7_case():
    section("p7: protocol-7 socket subscribe + event")
    ch = "rec-p7"
    c, _ = p7("P7")
    sub(c, ch, prefix="pusher")
    publish(ch, "ev", '{"n":1}')
    c.recv_all()
    c.close()


def _disconnect_publish_reconnect(ch, n_before=2, n_gap=3):
    a, _ = p2("A")
    frames = sub(a, ch)
    for i in range(n_before):
        publish(ch, "ev", j({"n": i + 1}))
    frames += a.recv_all()
    pos = last_position(frames, ch)
    a.close()
    print(f"(A closed; last position {j(pos)})")
    time.sleep(0.3)
    for i in range(n_gap):
        publish(ch, "ev", j({"n": n_before + i + 1}))
    return pos


def resume():
    section("resume: subscribe then sockudo:resume (data as JSON string)")
    ch = "rec-resume"
    pos = _disconnect_publish_reconnect(ch)
    b = resumed_on("B", ch, pos)
    section("resume again on the same socket with the same (old) position")
    b.send(resume_frame({ch: pos}))
    b.recv_all()
    b.close()


def resume_before_sub():
    section("resume sent BEFORE the subscribe")
    ch = "rec-before"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    b.send(resume_frame({ch: pos}))
    b.recv_all()
    sub(b, ch)
    publish(ch, "ev", '{"n":"after"}')
    b.recv_all()
    b.close()


def legacy():
    section("legacy channel_serials")
    ch = "rec-legacy"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    sub(b, ch)
    b.send(j({"event": "sockudo:resume", "data": j({"channel_serials": {ch: pos["serial"]}})}))
    b.recv_all()
    b.close()


def unknown_stream():
    section("unknown stream_id")
    ch = "rec-unknown"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    sub(b, ch)
    pos = dict(pos, stream_id="00000000-0000-4000-8000-000000000000")
    b.send(resume_frame({ch: pos}))
    b.recv_all()
    b.close()


def ahead():
    section("serial ahead of the head")
    ch = "rec-ahead"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    sub(b, ch)
    b.send(resume_frame({ch: dict(pos, serial=pos["serial"] + 100)}))
    b.recv_all()
    b.close()


def at_head():
    section("serial equal to the head (nothing missed)")
    ch = "rec-athead"
    pos = _disconnect_publish_reconnect(ch, n_gap=0)
    b = resumed_on("B", ch, pos)
    b.close()


def never_published():
    section("channel never published to (subscribed, and not subscribed)")
    b, _ = p2("B")
    frames = sub(b, "rec-never")
    b.send(resume_frame({"rec-never": {"stream_id": "00000000-0000-4000-8000-000000000000", "serial": 3,
                                       "last_message_id": "x"}}))
    b.recv_all()
    b.send(resume_frame({"rec-never-unsub": {"stream_id": "00000000-0000-4000-8000-000000000000", "serial": 3,
                                             "last_message_id": "x"}}))
    b.recv_all()
    pos = last_position(frames, "rec-never")
    if pos:
        b.send(resume_frame({"rec-never": pos}))
        b.recv_all()
    b.close()


def empty():
    section("empty positions")
    b, _ = p2("B")
    b.send(resume_frame({}))
    b.recv_all()
    b.send(j({"event": "sockudo:resume", "data": "{}"}))
    b.recv_all()
    b.send(j({"event": "sockudo:resume", "data": {}}))
    b.recv_all()
    b.send(j({"event": "sockudo:resume"}))
    b.recv_all()
    b.send(j({"event": "sockudo:resume", "data": "not json"}))
    b.recv_all()
    b.close()


def data_object():
    section("resume with data as an object (not a string)")
    ch = "rec-obj"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    sub(b, ch)
    b.send(resume_frame({ch: pos}, as_string=False))
    b.recv_all()
    b.close()


def pusher_prefix():
    section("pusher:resume on a protocol-2 socket")
    ch = "rec-pp2"
    pos = _disconnect_publish_reconnect(ch)
    b, _ = p2("B")
    sub(b, ch)
    b.send(resume_frame({ch: pos}, prefix="pusher"))
    b.recv_all()
    b.close()
    section("pusher:resume on a protocol-7 socket")
    ch = "rec-pp7"
    pos = _disconnect_publish_reconnect(ch)
    c, _ = p7("P7")
    sub(c, ch, prefix="pusher")
    c.send(resume_frame({ch: pos}, prefix="pusher"))
    c.recv_all()
    c.send(resume_frame({ch: pos}, prefix="sockudo"))
    c.recv_all()
    c.close()


def expired():
    section("serial older than max_buffer_size back (run with CONNECTION_RECOVERY_MAX_BUFFER_SIZE=5)")
    ch = "rec-expired"
    pos = _disconnect_publish_reconnect(ch, n_before=2, n_gap=8)
    b = resumed_on("B", ch, pos)
    section("gap exactly max_buffer_size (5) back")
    ch = "rec-exact5"
    pos = _disconnect_publish_reconnect(ch, n_before=2, n_gap=5)
    b2 = resumed_on("B2", ch, pos)
    b.close(); b2.close()


def disabled():
    section("recovery disabled (run without CONNECTION_RECOVERY_ENABLED)")
    ch = "rec-disabled"
    a, _ = p2("A")
    sub(a, ch)
    publish(ch, "ev", '{"n":1}')
    a.recv_all()
    a.send(resume_frame({ch: {"stream_id": "00000000-0000-4000-8000-000000000000", "serial": 1,
                              "last_message_id": "x"}}))
    a.recv_all()
    a.send(resume_frame({}))
    a.recv_all()
    a.close()


def client_events():
    section("client events on a private channel (needs SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true)")
    ch = "private-rec-client"
    a, sida = p2("A")
    b, sidb = p2("B")
    c, sidc = p7("P7")
    for ws, sid, prefix in ((a, sida, "sockudo"), (b, sidb, "sockudo"), (c, sidc, "pusher")):
        sig = hmac.new(SECRET.encode(), f"{sid}:{ch}".encode(), hashlib.sha256).hexdigest()
        sub(ws, ch, prefix=prefix, auth=f"{KEY}:{sig}")
    a.send(j({"event": "client-hello", "channel": ch, "data": {"x": 1}}))
    a.recv_all(); b.recv_all(); c.recv_all()
    c.send(j({"event": "client-hello", "channel": ch, "data": {"x": 2}}))
    a.recv_all(); b.recv_all(); c.recv_all()
    publish(ch, "ev", '{"n":1}')
    a.recv_all(); b.recv_all(); c.recv_all()
    a.close(); b.close(); c.close()


def pyclient():
    """sockudo-python 2.2.0 (run this scenario with /work/sockudo-venv/bin/python) through a TCP proxy that
    logs the WebSocket text frames both ways, drops every connection (no close frame) and, for 3 s while
    three events are published, refuses new connections (PY_REFUSE=1) or holds them unanswered, then lets
    the client reconnect. The proxy removes the
    client's Sec-WebSocket-Extensions header so that no frame is compressed."""
    import asyncio
    import threading
    from sockudo_python import SockudoClient, SockudoOptions, SockudoTransport

    section("sockudo-python 2.2.0 through a proxy, connection_recovery=True, proxy cut for 3 s"
            + (" (new connections refused during the cut)" if PY_REFUSE else " (new connections held during the cut)"))
    ch = "rec-py"
    state = {"accept": True, "conns": []}

    def parse(buf, out, tag):
        while True:
            if len(buf) < 2:
                return buf
            b1, b2 = buf[0], buf[1]
            n, i = b2 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return buf
                n, i = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return buf
                n, i = struct.unpack(">Q", buf[2:10])[0], 10
            masked = b2 & 0x80
            if masked:
                if len(buf) < i + 4:
                    return buf
                mask, i = buf[i:i + 4], i + 4
            if len(buf) < i + n:
                return buf
            payload = buf[i:i + n]
            if masked:
                payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
            op = b1 & 0x0F
            if op == 1:
                print(f"PY {tag} {payload.decode()}", flush=True)
            elif op == 8:
                print(f"PY {tag} [close frame {payload[:2].hex()}]", flush=True)
            buf = buf[i + n:]

    async def pipe(reader, writer, tag, strip_ext):
        buf, upgraded = b"", False
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not upgraded:
                    buf += data
                    if b"\r\n\r\n" not in buf:
                        continue
                    head, rest = buf.split(b"\r\n\r\n", 1)
                    lines = head.split(b"\r\n")
                    if strip_ext:
                        print(f"PY {tag} [handshake] {lines[0].decode()}", flush=True)
                        lines = [l for l in lines if not l.lower().startswith(b"sec-websocket-extensions")]
                    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
                    upgraded, buf = True, rest
                    buf = parse(buf, None, tag)
                else:
                    writer.write(data)
                    buf = parse(buf + data, None, tag)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(cr, cw):
        if not state["accept"]:
            if PY_REFUSE:
                cw.transport.abort()
                print("PY [proxy refused a connection]", flush=True)
                return
            print("PY [proxy holds a new connection until the cut ends]", flush=True)
            while not state["accept"]:
                await asyncio.sleep(0.05)
        sr, sw = await asyncio.open_connection("127.0.0.1", PORT)
        state["conns"].append((cw, sw))
        await asyncio.gather(pipe(cr, sw, "->", True), pipe(sr, cw, "<-", False))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pport = server.sockets[0].getsockname()[1]
        events = []
        client = SockudoClient(KEY, SockudoOptions(cluster="local", ws_host="127.0.0.1", ws_port=pport,
                                                   force_tls=False, enabled_transports=[SockudoTransport.WS],
                                                   connection_recovery=True))
        client.bind_global(lambda name, data: events.append((name, data)))
        await client.connect()
        chan = client.subscribe(ch)
        chan.bind_global(lambda name, data: events.append((ch, name, data)))
        await asyncio.sleep(1.0)
        for i in range(2):
            await asyncio.to_thread(publish, ch, "ev", j({"n": i + 1}))
        await asyncio.sleep(1.0)
        print("PY [proxy: cutting every connection; new ones wait 3 s]", flush=True)
        state["accept"] = False
        for cw, sw in state["conns"]:
            cw.transport.abort(); sw.transport.abort()
        state["conns"].clear()
        await asyncio.sleep(0.3)
        for i in range(3):
            await asyncio.to_thread(publish, ch, "ev", j({"n": i + 3}))
        await asyncio.sleep(2.7)
        state["accept"] = True
        print("PY [proxy: accepting again]", flush=True)
        await asyncio.sleep(6.0)
        await asyncio.to_thread(publish, ch, "ev", j({"n": 6}))
        await asyncio.sleep(1.0)
        print("PY events seen by the application, in order:")
        for e in events:
            print("PY   ", e)
        await client.disconnect()
        server.close()

    asyncio.run(main())


def live_vs_replay():
    section("live vs replayed bytes: C stays subscribed while A is away; then A's successor resumes")
    ch = "rec-live"
    c, _ = p2("C")
    sub(c, ch)
    pos = _disconnect_publish_reconnect(ch)
    c.recv_all()
    b = resumed_on("B", ch, pos)
    b.close(); c.close()


def idempotent():
    section("publish with message_id twice, same payload (idempotent retry)")
    ch = "rec-idem"
    a, _ = p2("A")
    sub(a, ch)
    publish(ch, "ev", '{"n":1}', {"message_id": "idem-1"})
    publish(ch, "ev", '{"n":1}', {"message_id": "idem-1"})
    a.recv_all()
    a.close()


def ttl():
    section("buffer TTL passed (run with CONNECTION_RECOVERY_BUFFER_TTL=4): wait 6 s after the gap, then resume")
    ch = "rec-ttl"
    pos = _disconnect_publish_reconnect(ch)
    time.sleep(6)
    b = resumed_on("B", ch, pos)
    b.close()


def multi():
    section("one resume naming three channels: ok (gap 3), unknown stream_id, ok (gap 1)")
    pos1 = _disconnect_publish_reconnect("rec-m1")
    pos2 = _disconnect_publish_reconnect("rec-m2", n_gap=1)
    pos3 = _disconnect_publish_reconnect("rec-m3", n_gap=1)
    b, _ = p2("B")
    for ch in ("rec-m1", "rec-m2", "rec-m3"):
        sub(b, ch)
    b.send(resume_frame({"rec-m1": pos1, "rec-m2": dict(pos2, stream_id="00000000-0000-4000-8000-000000000000"),
                         "rec-m3": pos3}))
    b.recv_all()
    b.close()


def key_order():
    section("key order of object data: HTTP publish and client event with keys not in sorted order")
    ch = "private-rec-order"
    a, sida = p2("A")
    b, sidb = p2("B")
    for ws, sid in ((a, sida), (b, sidb)):
        sig = hmac.new(SECRET.encode(), f"{sid}:{ch}".encode(), hashlib.sha256).hexdigest()
        sub(ws, ch, auth=f"{KEY}:{sig}")
    publish(ch, "ev", {"z": 1, "a": {"y": 2, "b": 3}, "m": [3, 1]})
    a.recv_all(); b.recv_all()
    a.send('{"event":"client-x","channel":"' + ch + '","data":{"z":1,"a":{"y":2,"b":3}}}')
    a.recv_all(); b.recv_all()
    a.close(); b.close()


SCEN = {"basic": basic, "escaping": escaping, "p7": p7_case, "resume": resume, "resume_before_sub": resume_before_sub,
        "legacy": legacy, "unknown_stream": unknown_stream, "ahead": ahead, "at_head": at_head,
        "never_published": never_published, "empty": empty, "data_object": data_object,
        "pusher_prefix": pusher_prefix, "expired": expired, "disabled": disabled, "client_events": client_events,
        "pyclient": pyclient, "live_vs_replay": live_vs_replay, "idempotent": idempotent, "ttl": ttl, "multi": multi, "key_order": key_order}

if __name__ == "__main__":
    for name in sys.argv[5:]:
        SCEN[name]()

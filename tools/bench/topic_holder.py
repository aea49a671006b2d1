#!/usr/bin/env python3
"""Holds many topic subscriptions on relay nodes, for tools/bench/nodes.sh.

    topic_holder.py TOKEN PREFIX N URL [URL ...]

Subscribes every URL (http://host:port) to the topics PREFIX-0 .. PREFIX-(N-1) over
WebSocket sessions of 100 topics each (the relay's default limits.max_topics_per_request,
which also caps the topics of one connection), so that every node listens to N topic
channels in Valkey. Prints "ready <seconds>" once every session got its `subscribed` reply,
then reads and discards deliveries (answering pings) until its standard input closes, and
prints how many deliveries it read. The standard library only: no WebSocket package to
install.
"""
import base64
import os
import selectors
import socket
import sys
import time

PER_FRAME = 100


def frame(opcode, payload):
    """A masked client frame (RFC 6455 5.2)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Session:
    def __init__(self, url, token):
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                sys.exit(f"{url}: closed during the WebSocket upgrade")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"{url}: upgrade refused: {head.decode(errors='replace')}")
        self.url = url
        self.subscribed = 0
        self.deliveries = 0

    def send_text(self, text):
        self.sock.sendall(frame(0x1, text.encode()))

    def read(self):
        """Reads what arrived; counts replies and deliveries. False when the relay closed."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        while len(self.buf) >= 2:
            opcode, n, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                n, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                n, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + n:
                break
            payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
            if opcode == 0x9:
                self.sock.sendall(frame(0xA, payload))
            elif opcode == 0x8:
                return False
            elif payload.startswith(b'{"type":"subscribed"'):
                self.subscribed += 1
            elif payload.startswith(b'{"type":"message"'):
                self.deliveries += 1
            elif payload.startswith(b'{"type":"error"'):
                sys.exit(f"{self.url}: {payload.decode()}")
        return True


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    token, prefix, count, urls = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    started = time.monotonic()
    topics = [f"{prefix}-{i}" for i in range(count)]
    frames = [topics[i : i + PER_FRAME] for i in range(0, count, PER_FRAME)]
    selector = selectors.DefaultSelector()
    sessions = []
    for url in urls:
        for batch in frames:
            s = Session(url, token)
            selector.register(s.sock, selectors.EVENT_READ, s)
            quoted = ",".join(f'"{t}"' for t in batch)
            s.send_text(f'{{"type":"subscribe","topics":[{quoted}]}}')
            sessions.append(s)
    while any(s.subscribed < 1 for s in sessions):
        for key, _ in selector.select(timeout=60):
            if not key.data.read():
                sys.exit(f"{key.data.url}: closed while subscribing")
    print(f"ready {time.monotonic() - started:.3f}", flush=True)
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                if not sys.stdin.readline():
                    print(f"deliveries {sum(s.deliveries for s in sessions)}", flush=True)
                    return
            elif not key.data.read():
                sys.exit(f"{key.data.url}: closed")


if __name__ == "__main__":
    main()

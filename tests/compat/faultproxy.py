"""A loopback HTTP proxy between the Python client and the relay that can lose the relay's
answer to a chosen request *after the relay acted on it* — the failure the client's
Idempotency-Key exists for ("502 after persist", or a connection lost mid-reply).

It only forwards and records; it never changes a request. It does not touch the relay
process or its storage.
"""

from __future__ import annotations

import enum
import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Connection-scoped headers are the proxy's own business on each hop.
HOP_BY_HOP = {"connection", "keep-alive", "host", "content-length", "transfer-encoding"}
UPSTREAM_TIMEOUT_S = 30


class Fault(enum.Enum):
    """What the client gets instead of the relay's answer."""

    BAD_GATEWAY = "502"  # a 502 from the proxy, as a load balancer would send
    DROPPED = "dropped"  # the connection closes without any response


@dataclass(frozen=True)
class Exchange:
    """One request as the relay saw it, and what the relay answered."""

    method: str
    path: str
    idempotency_key: str | None
    relay_status: int
    relay_body: bytes
    fault: Fault | None

    def relay_json(self) -> dict:
        return json.loads(self.relay_body)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._armed: dict[str, list[Fault]] = {}
        self._exchanges: list[Exchange] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, path: str, fault: Fault) -> None:
        """The next request for `path` reaches the relay, but its answer is replaced by `fault`."""
        with self._lock:
            self._armed.setdefault(path, []).append(fault)

    def exchanges(self, path: str | None = None) -> list[Exchange]:
        """What went through so far, in order; only requests for `path` if given."""
        with self._lock:
            return [e for e in self._exchanges if path is None or e.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            armed = self._armed.get(path)
            return armed.pop(0) if armed else None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, like the relay: requests.Session reuses its connections.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: pytest shows the recorded exchanges when it matters."""

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                content_type = resp.getheader("Content-Type", "application/json")
                status = resp.status
            finally:
                upstream.close()
            fault = proxy._take_fault(self.path)
            proxy._record(
                Exchange(self.command, self.path, self.headers.get("Idempotency-Key"), status, data, fault)
            )
            if fault is Fault.DROPPED:
                self.close_connection = True
                return
            if fault is Fault.BAD_GATEWAY:
                status, content_type = 502, "application/json"
                data = b'{"detail":"injected by the compatibility job\'s fault proxy"}'
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler

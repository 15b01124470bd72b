"""A small TCP proxy on loopback that misbehaves on demand, for Glance failure tests.

It forwards every connection to ``127.0.0.1:target`` unless a :class:`Rule`
matches the request line the client sends first (the test Glance
closes the connection after every response, as uWSGI and gunicorn's sync worker do, so
each connection carries one request).  A rule can:

* answer with an HTTP status of its own (``status=503``) and close;
* ``stall``: take the request and never answer (the client must time out);
* ``cut_after``: forward the request but drop both connections once that many
  bytes of it have passed (an upload broken mid-way);
* ``flip_at``: forward the request with the byte at that offset changed (bytes
  damaged on the way, which only a hash comparison notices);
* ``rate``: forward the request at most that many bytes per second (a slow
  link to one cloud).

Rules apply ``times`` times (None: always).  Threads only; stopped by
:meth:`TcpProxy.stop`, which closes every socket it opened.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Rule:
    method: str | None = None  #: match this HTTP method (None: any)
    path: str = ""  #: match when the request path contains this
    status: int | None = None
    stall: bool = False
    cut_after: int | None = None  #: bytes of the request (headers included) to forward
    flip_at: int | None = None  #: offset in the request (headers included) of a byte to change
    rate: int | None = None  #: bytes per second the request is forwarded at
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method is None or self.method == method) and self.path in path


@dataclass
class TcpProxy:
    target: int
    rules: list[Rule] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  #: "METHOD path" of every request
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    _close(client)
                    return
                head += chunk
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.rsplit(" ", 1)[0]
            with self._lock:
                self.seen.append(f"{method} {path}")
                rule = next((r for r in self.rules if r.matches(method, path)), None)
                if rule is not None:
                    rule.hits += 1
            if rule is not None and rule.status is not None:
                self._answer(client, rule.status)
                return
            if rule is not None and rule.stall:
                client.settimeout(0.2)
                while not self._stop.is_set():  # swallow the request, never answer
                    try:
                        if not client.recv(65536):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                _close(client)
                return
            upstream = self._track(socket.create_connection(("127.0.0.1", self.target)))
            limit = rule.cut_after if rule is not None else None
            flip = rule.flip_at if rule is not None else None
            rate = rule.rate if rule is not None else None
            back = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
            back.start()
            self._pump(client, upstream, limit, head, flip, rate)
        except OSError:
            _close(client)

    def _answer(self, client: socket.socket, status: int) -> None:
        body = f'{{"message": "proxy says {status}"}}'.encode()
        client.sendall(
            f"HTTP/1.1 {status} Proxy Failure\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        client.settimeout(0.5)
        with contextlib.suppress(OSError):  # let the client finish sending, then close
            while client.recv(65536):
                pass
        _close(client)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        limit: int | None,
        first: bytes = b"",
        flip: int | None = None,
        rate: int | None = None,
    ) -> None:
        sent = 0
        data = first
        try:
            while True:
                if data and flip is not None and sent <= flip < sent + len(data):
                    at = flip - sent
                    data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
                if data:
                    if limit is not None and sent + len(data) >= limit:
                        dst.sendall(data[: max(0, limit - sent)])
                        _close(src)
                        _close(dst)
                        return
                    dst.sendall(data)
                    sent += len(data)
                    if rate:
                        time.sleep(len(data) / rate)
                data = src.recv(65536)
                if not data:
                    break
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

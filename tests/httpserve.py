"""A real HTTP server on loopback for sync tests, with misbehaviours on demand.

Serves files from a dict (path → bytes), honours ``Range`` requests, and can
be told to cut a connection after some bytes, to stall, to drip the body or
the headers one byte at a time, to redirect, or to answer with an error — the
failures the sync must survive.  :class:`BlackHole` is a server that takes
connections and never answers.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    cut_after: int | None = None  #: close the connection after this many body bytes (once)
    stall: float = 0.0  #: seconds to sleep before each 64 KiB of body
    status: int | None = None  #: answer with this status instead
    ignore_range: bool = False
    location: str | None = None  #: with ``status``: the Location header (a redirect)
    drip: float = 0.0  #: seconds between single bytes of the body
    drip_headers: float = 0.0  #: seconds between single bytes of the status line and headers


@dataclass
class Site:
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)  #: header of each request
    port: int = 0
    scheme: str = "http"
    basic_auth: str | None = None  #: "user:password" required for *.list paths

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


def _drip(out, data: bytes, pause: float) -> None:
    """Send ``data`` one byte every ``pause`` seconds, until the client hangs up."""
    for byte in data:
        time.sleep(pause)
        try:
            out.write(bytes([byte]))
            out.flush()
        except OSError:
            return


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_PUT(self) -> None:  # an upload (job outputs): stored, then served like the rest
            length = int(self.headers.get("Content-Length") or 0)
            site.requests.append((self.path, None))
            site.files[self.path] = self.rfile.read(length)
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            site.requests.append((self.path, range_header))
            site.authorization.append(self.headers.get("Authorization"))
            if site.basic_auth is not None and self.path.endswith(".list"):
                wanted = "Basic " + base64.b64encode(site.basic_auth.encode()).decode()
                if self.headers.get("Authorization") != wanted:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="lists"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            data = site.files.get(self.path)
            how = site.behaviour.get(self.path, Behaviour())
            if how.drip_headers:
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
                _drip(self.wfile, head, how.drip_headers)
                return
            if how.status is not None:
                self.send_response(how.status)
                if how.location is not None:
                    self.send_header("Location", how.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if data is None:
                self.send_error(404)
                return
            start = 0
            if range_header and not how.ignore_range and range_header.startswith("bytes="):
                start = int(range_header[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if how.drip:
                _drip(self.wfile, body, how.drip)
                return
            sent = 0
            for offset in range(0, len(body), 65536):
                if how.stall:
                    time.sleep(how.stall)
                chunk = body[offset : offset + 65536]
                if how.cut_after is not None and sent + len(chunk) > how.cut_after:
                    self.wfile.write(chunk[: how.cut_after - sent])
                    how.cut_after = None  # only once
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)

    return Handler


class Server:
    """Context manager: start on a free loopback port, stop on exit."""

    def __init__(self, site: Site, tls: ssl.SSLContext | None = None) -> None:
        self.site = site
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            site.scheme = "https"
        self.httpd.daemon_threads = True
        site.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self.site

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BlackHole:
    """Context manager: a loopback port that accepts connections and never answers.

    The kernel completes the TCP handshake from the listen backlog, so a client
    connects, sends its request and waits for an answer that never comes — an
    endorser whose web server hangs.  The URL of any path works.
    """

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

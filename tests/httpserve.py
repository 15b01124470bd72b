"""A real HTTP server on loopback for sync tests, with misbehaviours on demand.

Serves files from a dict (path → bytes), honours ``Range`` requests, and can
be told to cut a connection after some bytes, to stall, or to answer with an
error — the failures the sync must survive.
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


@dataclass
class Site:
    files: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0
    scheme: str = "http"
    basic_auth: str | None = None  #: "user:password" required for *.list paths

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


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
            if how.status is not None:
                self.send_response(how.status)
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

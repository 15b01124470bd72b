"""An HTTP proxy on loopback in front of moto that answers chosen AWS calls with errors.

botocore keeps connections alive and sends many requests on one, so a TCP-level
proxy (``tests/tcpproxy.py``) cannot pick single calls; this one reads each
request, names its AWS operation — from the service in the signature's
credential scope, then EC2's ``Action``, EBS's path or S3's method — and either
forwards it to moto or answers as AWS would fail: throttling (EC2
``RequestLimitExceeded``, EBS ``ThrottlingException`` 429, S3 ``SlowDown``),
5xx, or EBS's ``ResourceNotFoundException`` for a snapshot just started.
A :class:`Fault` applies ``times`` times (None: always).  Threads only; stopped
by :meth:`FaultProxy.stop`.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_EBS = [
    ("POST", re.compile(r"/snapshots$"), "StartSnapshot"),
    ("PUT", re.compile(r"/snapshots/[^/]+/blocks/[0-9]+$"), "PutSnapshotBlock"),
    ("POST", re.compile(r"/snapshots/completion/[^/]+$"), "CompleteSnapshot"),
    ("GET", re.compile(r"/snapshots/[^/]+/blocks/[0-9]+$"), "GetSnapshotBlock"),
    ("GET", re.compile(r"/snapshots/[^/]+/blocks$"), "ListSnapshotBlocks"),
]
_S3 = {"PUT": "PutObject", "GET": "GetObject", "DELETE": "DeleteObject", "HEAD": "HeadObject"}


@dataclass
class Fault:
    operation: str  #: e.g. "RegisterImage", "PutSnapshotBlock", "PutObject"
    status: int = 503
    code: str = "ServiceUnavailable"
    times: int | None = 1
    hits: int = 0


@dataclass
class FaultProxy:
    target: str  #: moto's URL
    faults: list[Fault] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  #: the operation of every request

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def count(self, operation: str) -> int:
        return self.seen.count(operation)

    def pick(self, operation: str) -> Fault | None:
        with self._lock:
            self.seen.append(operation)
            for fault in self.faults:
                spent = fault.times is not None and fault.hits >= fault.times
                if fault.operation == operation and not spent:
                    fault.hits += 1
                    return fault
        return None


def operation(service: str, method: str, path: str, body: bytes) -> str:
    if service == "ec2":
        return parse_qs(body.decode("latin-1")).get("Action", ["?"])[0]
    if service == "ebs":
        for verb, pattern, name in _EBS:
            if verb == method and pattern.search(path):
                return name
        return f"ebs {method} {path}"
    return _S3.get(method, method) if service == "s3" else f"{service} {method}"


def error(service: str, status: int, code: str) -> tuple[bytes, dict[str, str]]:
    message = "injected by the test's fault proxy"
    if service == "ebs":
        body = f'{{"message": "{message}"}}'.encode()
        return body, {"Content-Type": "application/json", "x-amzn-ErrorType": code}
    if service == "s3":
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        return body, {"Content-Type": "application/xml"}
    body = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        "</Errors><RequestID>fault</RequestID></Response>"
    ).encode()
    return body, {"Content-Type": "text/xml"}


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    target = urlparse(proxy.target)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._body()
            scope = re.search(
                r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", self.headers.get("Authorization", "")
            )
            service = scope.group(1) if scope else "?"
            name = operation(service, self.command, self.path.split("?")[0], body)
            fault = proxy.pick(name)
            if fault is not None:
                data, headers = error(service, fault.status, fault.code)
                self._reply(fault.status, headers, data)
                return
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "connection")
                }
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                passed = {
                    k: v
                    for k, v in reply.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                self._reply(reply.status, passed, data)
            finally:
                upstream.close()

        def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler

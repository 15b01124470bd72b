"""Image downloads: the bytes exactly as the list describes them, resumed when cut.

:class:`SourceReader` is a file-like object over the download.  It counts and
hashes the bytes exactly as the endorser listed them (``hv:size``,
``sl:checksum:sha512``), refuses more bytes than listed, and survives a broken
connection by reopening with an HTTP ``Range`` request from where it stopped
(with back-off), so the decompressor and the store never notice.  Memory is
bounded by the chunk size whatever the image size.  Hashing runs on a second
thread (:class:`BackgroundHash`).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import requests

from glance_sync.transfer import CHUNK, TransferError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What the verified list says about an image's bytes."""

    identifier: str
    uri: str
    size: int
    sha512: str
    format: str | None = None


@dataclass(frozen=True)
class HttpSettings:
    timeout: float = 30.0  #: seconds to connect and between bytes
    retries: int = 5  #: reconnections after a broken transfer
    backoff: float = 1.0  #: first back-off in seconds, doubled each retry
    verify: bool | str = True  #: TLS: True, or a CA bundle / directory path


class BackgroundHash:
    """SHA-512 computed on another thread while the next bytes arrive and are written.

    hashlib releases the GIL for large updates, so hashing overlaps network and
    disk I/O on a second core; the queue is bounded (8 chunks), and so is memory.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha512()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()
        self._result: str | None = None

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        if self._result is None:
            if not self._thread.is_alive():
                raise TransferError("image hash was abandoned before the end of the download")
            self._queue.put(None)
            self._thread.join()
            self._result = self._hash.hexdigest()
        return self._result

    def close(self) -> None:
        """Stop the thread of an abandoned transfer."""
        if self._result is None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class SourceReader(io.RawIOBase):
    """The download as a readable stream, checked against the list, resumed on failure."""

    def __init__(
        self,
        source: Source,
        session: requests.Session,
        settings: HttpSettings,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.session = session
        self.settings = settings
        self.progress = progress
        self.received = 0
        self.digest = BackgroundHash()
        self._body: Any = None
        self._response: requests.Response | None = None
        self._eof = False
        self._open()

    # --- connection handling --------------------------------------------------------

    def _open(self) -> None:
        uri = self.source.uri
        if uri.startswith("file:"):
            path = unquote(urlparse(uri).path)
            try:
                stream = open(path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise TransferError(
                    f"image {self.source.identifier}: {uri}: {exc.strerror or exc}"
                ) from None
            stream.seek(self.received)
            self._body = stream
            return
        attempt = 0
        while True:
            try:
                self._body = self._request()
                return
            except TransferError:
                raise
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt = self._backoff(attempt, exc)

    def _request(self) -> Any:
        headers = {"Accept-Encoding": "identity"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        response = self.session.get(
            self.source.uri,
            stream=True,
            headers=headers,
            timeout=self.settings.timeout,
            verify=self.settings.verify,
        )
        if response.status_code >= 400:
            response.close()
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise requests.ConnectionError(f"HTTP {response.status_code}")
            raise TransferError(
                f"image {self.source.identifier}: {self.source.uri}: "
                f"HTTP {response.status_code} {response.reason}"
            )
        self._response = response
        body = response.raw
        # We asked for identity encoding, so urllib3's decoding layer has nothing to do; its
        # per-read copies halve loopback throughput.  Read http.client's response directly
        # (it still handles chunked transfer) when no Content-Encoding came back.
        direct = getattr(body, "_fp", None)
        if (
            direct is not None
            and not response.headers.get("Content-Encoding")
            and hasattr(direct, "readinto")
        ):
            body = direct
        if self.received and response.status_code != 206:
            # The server ignored Range: skip what we already have.
            LOG.info(
                "image %s: server does not resume, skipping %d bytes",
                self.source.identifier,
                self.received,
            )
            remaining = self.received
            while remaining:
                chunk = body.read(min(CHUNK, remaining))
                if not chunk:
                    raise requests.ConnectionError("short response while skipping")
                remaining -= len(chunk)
        return body

    def _backoff(self, attempt: int, exc: Exception) -> int:
        if attempt >= self.settings.retries:
            raise TransferError(
                f"image {self.source.identifier}: {self.source.uri}: gave up "
                f"after {attempt + 1} attempts ({exc})"
            ) from None
        delay = self.settings.backoff * (2**attempt)
        LOG.warning(
            "image %s: transfer interrupted at %d bytes (%s); retrying in %.1f s",
            self.source.identifier,
            self.received,
            exc,
            delay,
        )
        time.sleep(delay)
        return attempt + 1

    # --- reading ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def _reopen(self) -> None:
        self._close_body()
        self._open()

    def read_chunk(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes of the image, checked and hashed; b"" at the verified end.

        A broken or early-closed connection is resumed (HTTP Range) with
        back-off, at most ``retries`` times without receiving a byte in between.
        """
        if self._eof:
            return b""
        local = self.source.uri.startswith("file:")
        attempt = 0
        while True:
            try:
                chunk = self._body.read(size)
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                if local:
                    raise TransferError(
                        f"image {self.source.identifier}: read error: {exc}"
                    ) from None
                attempt = self._backoff(attempt, exc)
                self._reopen()
                continue
            except Exception as exc:  # urllib3's ProtocolError and friends
                if not type(exc).__module__.startswith("urllib3"):
                    raise
                attempt = self._backoff(attempt, exc)
                self._reopen()
                continue
            if chunk:
                break
            if self.received < self.source.size and not local:
                attempt = self._backoff(attempt, ConnectionError("connection closed early"))
                self._reopen()
                continue
            self._eof = True
            self._finish()
            return b""
        self.received += len(chunk)
        if self.received > self.source.size:
            raise TransferError(
                f"image {self.source.identifier}: more than the {self.source.size} "
                "bytes the list gives (hv:size)"
            )
        self.digest.update(chunk)
        if self.progress:
            self.progress(len(chunk))
        return chunk

    def readinto(self, buffer: Any) -> int:
        chunk = self.read_chunk(len(buffer))
        count = len(chunk)
        memoryview(buffer)[:count] = chunk
        return count

    def _finish(self) -> None:
        if self.received != self.source.size:
            raise TransferError(
                f"image {self.source.identifier}: got {self.received} bytes, the "
                f"list says {self.source.size} (hv:size)"
            )
        got = self.digest.hexdigest()
        if got != self.source.sha512.lower():
            raise TransferError(
                f"image {self.source.identifier}: SHA-512 {got[:16]}… differs "
                f"from the list's {self.source.sha512[:16]}… "
                "(sl:checksum:sha512)"
            )

    def drain(self) -> None:
        """Read to the end so that size and checksum are checked (OVA trailers)."""
        while self.read_chunk(CHUNK):
            pass

    def _close_body(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        elif self._body is not None:
            self._body.close()
        self._body = None

    def close(self) -> None:
        self._close_body()
        self.digest.close()
        super().close()

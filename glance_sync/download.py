"""Image downloads: the bytes exactly as the list describes them, resumed when cut.

:class:`SourceReader` is a file-like object over the download.  It counts and
hashes the bytes exactly as the endorser listed them (``hv:size``,
``sl:checksum:sha512``), refuses more bytes than listed, and survives a broken
connection by reopening with an HTTP ``Range`` request from where it stopped
(with back-off), so the decompressor and the store never notice.  Memory is
bounded by the chunk size whatever the image size.  Hashing runs on a second
thread (:class:`BackgroundHash`).

The transport rules are :mod:`glance_sync.httpclient`'s: http and https only,
checked redirects, and one total deadline for the whole download, resumes
included — ``image_deadline`` plus ``hv:size`` at ``min_rate`` — so a server
that drips the bytes cannot hold a download slot for longer than that.
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

from glance_sync.httpclient import Deadline, HttpSettings, check_url, get, short
from glance_sync.transfer import CHUNK
from vmtrust.errors import DeadlineExceeded, HttpError, TransferError
from vmtrust.safetext import redact

__all__ = ["BackgroundHash", "HttpSettings", "Source", "SourceReader", "check_uri"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What the verified list (or an OCI manifest) says about an image's bytes."""

    identifier: str
    uri: str
    size: int
    sha512: str  #: "" when the source gives none (an OCI layer: its sha256 is checked)
    format: str | None = None
    sha256: str = ""  #: hex digest the bytes must have (an OCI layer's digest)
    claim: str = "the list"  #: who gave the size, for messages
    size_key: str = " (hv:size)"


def check_uri(identifier: str, uri: str, *, local_list: bool) -> None:
    """TransferError unless the sync may download ``uri`` for an image of a list.

    http and https URIs with a usable host always; ``file:`` only from a list
    the site reads from its own disk (a ``file:`` subscription): a list served
    over the network must not make the sync read the site's own files.
    """
    if uri.startswith("oci://"):
        return  # fetched by the OCI subscription's registry client (glance_sync.oci.pull)
    if uri.startswith("file:"):
        if not local_list:
            raise TransferError(
                f"image {identifier}: {redact(uri)}: a file: URI in a list fetched over "
                "http(s) is refused"
            )
        return
    try:
        check_url(uri)
    except HttpError as exc:
        raise TransferError(f"image {identifier}: {exc}") from None


class BackgroundHash:
    """SHA-512 computed on another thread while the next bytes arrive and are written.

    hashlib releases the GIL for large updates, so hashing overlaps network and
    disk I/O on a second core; the queue is bounded (8 chunks), and so is memory.
    With ``sha256`` the same thread also computes the SHA-256 an OCI layer's
    digest names (:attr:`sha256_hex` once :meth:`hexdigest` returned).
    """

    def __init__(self, *, sha256: bool = False) -> None:
        self._hash = hashlib.sha512()
        self._sha256 = hashlib.sha256() if sha256 else None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()
        self._result: str | None = None
        self.sha256_hex = ""

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)
            if self._sha256 is not None:
                self._sha256.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        if self._result is None:
            if not self._thread.is_alive():
                raise TransferError("image hash was abandoned before the end of the download")
            self._queue.put(None)
            self._thread.join()
            self._result = self._hash.hexdigest()
            self.sha256_hex = self._sha256.hexdigest() if self._sha256 is not None else ""
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
        *,
        auth: Any = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.session = session
        self.settings = settings
        self.progress = progress
        self.auth = auth  #: a registry's credentials or token: sent to the URI's origin only
        self.received = 0
        self.digest = BackgroundHash(sha256=bool(source.sha256))
        self._body: Any = None
        self._response: requests.Response | None = None
        self._eof = False
        self._local = source.uri.startswith("file:")
        self.shown = redact(source.uri)  #: the URI as messages may show it
        self.deadline = None if self._local else Deadline(settings.image_deadline_for(source.size))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # --- connection handling --------------------------------------------------------

    def _fail(self, why: str) -> TransferError:
        return TransferError(f"image {self.source.identifier}: {self.shown}: {why}")

    def _open(self) -> None:
        if self._local:
            path = unquote(urlparse(self.source.uri).path)
            try:
                stream = open(path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise self._fail(exc.strerror or str(exc)) from None
            stream.seek(self.received)
            self._body = stream
            return
        attempt = 0
        while True:
            try:
                self._body = self._request()
                return
            except DeadlineExceeded:
                attempt = self._backoff(attempt, ConnectionError("deadline"))
            except HttpError as exc:  # a refused URL or redirect: asking again changes nothing
                raise TransferError(f"image {self.source.identifier}: {exc}") from None
            except requests.exceptions.SSLError as exc:
                # the watchdog cut the handshake (file: URIs have no deadline, nor TLS)
                if self.deadline is not None and self.deadline.expired:
                    raise self._deadline_error() from None
                raise self._fail(f"TLS verification failed ({short(exc)})") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt = self._backoff(attempt, exc)
            except requests.RequestException as exc:
                raise self._fail(f"{type(exc).__name__}: {short(exc)}") from None

    def _request(self) -> Any:
        assert self.deadline is not None
        headers = {"Accept-Encoding": "identity"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        response = get(
            self.session,
            self.source.uri,
            settings=self.settings,
            deadline=self.deadline,
            verify=self.settings.verify,
            headers=headers,
            auth=self.auth,
        )
        if response.status_code not in (200, 206):
            response.close()
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise requests.ConnectionError(f"HTTP {response.status_code}")
            raise self._fail(f"HTTP {response.status_code} {response.reason}")
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
        """Wait before the next attempt; TransferError when out of attempts or time."""
        delay = self.settings.backoff * (2**attempt)
        if self.deadline is not None and self.deadline.expired:
            raise self._deadline_error()
        if attempt >= self.settings.retries:
            raise self._fail(f"gave up after {attempt + 1} attempts ({short(exc)})")
        if self.deadline is not None and delay >= self.deadline.remaining():
            raise self._deadline_error()
        LOG.warning(
            "image %s: transfer interrupted at %d bytes (%s); retrying in %.1f s",
            self.source.identifier,
            self.received,
            short(exc),
            delay,
        )
        time.sleep(delay)
        return attempt + 1

    def _deadline_error(self) -> TransferError:
        assert self.deadline is not None
        return self._fail(
            f"not complete within its deadline of {self.deadline.seconds:.0f} s "
            f"([sync] image_deadline plus hv:size at min_rate; {self.received} of "
            f"{self.source.size} bytes received)"
        )

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
        local = self._local
        attempt = 0
        while True:
            try:
                chunk = self._body.read(size)
            except (requests.RequestException, OSError, http.client.HTTPException) as exc:
                if local:
                    raise self._fail(f"read error: {exc}") from None
                attempt = self._backoff(attempt, exc)
                self._reopen()
                continue
            except Exception as exc:  # urllib3's ProtocolError and friends
                if not type(exc).__module__.startswith("urllib3"):
                    raise
                attempt = self._backoff(attempt, exc)
                self._reopen()
                continue
            if chunk and self.deadline is not None and self.deadline.expired:
                chunk = b""  # what a cut connection left in the buffers does not count
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
                f"image {self.source.identifier}: more than the {self.source.size} bytes "
                f"{self.source.claim} gives{self.source.size_key}"
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
                f"image {self.source.identifier}: got {self.received} bytes, "
                f"{self.source.claim} says {self.source.size}{self.source.size_key}"
            )
        got = self.digest.hexdigest()
        if self.source.sha256 and self.digest.sha256_hex != self.source.sha256:
            raise TransferError(
                f"image {self.source.identifier}: the bytes served hash to sha256:"
                f"{self.digest.sha256_hex[:16]}…, not the digest sha256:"
                f"{self.source.sha256[:16]}… they were asked for; refused"
            )
        if self.source.sha512 and got != self.source.sha512.lower():
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
        if self.deadline is not None:  # first: the connection may go back to the pool
            self.deadline.close()
        self._close_body()
        self.digest.close()
        super().close()

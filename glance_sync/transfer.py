"""Streaming image transfer: download, check, unpack and hand bytes to a store in one pass.

The pipeline is pull-based, so that standard-library decompressors and
``tarfile`` can sit in the middle of it unchanged::

    HTTP response ─▶ SourceReader ─▶ (gzip | bz2 | xz | OVA member) ─▶ store
                     hashes what the       decompresses              hashes what it
                     list describes        on the fly                stores

:class:`SourceReader` is a file-like object over the download.  It counts and
hashes the bytes exactly as the endorser listed them (``hv:size``,
``sl:checksum:sha512``), refuses more bytes than listed, and survives a broken
connection by reopening with an HTTP ``Range`` request from where it stopped
(with back-off), so the decompressor and the store never notice.  Memory is
bounded by the chunk size whatever the image size.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import io
import logging
import lzma
import queue
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlparse

import requests

from vmtrust.errors import VmtrustError

LOG = logging.getLogger(__name__)
CHUNK = 1024 * 1024
DISK_SUFFIXES = (".vmdk", ".qcow2", ".img", ".raw", ".vdi", ".vhd")


class TransferError(VmtrustError):
    """An image could not be downloaded or does not match what the list says."""

    exit_code = 40
    rule = "transfer"


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


def normalise_format(value: str | None) -> tuple[str | None, str]:
    """Split ``hv:format`` into (compression, disk format), case-insensitively.

    ``"QCOW2"`` → (None, "qcow2"); ``"raw.gz"`` → ("gz", "raw"); ``"OVA"`` →
    (None, "ova").  A missing ``hv:format`` means a raw disk, as in HEPiX lists
    that predate the field; other names pass through lower-cased.
    """
    if not value:
        return None, "raw"
    text = value.strip().lower()
    compression = None
    for suffix in ("gz", "bz2", "xz"):
        if text.endswith("." + suffix):
            compression, text = suffix, text[: -len(suffix) - 1]
            break
    aliases = {"vpc": "vhd", "img": "raw", "ext3": "raw", "ext4": "raw"}
    return compression, aliases.get(text, text)


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


def open_disk(reader: SourceReader, fmt: str | None) -> tuple[IO[bytes], str]:
    """Wrap the download in the decompressor or OVA unpacker its format needs.

    Returns the stream of disk bytes and the disk format of those bytes.
    """
    compression, disk = normalise_format(fmt)
    if compression is None and disk not in ("ova", "tar"):
        return _Passthrough(reader), disk  # type: ignore[return-value]
    buffered = io.BufferedReader(reader, CHUNK)
    stream: IO[bytes] = buffered
    if compression == "gz":
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")
    elif compression == "bz2":
        stream = bz2.BZ2File(buffered, mode="rb")
    elif compression == "xz":
        stream = lzma.LZMAFile(buffered, mode="rb")  # noqa: SIM115 - returned
    if disk in ("ova", "tar"):
        return _ova_disk(stream, reader.source.identifier)
    return stream, disk


class _Passthrough:
    """Disk bytes that *are* the download: the reader's SHA-512 is the stored bytes' too.

    Hands the reader's chunks through without copying them and saves hashing
    every byte twice — the common case of QCOW2 or raw images stored as they are.
    """

    def __init__(self, reader: SourceReader) -> None:
        self.reader = reader

    def read(self, size: int = CHUNK) -> bytes:
        return self.reader.read_chunk(size)

    def source_digest(self) -> str:
        return self.reader.digest.hexdigest()

    def close(self) -> None:
        """The reader is closed by whoever opened it."""


def _ova_disk(stream: IO[bytes], identifier: str) -> tuple[IO[bytes], str]:
    """The first disk member of an OVA (a tar with an .ovf descriptor), streamed."""
    try:
        archive = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - streamed
        for member in archive:
            name = member.name.lower()
            if member.isfile() and name.endswith(DISK_SUFFIXES):
                extracted = archive.extractfile(member)
                if extracted is None:
                    break
                disk = name.rsplit(".", 1)[-1]
                return extracted, {"img": "raw", "vhd": "vpc"}.get(disk, disk)
    except tarfile.TarError as exc:
        raise TransferError(f"image {identifier}: not a valid OVA/tar archive ({exc})") from None
    raise TransferError(
        f"image {identifier}: OVA archive holds no disk image ({', '.join(DISK_SUFFIXES)})"
    )


@dataclass
class Tally:
    """Size and SHA-512 of the bytes a stream yielded, set when it is exhausted."""

    size: int = 0
    sha512: str = ""


def iter_chunks(stream: IO[bytes], identifier: str, tally: Tally) -> Iterator[bytes]:
    """Yield the disk bytes in chunks, for stores that pull (an HTTP upload body).

    The SHA-512 comes from the download hasher when nothing was unpacked (the
    bytes are the same), else it is computed here; both end up in ``tally``.
    """
    passthrough = getattr(stream, "source_digest", None)
    digest = hashlib.sha512()
    try:
        while chunk := stream.read(CHUNK):
            if passthrough is None:
                digest.update(chunk)
            tally.size += len(chunk)
            yield chunk
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError, zlib.error) as exc:
        raise TransferError(f"image {identifier}: cannot unpack ({exc})") from None
    tally.sha512 = passthrough() if passthrough is not None else digest.hexdigest()


def copy_stream(
    stream: IO[bytes], write: Callable[[bytes], Any], identifier: str
) -> tuple[int, str]:
    """Copy disk bytes to ``write`` in chunks; return (size, sha512) of what was written."""
    tally = Tally()
    for chunk in iter_chunks(stream, identifier, tally):
        write(chunk)
    return tally.size, tally.sha512

"""Disk bytes into an EBS snapshot with the EBS direct APIs, as raw, with no local copy.

The raw bytes of an image come from one of three places (:func:`raw_source`):

* a raw image as downloaded — the download itself, streamed (its size is
  ``hv:size``, known before the first byte, which ``StartSnapshot`` needs);
* a raw image whose size only shows once unpacked (``.gz``, an OVA member) —
  a *sparse* work file, since EBS needs the volume size first;
* qcow2, VMDK, VHD, VDI — the verified work file, exported read-only by
  ``qemu-nbd`` with its format given explicitly and backing files disabled, and
  copied as raw to a pipe by ``nbdcopy``: the raw image is never on disk.

:class:`BlockWriter` cuts the raw bytes into 512 KiB blocks (the last one
padded with zeros), skips blocks that are all zeros (a new snapshot reads
zeros there), puts the others with their SHA-256 from a bounded pool of
threads — so memory stays at a few blocks per thread whatever the image size —
and completes the snapshot with the number of blocks written and the LINEAR
aggregate checksum (SHA-256 over the blocks' digests in index order), which AWS
checks against what it received.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from glance_sync.convert import qemu_driver
from glance_sync.transfer import DiskStream, Tally, iter_chunks
from vmtrust.ec2client import call
from vmtrust.errors import EC2Error, TransferError

__all__ = [
    "BLOCK",
    "GIB",
    "NBD_FORMATS",
    "SNAPSHOT_TIMEOUT",
    "ZERO",
    "BlockWriter",
    "aggregate",
    "blocks",
    "checksum",
    "raw_source",
    "volume_gib",
]

LOG = logging.getLogger("vmtrust.ec2")
BLOCK = 512 * 1024  #: the EBS direct APIs' block size
ZERO = bytes(BLOCK)
GIB = 1024**3
#: Minutes without a block after which AWS cancels an unfinished snapshot (its default).
SNAPSHOT_TIMEOUT = 60
#: Disk formats streamed as raw through qemu-nbd (hv:format names → qemu drivers).
NBD_FORMATS = ("qcow2", "vmdk", "vhd", "vpc", "vdi", "qed")


def volume_gib(size: int) -> int:
    """The EBS volume size that holds ``size`` bytes (whole GiB, at least 1)."""
    return max(1, -(-size // GIB))


def blocks(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(index, block)`` for every 512 KiB block of ``chunks`` that is not all zeros.

    The last block is padded with zeros to 512 KiB (EBS takes whole blocks).
    """
    buffer = bytearray()
    index = 0
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= BLOCK:
            block = bytes(buffer[:BLOCK])
            del buffer[:BLOCK]
            if block != ZERO:
                yield index, block
            index += 1
    if buffer:
        block = bytes(buffer) + bytes(BLOCK - len(buffer))
        if block != ZERO:
            yield index, block


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def aggregate(digests: dict[int, bytes]) -> str:
    """The LINEAR aggregate: SHA-256 over the raw block digests in index order, base64."""
    joined = b"".join(digests[index] for index in sorted(digests))
    return base64.b64encode(hashlib.sha256(joined).digest()).decode("ascii")


class BlockWriter:
    """One EBS snapshot being written: bounded parallel puts, then completion.

    Use :meth:`start`, :meth:`put` for each block (it blocks while ``2 ×
    threads`` puts are in flight), then :meth:`complete`; :meth:`abort` stops
    an unfinished one.  The first failed put fails the next call.
    """

    def __init__(
        self, ebs: Any, identifier: str, *, threads: int = 8, not_found_wait: float = 120.0
    ) -> None:
        self.ebs = ebs
        self.identifier = identifier
        self.threads = threads
        #: Seconds to keep retrying "snapshot not found" right after StartSnapshot.
        self.not_found_wait = not_found_wait
        self.snapshot_id = ""
        self.digests: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ebs-put")
        self._slots = threading.BoundedSemaphore(threads * 2)
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        self._started = 0.0

    def start(self, size: int, tags: list[dict[str, str]], description: str) -> str:
        reply = call(
            self.ebs,
            "StartSnapshot",
            what=f"image {self.identifier}",
            VolumeSize=volume_gib(size),
            Tags=tags,
            Description=description[:255],
            ClientToken=str(uuid.uuid4()),
            Timeout=SNAPSHOT_TIMEOUT,
        )
        assert reply is not None
        self.snapshot_id = reply["SnapshotId"]
        self._started = time.monotonic()
        if reply.get("BlockSize") != BLOCK:
            raise EC2Error(
                f"image {self.identifier}: EBS reports {reply.get('BlockSize')}-byte blocks for "
                f"{self.snapshot_id}, vmtrust writes {BLOCK}"
            )
        return self.snapshot_id

    def put(self, index: int, block: bytes) -> None:
        self._check()
        self._slots.acquire()
        self._pool.submit(self._put, index, block).add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        with self._lock:
            error = None if future.cancelled() else future.exception()
            if error is not None and self._failed is None:
                self._failed = error
        self._slots.release()

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _put(self, index: int, block: bytes) -> None:
        if self._failed is not None:
            return  # the upload is failing: do not send more
        raw = hashlib.sha256(block).digest()
        delay = 0.5
        while True:
            reply = call(
                self.ebs,
                "PutSnapshotBlock",
                what=f"image {self.identifier}: block {index} of {self.snapshot_id}",
                tolerate=("ResourceNotFoundException",),
                SnapshotId=self.snapshot_id,
                BlockIndex=index,
                BlockData=block,
                DataLength=BLOCK,
                Checksum=base64.b64encode(raw).decode("ascii"),
                ChecksumAlgorithm="SHA256",
            )
            if reply is not None:
                break
            # Right after StartSnapshot, AWS may not know the snapshot yet for a while.
            if time.monotonic() - self._started > self.not_found_wait:
                raise EC2Error(
                    f"image {self.identifier}: EBS does not find snapshot {self.snapshot_id} "
                    f"{self.not_found_wait:g} s after starting it"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        with self._lock:
            self.digests[index] = raw

    def complete(self) -> int:
        """Wait for every put, then CompleteSnapshot; return the number of blocks written."""
        self._pool.shutdown(wait=True)
        self._check()
        params: dict[str, Any] = {"ChangedBlocksCount": len(self.digests)}
        if self.digests:
            params.update(
                Checksum=aggregate(self.digests),
                ChecksumAlgorithm="SHA256",
                ChecksumAggregationMethod="LINEAR",
            )
        reply = call(
            self.ebs,
            "CompleteSnapshot",
            what=f"image {self.identifier}",
            SnapshotId=self.snapshot_id,
            **params,
        )
        assert reply is not None
        if reply.get("Status") == "error":
            raise EC2Error(f"image {self.identifier}: EBS refused snapshot {self.snapshot_id}")
        return len(self.digests)

    def abort(self) -> None:
        """Stop sending: queued puts are dropped, running ones finish."""
        if self._failed is None:
            self._failed = EC2Error(f"image {self.identifier}: upload abandoned")
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- where the raw bytes come from ------------------------------------------------------


@contextlib.contextmanager
def raw_source(
    stream: DiskStream, disk_format: str, *, direct_size: int | None, workdir: Path, identifier: str
) -> Iterator[tuple[int, Iterator[bytes], Tally]]:
    """``(size, chunks, tally)`` of the raw disk; ``tally`` holds size and SHA-512 at the end.

    ``direct_size`` is the raw size when ``stream`` is the download itself (a
    raw image, neither compressed nor archived): then nothing touches the disk.
    """
    if disk_format == "raw" and direct_size is not None:
        tally = Tally()
        yield direct_size, iter_chunks(stream, identifier, tally), tally
        return
    workdir.mkdir(parents=True, exist_ok=True)
    work = workdir / f"{uuid.uuid4().hex}.ec2"  # list data never becomes a file name
    try:
        if disk_format == "raw":
            tally = _write_sparse(stream, work, identifier)
            with open(work, "rb") as raw:
                yield tally.size, _read(raw), tally
            return
        if disk_format not in NBD_FORMATS:
            raise TransferError(
                f"image {identifier}: the EC2 store cannot read disk format {disk_format} "
                f"(raw, {', '.join(NBD_FORMATS)})"
            )
        with open(work, "wb") as out:
            for chunk in iter_chunks(stream, identifier, Tally()):
                out.write(chunk)
        # The work file is now the verified download (a mismatch raised while reading it),
        # and inspected: the service hands every store an InspectedStream, whose end raises
        # when the disk is not of the declared format, has a backing or data file, or VMDK
        # extents outside it — so qemu-nbd never opens a refused disk.
        inspection = getattr(stream, "inspection", None)
        if inspection is None or not inspection.done:
            raise TransferError(f"image {identifier}: not inspected to its end; not stored")
        with _nbd_raw(work, qemu_driver(disk_format), identifier) as (size, raw):
            tally = Tally()
            yield size, iter_chunks(raw, identifier, tally), tally
    finally:
        work.unlink(missing_ok=True)


def _read(raw: DiskStream) -> Iterator[bytes]:
    while chunk := raw.read(1024 * 1024):
        yield chunk


def _write_sparse(stream: DiskStream, path: Path, identifier: str) -> Tally:
    """Unpacked raw bytes into a sparse file (zero blocks are holes); their size and SHA-512."""
    tally = Tally()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for index, block in blocks(iter_chunks(stream, identifier, tally)):
            os.pwrite(fd, block, index * BLOCK)
        os.ftruncate(fd, tally.size)  # also cuts the last block's padding
    except OSError as exc:
        raise TransferError(f"image {identifier}: work file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return tally


def _tool(name: str, identifier: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "qemu-utils" if name == "qemu-nbd" else "libnbd-bin"
        raise TransferError(
            f"image {identifier}: the EC2 store needs {name} for non-raw images "
            f"(install the {package} package)"
        )
    return path


@contextlib.contextmanager
def _nbd_raw(path: Path, driver: str, identifier: str) -> Iterator[tuple[int, IO[bytes]]]:
    """The virtual disk of ``path`` as raw bytes on a pipe: ``(virtual size, stream)``.

    ``qemu-nbd`` opens only ``path``, read-only, as ``driver`` (never probed),
    with its backing file disabled; ``nbdcopy`` writes the raw disk to a pipe.
    """
    qemu_nbd, nbdinfo, nbdcopy = (_tool(n, identifier) for n in ("qemu-nbd", "nbdinfo", "nbdcopy"))
    spec = {"driver": driver, "backing": None, "file": {"driver": "file", "filename": str(path)}}
    server = ["[", qemu_nbd, "--read-only", "json:" + json.dumps(spec), "]"]
    info = subprocess.run(
        [nbdinfo, "--size", "--", *server], capture_output=True, text=True, check=False
    )
    if info.returncode != 0 or not info.stdout.strip().isdigit():
        raise TransferError(f"image {identifier}: cannot read it as {driver}: {_why(info.stderr)}")
    size = int(info.stdout.strip())
    errors = path.with_suffix(".err")
    with open(errors, "w+") as err:
        copy = subprocess.Popen([nbdcopy, "--", *server, "-"], stdout=subprocess.PIPE, stderr=err)
        assert copy.stdout is not None
        try:
            yield size, copy.stdout
            copy.stdout.close()
            if copy.wait() != 0:
                err.seek(0)
                raise TransferError(
                    f"image {identifier}: reading it as {driver} failed: {_why(err.read())}"
                )
        finally:
            if copy.poll() is None:
                copy.kill()
                copy.wait()
            errors.unlink(missing_ok=True)


def _why(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("qemu-nbd:"):
            return line.removeprefix("qemu-nbd:").strip()[:200]
    return (lines[-1] if lines else "failed")[:200]

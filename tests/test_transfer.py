"""The transfer pipeline: checks against the list, unpacking on the fly, and hooks."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import threading
import time
from pathlib import Path

import hostile_images as hostile
import pytest
import requests
from hostile_images import needs_qemu_img
from httpserve import Server, Site

from glance_sync import hooks
from glance_sync.download import HttpSettings, Source, SourceReader
from glance_sync.inspection import inspect_stream
from glance_sync.plan import Held
from glance_sync.transfer import (
    CHUNK,
    CHUNKED_PIECE,
    Tally,
    copy_stream,
    iter_chunks,
    read_ahead,
    sized,
    upload_chunks,
)
from glance_sync.unpack import Bound, normalise_format, open_disk
from vmtrust.errors import TransferError

DISK = os.urandom(700_000)
NO_BOUND = Bound(1 << 40, "test")


@pytest.fixture(scope="module")
def disks(tmp_path_factory) -> dict[str, bytes]:
    """A disk of each kind, made by qemu-img where the format has a header."""
    work = tmp_path_factory.mktemp("disks")
    return {"raw": DISK, "qcow2": hostile.qcow2(work), "vmdk": hostile.vmdk(work)}


def fetch(
    tmp_path: Path,
    payload: bytes,
    fmt: str | None,
    *,
    size: int | None = None,
    sha: str | None = None,
    bound: Bound = NO_BOUND,
) -> tuple[bytes, str]:
    """The pipeline of a sync pass without the store: download, unpack, inspect."""
    path = tmp_path / "image.bin"
    path.write_bytes(payload)
    source = Source(
        "img",
        path.as_uri(),
        len(payload) if size is None else size,
        sha or hashlib.sha512(payload).hexdigest(),
        fmt,
    )
    reader = SourceReader(source, requests.Session(), HttpSettings())
    try:
        stream, disk_format = open_disk(reader, fmt, bound)
        out = io.BytesIO()
        copy_stream(inspect_stream(stream, disk_format, "img"), out.write, "img")
        reader.drain()
    finally:
        reader.close()
    return out.getvalue(), disk_format


@needs_qemu_img
@pytest.mark.parametrize(
    ("fmt", "pack", "expected_format"),
    [
        ("QCOW2", lambda d: d, "qcow2"),
        ("raw.gz", gzip.compress, "raw"),
        ("RAW.BZ2", bz2.compress, "raw"),
        ("qcow2.xz", lzma.compress, "qcow2"),
        ("OVA", lambda d: hostile.ova([("disk1.vmdk", d)]), "vmdk"),
        ("ova.gz", lambda d: gzip.compress(hostile.ova([("disk1.vmdk", d)])), "vmdk"),
        (None, lambda d: d, "raw"),
    ],
)
def test_formats_are_unpacked_on_the_fly(tmp_path, disks, fmt, pack, expected_format):
    disk = disks[expected_format]
    data, disk_format = fetch(tmp_path, pack(disk), fmt)
    assert data == disk and disk_format == expected_format


def test_normalise_format_is_case_insensitive():
    assert normalise_format("Raw.GZ") == ("gz", "raw")
    assert normalise_format("vpc.gz") == ("gz", "vhd")
    assert normalise_format("  QCOW2 ") == (None, "qcow2")


def test_wrong_checksum_and_wrong_size_are_refused(tmp_path):
    with pytest.raises(TransferError, match="SHA-512"):
        fetch(tmp_path, DISK, "RAW", sha="0" * 128)
    with pytest.raises(TransferError, match="more than the 10 bytes"):
        fetch(tmp_path, DISK, "RAW", size=10)
    with pytest.raises(TransferError, match="hv:size"):
        fetch(tmp_path, DISK, "RAW", size=len(DISK) + 5)


def test_checksum_of_ova_trailer_is_checked_too(tmp_path):
    payload = hostile.ova([("disk1.img", DISK)]) + bytes(512)
    with pytest.raises(TransferError, match="SHA-512"):
        fetch(tmp_path, payload, "OVA", sha=hashlib.sha512(payload[:-1]).hexdigest())


def test_ova_without_a_disk_and_corrupt_gzip_are_clear_errors(tmp_path):
    with pytest.raises(TransferError, match="names no disk"):
        fetch(tmp_path, hostile.tar_bytes([hostile.member("a.ovf", b"<Envelope/>")]), "OVA")
    with pytest.raises(TransferError, match="cannot unpack"):
        fetch(tmp_path, b"\x1f\x8b\x08\x00garbage" * 10, "raw.gz")


def test_http_error_is_named_and_not_retried(tmp_path):
    with Server(Site()) as site:
        source = Source("img", site.url("/nope.img"), 1, "0" * 128)
        with pytest.raises(TransferError, match="HTTP 404"):
            SourceReader(source, requests.Session(), HttpSettings(retries=3, backoff=0.01))
        assert len(site.requests) == 1


def test_server_ignoring_range_is_handled_by_skipping(tmp_path):
    from httpserve import Behaviour

    with Server(Site()) as site:
        site.files["/d.img"] = DISK
        site.behaviour["/d.img"] = Behaviour(cut_after=100_000, ignore_range=True)
        source = Source("img", site.url("/d.img"), len(DISK), hashlib.sha512(DISK).hexdigest())
        reader = SourceReader(source, requests.Session(), HttpSettings(backoff=0.01))
        out = io.BytesIO()
        copy_stream(io.BufferedReader(reader), out.write, "img")
        reader.close()
    assert out.getvalue() == DISK


def test_hook_gets_vmcatcher_environment(tmp_path, pki):
    from conftest import list_document

    from vmtrust.imagelist import validate

    lst = validate(list_document(pki.endorser))
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\nenv | grep VMCATCHER_ > {tmp_path}/env.txt\nexit 3\n")
    script.chmod(0o755)
    held = Held(store_id="x/1", record=None, seal_ok=True, location="/store/x/1.img")
    status = hooks.run(script, "AvailablePostfix", lst.images[0], lst, held)
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines())
    assert status == 3
    assert env["VMCATCHER_EVENT_TYPE"] == "AvailablePostfix"
    assert env["VMCATCHER_EVENT_DC_IDENTIFIER"] == lst.images[0].identifier
    assert env["VMCATCHER_EVENT_HV_SIZE"] == "20"
    assert env["VMCATCHER_EVENT_IL_DC_IDENTIFIER"] == lst.identifier
    assert env["VMCATCHER_EVENT_VO"] == "vo.example.org"
    assert env["VMCATCHER_EVENT_FILENAME"] == "/store/x/1.img"
    assert "VMCATCHER_EVENT_SL_COMMENTS" not in env  # empty values are not exported


def test_a_server_that_keeps_cutting_without_progress_is_given_up_after_the_retries():
    from httpserve import Behaviour

    with Server(Site()) as site:
        site.files["/d.img"] = DISK

        class Always(Behaviour):
            @property
            def cut_after(self):  # every response stops before the first byte
                return 0

            @cut_after.setter
            def cut_after(self, value):
                pass

        site.behaviour["/d.img"] = Always()
        source = Source("img", site.url("/d.img"), len(DISK), hashlib.sha512(DISK).hexdigest())
        reader = SourceReader(source, requests.Session(), HttpSettings(retries=3, backoff=0.01))
        with pytest.raises(TransferError, match="gave up after 4 attempts"):
            reader.drain()
        reader.close()
        assert len(site.requests) == 4


# --- write-behind: the kernel writes the image while it is still arriving ---------------


def test_write_behind_writes_every_byte_and_advises_the_kernel_as_it_goes(tmp_path, monkeypatch):
    from glance_sync.transfer import write_behind

    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, how: advised.append(how) or real(fd, off, n, how)
    )
    chunks = [os.urandom(1000) for _ in range(25)]
    with open(tmp_path / "img", "wb") as out:
        write = write_behind(out, every=4096)
        for chunk in chunks:
            write(chunk)
        assert os.path.getsize(tmp_path / "img") >= 20 * 1000  # flushed as it went
    assert (tmp_path / "img").read_bytes() == b"".join(chunks)
    assert advised == [os.POSIX_FADV_DONTNEED] * 5  # once per 4096 bytes written


def test_write_behind_refused_advice_stops_advising_and_loses_nothing(tmp_path, monkeypatch):
    from glance_sync.transfer import write_behind

    calls = []

    def refuse(*args):
        calls.append(args)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    with open(tmp_path / "img", "wb") as out:
        write = write_behind(out, every=10)
        for _ in range(10):
            write(b"x" * 7)
    assert (tmp_path / "img").read_bytes() == b"x" * 70
    assert len(calls) == 1


# --- read-ahead: the download runs while the upload sends ------------------------------------


def test_read_ahead_yields_every_chunk_in_order_and_hashes_all_of_them():
    data = os.urandom(5 * 1024 * 1024 + 17)
    tally = Tally()
    got = b"".join(read_ahead(iter_chunks(io.BytesIO(data), "img", tally), depth=2))
    assert got == data
    assert tally.size == len(data) and tally.sha512 == hashlib.sha512(data).hexdigest()


def test_read_ahead_runs_ahead_by_at_most_its_depth():
    produced = []
    three = threading.Event()

    def source():
        for n in range(10):
            produced.append(n)
            if len(produced) == 4:  # depth 3 in the queue, the 4th waiting for room
                three.set()
            yield bytes([n])

    chunks = read_ahead(source(), depth=3)
    assert next(chunks) == b"\x00"  # the thread is started by the first read
    assert three.wait(5)
    time.sleep(0.2)  # room for a producer that would not stop
    assert len(produced) <= 5
    assert b"".join(chunks) == bytes(range(1, 10))


def test_read_ahead_raises_the_producers_error_after_the_chunks_before_it():
    def source():
        yield b"a"
        yield b"b"
        raise TransferError("image img: cannot unpack (broken)")

    got = []
    with pytest.raises(TransferError, match="cannot unpack"):
        for chunk in read_ahead(source()):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_closing_read_ahead_early_stops_the_producer_and_closes_its_source():
    closed = threading.Event()
    reads = []

    def source():
        try:
            for n in range(1000):
                reads.append(n)
                yield b"x" * 1024
        finally:
            closed.set()

    chunks = read_ahead(source(), depth=2)
    next(chunks)
    chunks.close()  # what requests does when the upload fails
    assert closed.is_set()  # closed before close() returned: nobody reads the stream now
    assert len(reads) < 10
    assert not any(t.name == "vmtrust-read-ahead" for t in threading.enumerate())


def test_an_upload_of_the_download_as_it_is_announces_its_length(tmp_path):
    """The passed-through download says how many bytes it yields (hv:size, enforced), so
    a store's HTTP body carries a Content-Length; unpacked bytes go chunked."""
    import gzip as gz

    from glance_sync.transfer import sized

    with Server(Site(files={"/d.raw": DISK, "/d.raw.gz": gz.compress(DISK)})) as site:
        for path, fmt, length in (("/d.raw", "raw", len(DISK)), ("/d.raw.gz", "raw.gz", None)):
            data = site.files[path]
            source = Source("img", site.url(path), len(data), hashlib.sha512(data).hexdigest())
            reader = SourceReader(source, requests.Session(), HttpSettings(timeout=5))
            try:
                disk, _ = open_disk(reader, fmt, NO_BOUND)
                stream = inspect_stream(disk, "raw", "img")
                body = sized(iter_chunks(stream, "img", Tally()), stream)
                assert (len(body) if length else None) == length  # type: ignore[arg-type]
                assert hasattr(body, "__len__") == (length is not None)
                assert b"".join(body) == DISK
            finally:
                reader.close()


def test_a_chunked_body_is_sent_in_pieces_a_uwsgi_glance_takes():
    """uWSGI (Glance's usual server) answers 500 to an HTTP chunk of 1 MiB or more by
    default: a body of unknown length goes in pieces of at most CHUNKED_PIECE bytes, the
    same bytes in the same order; closing it (a failed upload) closes what feeds it."""
    from glance_sync.transfer import CHUNK, CHUNKED_PIECE, read_ahead, sized

    parts = [bytes([n]) * size for n, size in enumerate((CHUNK, 10, CHUNKED_PIECE + 1, 0, 3))]
    body = sized(iter(parts), object())
    pieces = [bytes(piece) for piece in body]
    assert max(len(piece) for piece in pieces) <= CHUNKED_PIECE < CHUNK
    assert b"".join(pieces) == b"".join(parts)

    def endless():
        while True:
            yield b"x" * CHUNK

    body = sized(read_ahead(endless()), object())
    next(iter(body))
    body.close()  # type: ignore[union-attr]
    assert not any(t.name == "vmtrust-read-ahead" for t in threading.enumerate())


def test_a_chunked_upload_body_comes_in_pieces_uwsgi_accepts():
    """Glance under uWSGI refuses a chunk that does not fit its 1 MiB chunked-input buffer
    with its framing (HTTP 500): a body of unknown length is cut into smaller pieces, the
    same bytes in the same order; one of known length goes whole (Content-Length)."""
    data = [os.urandom(CHUNK), b"", os.urandom(100), os.urandom(CHUNK + 7)]
    pieces = list(sized(iter(data), object()))
    assert max(len(p) for p in pieces) <= CHUNKED_PIECE < CHUNK
    assert b"".join(bytes(p) for p in pieces) == b"".join(data)

    class Known:
        expected_size = 2 * CHUNK + 107

    body = sized(iter(data), Known())
    assert len(body) == 2 * CHUNK + 107 and list(body) == data


def test_a_fan_out_branch_is_uploaded_without_a_read_ahead_thread(tmp_path: Path):
    """A branch reads the tee's memory ring: a read-ahead per target would only hold 8 MiB
    more each (measured: 40 MiB of the fan-out's peak memory with 4 targets) and a thread."""
    from glance_sync.fanout import Tee

    data = os.urandom(12 * CHUNK + 5)  # more than a read-ahead holds: its thread waits

    def ahead_threads() -> int:
        return sum(t.name.startswith("vmtrust-read-ahead") for t in threading.enumerate())

    tee = Tee(tmp_path, "img", buffer=16 * CHUNK)
    branch = tee.branch("t")
    for start in range(0, len(data), CHUNK):
        tee.feed(data[start : start + CHUNK])
    tee.end(hashlib.sha512(data).hexdigest())
    plain = io.BytesIO(data)
    for stream, threads in ((plain, 1), (branch, 0)):
        tally = Tally()
        chunks = upload_chunks(stream, "img", tally)  # type: ignore[arg-type]
        first = next(chunks)
        assert ahead_threads() == threads
        assert first + b"".join(chunks) == data and tally.size == len(data)
    tee.close()

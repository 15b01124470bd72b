"""The tee behind fan-out (glance_sync/fanout.py): real threads, real spool files.

One producer, several readers at different speeds: nobody waits for the slowest,
memory stays at the buffer, a laggard reads the spool, an error or an abandoned
transfer reaches every reader, and the end of stream comes only once verified.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from glance_sync.fanout import NoReaders, Tee
from vmtrust.errors import TransferError

MIB = 1024 * 1024


def chunks(count: int, size: int = MIB) -> list[bytes]:
    return [os.urandom(16) * (size // 16) for _ in range(count)]


def reader(branch, out: list, pause: float = 0.0, stop_after: int | None = None):
    def run() -> None:
        digest = hashlib.sha512()
        try:
            while chunk := branch.read(MIB):
                digest.update(chunk)
                if pause:
                    time.sleep(pause)
                if stop_after is not None and branch.offset >= stop_after:
                    branch.detach()
                    out.append("stopped")
                    return
            out.append(digest.hexdigest())
        except TransferError as exc:
            out.append(exc)
        finally:
            branch.detach()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_slow_reader_is_spooled_and_never_stalls_the_fast_one(tmp_path: Path):
    data = chunks(40)
    tee = Tee(tmp_path / "work", "img", buffer=4 * MIB)
    fast, slow = tee.branch("fast"), tee.branch("slow")
    gate = threading.Event()
    fast_out: list = []
    slow_out: list = []

    def slow_run() -> None:  # reads one chunk, then waits until the producer is done
        first = slow.read(MIB)
        gate.wait(30)
        digest = hashlib.sha512(first)
        while chunk := slow.read(MIB):
            digest.update(chunk)
        slow_out.append(digest.hexdigest())

    threads = [reader(fast, fast_out), threading.Thread(target=slow_run)]
    threads[1].start()
    for chunk in data:
        tee.feed(chunk)  # would block here if the producer waited for the slow reader
    whole = hashlib.sha512(b"".join(data)).hexdigest()
    tee.end(whole)
    threads[0].join(30)
    assert fast_out == [whole]  # the fast reader finished while the slow one still waits
    assert tee.spooled >= 35 * MIB and tee.peak_ring <= 5 * MIB
    gate.set()
    threads[1].join(30)
    assert slow_out == [whole]
    spools = list((tmp_path / "work").iterdir())
    assert len(spools) == 1 and spools[0].stat().st_mode & 0o777 == 0o600
    tee.close()
    assert list((tmp_path / "work").iterdir()) == []


def test_readers_that_keep_up_need_no_spool(tmp_path: Path):
    tee = Tee(tmp_path, "img", buffer=64 * MIB)
    outs: list[list] = [[], [], []]
    threads = [reader(tee.branch(str(i)), outs[i]) for i in range(3)]
    data = chunks(20)
    for chunk in data:
        tee.feed(chunk)
    tee.end("x")
    for thread in threads:
        thread.join(30)
    whole = hashlib.sha512(b"".join(data)).hexdigest()
    assert outs == [[whole]] * 3 and tee.spooled == 0
    assert list(tmp_path.iterdir()) == []


def test_the_end_of_stream_waits_for_the_verification(tmp_path: Path):
    tee = Tee(tmp_path, "img")
    branch = tee.branch("a")
    tee.feed(b"x" * 100)
    assert branch.read(MIB) == b"x" * 100
    got: list = []
    thread = threading.Thread(target=lambda: got.append(branch.read(MIB)))
    thread.start()
    time.sleep(0.3)
    assert got == []  # every byte read, but not verified yet: no end of stream
    tee.end("digest")
    thread.join(10)
    assert got == [b""] and branch.source_digest() == "digest"


def test_a_failed_download_reaches_every_reader_as_its_error(tmp_path: Path):
    tee = Tee(tmp_path, "img", buffer=MIB)
    outs: list[list] = [[], []]
    threads = [reader(tee.branch("a"), outs[0]), reader(tee.branch("b"), outs[1], pause=0.05)]
    for chunk in chunks(5):
        tee.feed(chunk)
    tee.fail(TransferError("image img: SHA-512 abc… differs from the list's"))
    for thread in threads:
        thread.join(30)
    for out in outs:
        assert len(out) == 1 and isinstance(out[0], TransferError)
        assert "differs from the list" in str(out[0])
    with pytest.raises(TransferError, match="differs"):
        tee.wait()
    tee.close()


def test_a_reader_that_stops_is_left_behind_and_when_all_stop_the_producer_stops(
    tmp_path: Path,
):
    tee = Tee(tmp_path, "img", buffer=2 * MIB)
    outs: list[list] = [[], []]
    threads = [
        reader(tee.branch("a"), outs[0], stop_after=3 * MIB),
        reader(tee.branch("b"), outs[1], stop_after=6 * MIB),
    ]
    fed = 0
    with pytest.raises(NoReaders):
        for chunk in chunks(200):
            tee.feed(chunk)
            fed += 1
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert outs == [["stopped"], ["stopped"]] and fed < 200
    tee.close()


def test_a_spool_that_cannot_be_made_fails_only_the_laggard(tmp_path: Path):
    blocked = tmp_path / "work"
    blocked.write_text("a file where the work folder should be")
    tee = Tee(blocked / "sub", "img", buffer=MIB)
    fast, slow = tee.branch("fast"), tee.branch("slow")
    fast_out: list = []
    thread = reader(fast, fast_out)
    data = chunks(4)
    for chunk in data:
        tee.feed(chunk)
        while fast.offset < tee.written and thread.is_alive():  # the fast one keeps up
            time.sleep(0.001)
    tee.end("verified")
    thread.join(10)
    assert fast_out == [hashlib.sha512(b"".join(data)).hexdigest()]
    with pytest.raises(TransferError, match=r"target slow fell behind and spool file .*: Not a"):
        slow.read(MIB)
    tee.close()

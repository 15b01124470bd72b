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
    with pytest.raises(TransferError, match=r"target slow fell behind and work folder .*: Not a"):
        slow.read(MIB)
    tee.close()


# --- attacks on the spool's folder (<state_dir>/work) ---------------------------------------


def _laggard_run(tee: Tee, count: int = 6) -> tuple[list, object, str]:
    """A fast reader that keeps up and a slow one that reads nothing until the end:
    the slow one needs the spool.  Returns (fast's outcome, slow's read error, digest)."""
    fast, slow = tee.branch("fast"), tee.branch("slow")
    fast_out: list = []
    thread = reader(fast, fast_out)
    data = chunks(count)
    for chunk in data:
        tee.feed(chunk)
        while fast.offset < tee.written and thread.is_alive():
            time.sleep(0.001)
    whole = hashlib.sha512(b"".join(data)).hexdigest()
    tee.end(whole)
    thread.join(10)
    try:
        got = hashlib.sha512()
        while chunk := slow.read(MIB):
            got.update(chunk)
        outcome: object = got.hexdigest()
    except TransferError as exc:
        outcome = exc
    return fast_out, outcome, whole


def test_a_planted_link_in_the_work_folders_place_is_never_followed(tmp_path: Path):
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o777)
    work = tmp_path / "work"
    work.symlink_to(attacker)  # planted after the pass start's clean-up
    tee = Tee(work, "img", buffer=MIB)
    fast_out, slow, whole = _laggard_run(tee)
    tee.close()
    assert fast_out == [whole]  # the other target is unharmed
    assert isinstance(slow, TransferError)
    assert str(slow) == (
        f"image img: target slow fell behind and work folder {work}: a symbolic link, "
        "not the sync's own folder: refused"
    )
    assert list(attacker.iterdir()) == []  # not one byte went where the link points


def test_a_work_folder_open_to_others_is_made_private_before_a_spool(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # pre-created by someone, or a umask of 0
    tee = Tee(work, "img", buffer=MIB)
    fast_out, slow, whole = _laggard_run(tee)
    assert fast_out == [whole] and slow == whole and tee.spooled
    assert work.stat().st_mode & 0o777 == 0o700
    tee.close()
    assert list(work.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_work_folder_of_another_user_is_refused(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    os.chown(work, 65534, 65534)  # nobody's: it could swap the spool under the sync
    tee = Tee(work, "img", buffer=MIB)
    fast_out, slow, whole = _laggard_run(tee)
    tee.close()
    assert fast_out == [whole]
    assert isinstance(slow, TransferError)
    assert str(slow).endswith(f"work folder {work}: owned by uid 65534, not by this user: refused")
    assert list(work.iterdir()) == []


def test_a_spool_that_fills_the_disk_fails_the_laggard_alone_and_leaves_nothing(tmp_path: Path):
    """A real size-limited file system (tmpfs, needs root) as the work folder."""
    import subprocess

    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(work)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        tee = Tee(work, "img", buffer=MIB)
        fast_out, slow, whole = _laggard_run(tee, count=8)
        assert fast_out == [whole]
        assert isinstance(slow, TransferError)
        assert str(slow).startswith("image img: target slow fell behind and spool file ")
        assert str(slow).endswith(": no space left on device") and "\n" not in str(slow)
        tee.close()
        assert list(work.iterdir()) == []
    finally:
        subprocess.run(["umount", str(work)], check=True, timeout=30)

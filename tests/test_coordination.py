# ruff: noqa: F401, F811  (pytest fixtures imported from etcd_server, then requested by name)
"""Several sync workers against a real etcd 3.4: partition, lock, lease, takeover.

Each test names its targets and members uniquely, so tests share one etcd
without seeing each other's keys (the group is shared: members of other tests
have left it when they stop).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from etcd_server import EtcdServer, etcd, free_port
from tooz import hashring

from glance_sync import coordination as coord_mod
from glance_sync import worker
from glance_sync.coordination import LocalCoordination, ToozCoordination
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError, CoordinationError, LockError

ROOT = Path(__file__).resolve().parent.parent
LEASE = 5


def _names(n: int = 4) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"cloud-{tag}-{i}" for i in range(n)]


def balanced_members(targets: list[str]) -> tuple[str, str]:
    """Two member ids between which tooz's ring splits ``targets`` evenly (it hashes,
    so some pairs give one member everything; the tests want both to have work)."""
    for n in range(1000):
        a, b = f"worker-a-{uuid.uuid4().hex[:6]}", f"worker-b-{n}"
        ring = hashring.HashRing([a.encode(), b.encode()])
        owners = [next(iter(ring.get_nodes(t.encode()))) for t in targets]
        if owners.count(a.encode()) == len(targets) // 2:
            return a, b
    raise AssertionError("no balanced pair of member ids")


@pytest.fixture
def workers(etcd):
    started: list[ToozCoordination] = []

    def make(member: str, lease: int = LEASE) -> ToozCoordination:
        c = ToozCoordination(etcd.tooz_url, member, lease)
        c.start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


def test_targets_are_partitioned_over_the_live_workers(workers):
    targets = _names()
    a_id, b_id = balanced_members(targets)
    a = workers(a_id)
    b = workers(b_id)
    mine_a, mine_b = a.owned(targets), b.owned(targets)
    assert len(mine_a) == len(mine_b) == 2
    assert set(mine_a) | set(mine_b) == set(targets) and not set(mine_a) & set(mine_b)
    assert {a_id, b_id} <= a.members()
    # b leaves: a's share grows to every target; b comes back: the same split as before
    b.stop()
    assert a.owned(targets) == targets
    c = workers(b_id)
    assert sorted(a.owned(targets)) == sorted(mine_a) and c.owned(targets) == mine_b


def test_a_worker_whose_membership_lapsed_joins_again(workers):
    targets = _names()
    a_id, b_id = balanced_members(targets)
    a, b = workers(a_id), workers(b_id)
    mine = a.owned(targets)
    assert len(mine) == 2 and len(b.owned(targets)) == 2
    a._coord._membership_lease.revoke()  # as when etcd lost a for longer than its lease
    assert b.owned(targets) == targets and a_id not in b.members()
    assert a.owned(targets) == []  # it notices, joins again...
    assert a.owned(targets) == mine  # ...and has its share back
    assert len(b.owned(targets)) == 2


def test_a_target_lock_excludes_every_other_worker(workers):
    (target,) = _names(1)
    a, b = workers(f"lock-a-{uuid.uuid4().hex[:6]}"), workers(f"lock-b-{uuid.uuid4().hex[:6]}")
    with a.locked(target) as held:
        assert held
        with b.locked(target) as other:
            assert not other
        with a.locked(target) as again:  # not re-entrant either: a second pass waits
            assert not again
    with b.locked(target) as other:
        assert other


def test_a_killed_worker_loses_its_locks_at_the_end_of_the_lease(workers, etcd, tmp_path):
    targets = _names()
    dead_id, live_id = balanced_members(targets)
    live = workers(live_id)  # a member before the other starts: it takes only its share
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/coord_child.py"), etcd.tooz_url, dead_id,
         str(LEASE), *targets],
        stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        state = json.loads(child.stdout.readline())
        theirs = state["locked"]
        assert theirs == state["owned"] and len(theirs) == 2
        assert sorted(live.owned(targets)) == sorted(set(targets) - set(theirs))
        for target in theirs:
            with live.locked(target) as held:
                assert not held
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        # until the lease ends, the dead worker still owns and holds its targets
        assert sorted(live.owned(targets)) == sorted(set(targets) - set(theirs))
        deadline = killed + LEASE + 10
        while sorted(live.owned(targets)) != sorted(targets):
            assert time.monotonic() < deadline, "the dead worker's membership never lapsed"
            time.sleep(0.2)
        for target in theirs:
            with live.locked(target) as held:
                assert held
        took = time.monotonic() - killed
        # the lease (renewed every half lease), not sooner: no early takeover
        assert LEASE / 2 - 1 < took < LEASE + 10
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def test_the_worker_loop_takes_over_a_dead_workers_targets(workers, etcd):
    targets = _names()
    dead_id, live_id = balanced_members(targets)
    live = workers(live_id)  # a member before the other starts: it takes only its share
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/coord_child.py"), etcd.tooz_url, dead_id,
         str(LEASE), *targets],
        stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    synced: list[str] = []
    when: dict[str, float] = {}  #: target → when the worker first synced it
    stop = threading.Event()
    lines: list[str] = []

    def sync(names: list[str]) -> int:
        for target in names:
            synced.append(target)
            when.setdefault(target, time.monotonic())
        if set(synced) == set(targets):
            stop.set()
        return 0

    try:
        theirs = json.loads(child.stdout.readline())["locked"]
        thread = threading.Thread(
            target=worker.run,
            args=(live, targets, sync),
            kwargs={"interval": 3600, "stop": stop, "say": lines.append, "poll": 0.2},
        )
        thread.start()
        deadline = time.monotonic() + 20
        while len(synced) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert sorted(synced) == sorted(set(targets) - set(theirs))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        thread.join(LEASE + 20)
        assert not thread.is_alive(), f"targets never taken over: {synced}"
        # the dead worker's targets: only once its lease ended, then in the next round
        assert set(synced) == set(targets) and not lines
        for target in theirs:
            assert LEASE / 2 - 1 < when[target] - killed < LEASE + 5
    finally:
        stop.set()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


# --- the embedded default, and what is wrong ---------------------------------------------------


def test_without_a_backend_one_host_owns_every_target_under_file_locks(tmp_path):
    conf = make_conf([])
    local = coord_mod.from_conf(conf, tmp_path)
    assert isinstance(local, LocalCoordination)
    local.start()
    assert local.owned(["a", "b"]) == ["a", "b"]
    other = LocalCoordination(tmp_path)
    with local.locked("a") as held:
        assert held
        with other.locked("a") as second:
            assert not second
        with other.locked("b") as free:
            assert free
    with other.locked("a") as held:
        assert held
    assert (tmp_path / "locks" / "target-a.lock").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".hidden", "", "x" * 65])
def test_a_target_name_that_is_not_a_name_is_never_a_lock_path(tmp_path, name):
    local = LocalCoordination(tmp_path)
    local.start()
    with pytest.raises(ConfigError, match="target"), local.locked(name):
        pass
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == []


def test_an_unreachable_etcd_is_one_coordination_error(tmp_path):
    url = f"etcd3+http://user:hunter2@127.0.0.1:{free_port()}"
    c = ToozCoordination(url, "nobody", 5)
    with pytest.raises(CoordinationError) as caught:
        c.start()
    line = str(caught.value)
    assert line.startswith("coordination etcd3+http://***@127.0.0.1:")
    assert "hunter2" not in line and "\n" not in line and "membership_timeout" not in line


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:hunter2@cache:6379", r"redis://\*\*\*@cache:6379: redis is not supported"),
        ("127.0.0.1:2379", "is not supported"),
    ],
)
def test_a_backend_that_is_not_etcd_is_a_config_error(tmp_path, url, expected):
    conf_file = tmp_path / "vmtrust.conf"
    conf_file.write_text(f"[coordination]\nbackend_url = {url}\n")
    with pytest.raises(ConfigError, match=expected) as caught:
        coord_mod.from_conf(make_conf([str(conf_file)]), tmp_path)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("member", ["a/b", "../x", "x" * 65, "naïve"])
def test_a_member_id_that_is_not_a_name_is_a_config_error(tmp_path, member):
    conf_file = tmp_path / "vmtrust.conf"
    conf_file.write_text(
        f"[coordination]\nbackend_url = etcd3+http://127.0.0.1:2379\nmember_id = {member}\n"
    )
    with pytest.raises(ConfigError, match=r"\[coordination\] member_id .*: not a name"):
        coord_mod.from_conf(make_conf([str(conf_file)]), tmp_path)


def test_the_lease_comes_from_the_configuration(tmp_path, etcd):
    conf_file = tmp_path / "vmtrust.conf"
    conf_file.write_text(
        f"[coordination]\nbackend_url = {etcd.tooz_url}\nmember_id = m-{uuid.uuid4().hex[:6]}\n"
        "lease = 7\n"
    )
    c = coord_mod.from_conf(make_conf([str(conf_file)]), tmp_path)
    assert isinstance(c, ToozCoordination)
    c.start()
    try:
        assert (c._coord.membership_timeout, c._coord.lock_timeout) == (7, 7)
    finally:
        c.stop()


def test_check_sees_the_live_workers_without_joining(tmp_path, etcd, workers):
    from glance_sync import preflight

    live = workers(f"check-{uuid.uuid4().hex[:6]}")
    before = live.members()
    conf_file = tmp_path / "vmtrust.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[coordination]\nbackend_url = {etcd.tooz_url}\nmember_id = {live.member_id}\n"
    )
    findings = preflight.run(make_conf([str(conf_file)]))
    assert "coordination" in findings.checked
    (clash,) = [p for p in findings.problems if "member_id" in p]
    assert clash.startswith(f"[coordination] member_id {live.member_id}: a live worker has")
    (note,) = [n for n in findings.notes if n.startswith("coordination ")]
    assert live.member_id in note
    assert live.members() == before  # nobody joined, nothing moved
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[coordination]\nbackend_url = etcd3+http://127.0.0.1:{free_port()}\n"
    )
    findings = preflight.run(make_conf([str(conf_file)]))
    (down,) = [p for p in findings.problems if p.startswith("coordination ")]
    assert "127.0.0.1" in down and "\n" not in down


def test_a_worker_that_dies_during_a_round_is_taken_over_by_the_next(workers, etcd):
    """The dead worker's membership ends while the survivor's round still runs: its
    targets are the survivor's when that round ends, and the next rounds start at once
    (without waiting the hour's interval) until every target is synced.  A lock of the
    dead worker may outlive its membership by a moment (each has its own lease): a target
    still locked then is left for the round after, which also starts at once."""
    targets = _names()
    dead_id, live_id = balanced_members(targets)
    live = workers(live_id)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/coord_child.py"), etcd.tooz_url, dead_id,
         str(LEASE), *targets],
        stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    rounds: list[list[str]] = []
    stop = threading.Event()

    def sync(names: list[str]) -> int:
        rounds.append(sorted(names))
        if len(rounds) == 1:  # the other worker dies, and its lease ends, during this round
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            deadline = time.monotonic() + LEASE + 10
            while dead_id in live.members():
                assert time.monotonic() < deadline
                time.sleep(0.2)
        elif set().union(*rounds[1:]) == set(targets):
            stop.set()
        return 0

    try:
        theirs = json.loads(child.stdout.readline())["locked"]
        thread = threading.Thread(
            target=worker.run,
            args=(live, targets, sync),
            kwargs={"interval": 3600, "stop": stop, "say": print, "poll": 0.2},
        )
        thread.start()
        thread.join(LEASE + 30)
        assert not thread.is_alive(), f"no second round: {rounds}"
        assert rounds[0] == sorted(set(targets) - set(theirs))
        assert set(rounds[1]) >= set(rounds[0])  # its own, again, at once
        assert set().union(*rounds[1:]) == set(targets)  # and the dead worker's
        assert len(rounds) <= 4, rounds  # each early round took what was free
    finally:
        stop.set()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def test_options_in_the_url_win_over_the_lease():
    c = ToozCoordination("etcd3+https://u:pw@h:2379?lock_timeout=9&ca_cert=/etc/ca.pem", "m", 30)
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(c.url).query)
    assert query["lock_timeout"] == ["9"] and query["membership_timeout"] == ["30"]
    assert query["ca_cert"] == ["/etc/ca.pem"] and query["timeout"] == ["30"]
    assert c.shown == "etcd3+https://***@h:2379"  # no password, no query in messages


def test_a_lock_that_lapsed_while_held_is_reported(workers, caplog):
    (target,) = _names(1)
    a = workers(f"lapse-{uuid.uuid4().hex[:6]}")
    with a.locked(target) as held:
        assert held
        handle = next(iter(a._coord._acquired_locks))
        handle._lease.revoke()  # as when the worker was frozen longer than the lease
    assert f"target {target}: its lock lapsed while this worker held it" in caplog.text
    with a.locked(target) as again:  # and it is free again
        assert again
    assert caplog.text.count("its lock lapsed") == 1  # the second release was a clean one


def test_a_worker_frozen_past_its_lease_commits_no_seal_after_another_took_the_target(
    workers, etcd
):
    """The attack: SIGSTOP a worker that holds a target past its lease; another takes the
    target; the frozen one resumes at its commit point.  The fence must refuse it."""
    (target,) = _names(1)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/fence_child.py"), etcd.tooz_url,
         f"frozen-{uuid.uuid4().hex[:6]}", str(LEASE), target],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    other = workers(f"taker-{uuid.uuid4().hex[:6]}")
    try:
        assert child.stdout.readline().strip() == "locked"
        child.stdin.write("commit\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) == {"fenced": False}  # it holds it: commits
        with other.locked(target) as held:
            assert not held
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + LEASE + 15
        with contextlib.ExitStack() as stack:
            while not stack.enter_context(other.locked(target)):
                assert time.monotonic() < deadline, "the frozen worker's lock never lapsed"
                time.sleep(0.3)
            # the other worker holds the target now; the frozen one wakes at its commit
            os.kill(child.pid, signal.SIGCONT)
            child.stdin.write("commit\n")
            child.stdin.flush()
            answer = json.loads(child.stdout.readline())
            assert answer["fenced"] is True
            assert f"target {target}'s lock lapsed before the commit" in answer["error"]
            assert answer["error"].startswith("image img-1: ")
            assert answer["error"].endswith(": not committed")
            assert other.holds(target)  # and its release did not free the new holder's lock
            child.stdin.close()
            assert child.wait(timeout=30) == 0
            assert other.holds(target)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def test_the_fence_fails_closed_when_etcd_cannot_be_asked(workers):
    (target,) = _names(1)
    a = workers(f"closed-{uuid.uuid4().hex[:6]}")
    with a.locked(target) as held:
        assert held
        a.fence(target, "img-1")  # held: nothing raised
        a._coord.client = None  # etcd cannot be asked (any failure of the question)
        with pytest.raises(LockError, match="lock lapsed before the commit"):
            a.fence(target, "img-1")
    assert not a.holds(target)  # a target not held is never "held"


def test_a_file_lock_fence_never_refuses(tmp_path):
    local = LocalCoordination(tmp_path)
    local.start()
    with local.locked("cloud-a") as held:
        assert held
        local.fence("cloud-a", "img-1")


@pytest.mark.parametrize(
    "hostile",
    [b"evil\x1b]0;owned\x07\nnote: all fine", b"../../etc/passwd", b"\xff\xfe not utf-8"],
    ids=["escapes", "path", "bytes"],
)
def test_a_hostile_member_in_etcd_is_shown_as_data_and_locks_stay_names(
    tmp_path, etcd, hostile, capsys
):
    """Anyone who can write to etcd can join the group under any bytes: ``--check`` shows
    them as one cleaned line (or one line saying the group cannot be read), and the
    lock keys stay the targets' names whatever the members are called.  A member id
    that is not UTF-8 makes tooz unable to read the group at all: every worker then
    stops at start with one line (decision 0011: etcd must be access-controlled)."""
    from tooz import coordination

    from glance_sync import preflight

    intruder = coordination.get_coordinator(etcd.tooz_url, hostile)
    intruder.start(start_heart=True)
    try:
        with contextlib.suppress(coordination.MemberAlreadyExist):
            with contextlib.suppress(coordination.GroupAlreadyExist):
                intruder.create_group(coord_mod.GROUP).get()
            intruder.join_group(coord_mod.GROUP).get()
        conf_file = tmp_path / "vmtrust.conf"
        conf_file.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[coordination]\nbackend_url = {etcd.tooz_url}\nmember_id = honest-1\n"
        )
        said: list[str] = []
        preflight.main(make_conf([str(conf_file)]), said.append)
        out = capsys.readouterr().out + "\n".join(said)
        assert "\x1b" not in out and "\x07" not in out
        assert not [line for line in out.splitlines() if line.startswith("note: all fine")]
        member = ToozCoordination(etcd.tooz_url, "honest-2", LEASE)
        if b"\xff" in hostile:  # tooz cannot read the group: the worker fails closed, one line
            with pytest.raises(CoordinationError) as caught:
                member.start()
            assert "can't decode" in str(caught.value) and "\n" not in str(caught.value)
            assert [line for line in said if "can't decode" in line]
            return
        member.start()
        try:
            (target,) = _names(1)
            with member.locked(target) as held:
                assert held
                (key,) = [h._key for h in member._held.values()]
                assert key == f"/tooz/locksvmtrust-target-{target}".encode()
        finally:
            member.stop()
    finally:  # its membership lease revoked: the shared etcd's group is clean again at once
        with contextlib.suppress(Exception):
            intruder._membership_lease.revoke()
        with contextlib.suppress(Exception):
            intruder.stop()

"""Several sync hosts: which worker syncs which target, and never two at once.

With ``[coordination] backend_url`` (etcd 3 in production, through tooz's
``etcd3+http`` driver), every ``vmtrust-sync --worker`` joins one tooz group;
the targets are shared out over the live members with tooz's partitioner (a
consistent hash ring, so a member joining or leaving moves only its share), and
each target is synced under a tooz lock named for it.  Membership and locks
are etcd leases of ``[coordination] lease`` seconds that tooz's heartbeat
thread renews: a worker that dies (``kill -9`` included) keeps them at most that
long, then the others see it leave, the ring gives its targets to them, and
its locks are free for them to take.

The lock, not the ring, is what keeps a target from being written by two
hosts: while members join or leave, two workers may each believe a target is
theirs for a moment; the second finds the lock taken and leaves the target
for this pass.

Without a backend the host is the only worker (the embedded default, no
service to run): it owns every target and a target's lock is a file lock in
the state directory, as the one-sync-per-state-directory lock is.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from glance_sync import lock
from vmtrust.errors import ConfigError, CoordinationError, LockError, VmtrustError
from vmtrust.safetext import redact

__all__ = ["LocalCoordination", "ToozCoordination", "check", "default_member_id", "from_conf"]

LOG = logging.getLogger("vmtrust.sync")

GROUP = b"vmtrust-sync"  #: the tooz group every worker joins
SCHEMES = ("etcd3+http", "etcd3+https")  #: the backends documented and tested
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  #: as [sync] targets' names


def default_member_id() -> str:
    """A member id unique on the host and readable in etcd: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _check_name(target: str) -> None:
    """A target's name becomes a file or key name: never a path, never empty."""
    if not _NAME.match(target):
        raise ConfigError(f"target {target!r}: not a name a lock can be made of")


def _lock_name(target: str) -> bytes:
    _check_name(target)
    return f"vmtrust-target-{target}".encode()


class LocalCoordination:
    """The only worker: every target is this host's; its lock is a file lock."""

    #: seconds to wait after joining before the first round (no peers to wait for)
    settle = 0.0

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.member_id = default_member_id()

    def start(self) -> None:
        (self.state_dir / "locks").mkdir(mode=0o700, parents=True, exist_ok=True)

    def stop(self) -> None:
        pass

    def owned(self, targets: Sequence[str]) -> list[str]:
        return list(targets)

    @contextlib.contextmanager
    def locked(self, target: str) -> Iterator[bool]:
        """Hold ``target``'s lock for the block: True, or False when another holds it."""
        _check_name(target)
        path = self.state_dir / "locks" / f"target-{target}.lock"
        held = contextlib.ExitStack()
        try:
            held.enter_context(lock.hold(path, lock.holder(self.state_dir), lambda who: who))
        except LockError as exc:
            LOG.info("target %s: locked by %s; left to it", target, exc)
            yield False
            return
        with held:
            yield True

    def fence(self, target: str, what: str) -> None:
        """A file lock cannot lapse while its process lives: always still held."""


def _lost(target: str, what: str) -> LockError:
    return LockError(
        f"{what}: target {target}'s lock lapsed before the commit (this worker was not "
        "heard from for a lease; another may hold the target): not committed"
    )


class ToozCoordination:
    """A member of the workers' tooz group: its share of the targets, and their locks."""

    def __init__(self, backend_url: str, member_id: str, lease: int) -> None:
        self.url = _with_lease(backend_url, lease)
        self.shown = redact(urlunsplit(urlsplit(backend_url)._replace(query="")))
        self.member_id = member_id or default_member_id()
        self.lease = lease
        #: seconds to wait after joining before the first round: hosts started together
        #: then share the targets from the first round on (half a lease: one heartbeat)
        self.settle = lease / 2
        self._coord: Any = None
        self._partitioner: Any = None
        self._held: dict[str, Any] = {}  #: target → its tooz lock, while held

    def _error(self, exc: BaseException) -> CoordinationError:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return CoordinationError(f"coordination {self.shown}: {redact(text)}")

    def start(self) -> None:
        """Connect, start the heartbeat, join the group; CoordinationError if it cannot.

        Starting a started member does nothing.
        """
        if self._coord is not None:
            return
        try:
            from tooz import coordination
        except ImportError:
            raise ConfigError(
                "[coordination] backend_url needs tooz and etcd3gw: "
                "pip install 'vmtrust[federation]'"
            ) from None
        try:
            self._coord = coordination.get_coordinator(self.url, self.member_id.encode())
            self._coord.start(start_heart=True)
            self._partitioner = self._coord.join_partitioned_group(GROUP)
        except Exception as exc:  # tooz's, etcd3gw's and requests' errors alike
            self.stop()
            raise self._error(exc) from None
        LOG.info("coordination %s: joined as %s", self.shown, self.member_id)

    def peek(self) -> set[str]:
        """The group's live members, asked without joining it (``--check``: a member
        that joined, even for a moment, would move targets between the workers)."""
        from tooz import coordination

        coord = None
        try:
            coord = coordination.get_coordinator(self.url, self.member_id.encode())
            coord.start(start_heart=False)
            try:
                return {m.decode() for m in coord.get_members(GROUP).get()}
            except coordination.GroupNotCreated:
                return set()
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            if coord is not None:
                with contextlib.suppress(Exception):
                    coord.stop()

    def stop(self) -> None:
        """Leave the group and release everything (the leases end with it)."""
        coord, self._coord = self._coord, None
        if coord is None:
            return
        with contextlib.suppress(Exception):
            if self._partitioner is not None:
                self._partitioner.stop()
            coord.leave_group(GROUP).get()
        with contextlib.suppress(Exception):
            coord.stop()

    def members(self) -> set[str]:
        """The live members of the group (after the last heartbeat's view)."""
        try:
            return {m.decode() for m in self._coord.get_members(GROUP).get()}
        except Exception as exc:
            raise self._error(exc) from None

    def owned(self, targets: Sequence[str]) -> list[str]:
        """The targets the ring gives this worker now, after members joined or left.

        A worker whose membership lapsed while it lived (etcd unreachable for a
        lease: the others have taken its targets) joins again, and has a share
        again from the next call on.
        """
        try:
            self._coord.run_watchers()
            if self.member_id.encode() not in self._coord.get_members(GROUP).get():
                LOG.warning("coordination %s: membership lapsed; joining again", self.shown)
                self._coord.heartbeat()  # a new membership lease for the old one, if it ended
                self._coord.join_group(GROUP, capabilities={"weight": 1}).get()
                return []
            return [t for t in targets if self._partitioner.belongs_to_self(t)]
        except Exception as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def locked(self, target: str) -> Iterator[bool]:
        """Hold ``target``'s tooz lock for the block: True, or False when another holds it."""
        try:
            handle = self._coord.get_lock(_lock_name(target))
            acquired = handle.acquire(blocking=False)
        except Exception as exc:
            raise self._error(exc) from None
        if not acquired:
            LOG.info("target %s: locked by another worker; left to it", target)
            yield False
            return
        self._held[target] = handle
        try:
            yield True
        finally:
            self._held.pop(target, None)
            try:
                released = handle.release()
            except Exception as exc:  # its lease ends it anyway
                LOG.warning("target %s: lock not released (%s)", target, self._error(exc))
            else:
                if not released:  # the fence kept its seals out; say so
                    LOG.error(
                        "target %s: its lock lapsed while this worker held it (etcd did not "
                        "hear from it for %s s): another worker may have written the target "
                        "meanwhile; the next pass converges",
                        target,
                        self.lease,
                    )

    def holds(self, target: str) -> bool:
        """Does etcd still hold ``target``'s lock *for this worker* (asked now)?

        The lock is an etcd key with a value unique to this holder, bound to a
        lease; a worker frozen past the lease lost the key, and the key another
        worker created has another value.  Anything that cannot be asked
        (etcd unreachable, tooz changed) answers no: the commit is refused
        rather than risked.
        """
        handle = self._held.get(target)
        if handle is None or self._coord is None:
            return False
        try:
            key = handle._key.decode()  # tooz's Etcd3Lock: /tooz/locks/<name>
            mine = base64.b64decode(handle._uuid)
            values = self._coord.client.get(key)
        except Exception as exc:
            LOG.warning("target %s: lock not confirmed (%s)", target, self._error(exc))
            return False
        return any(_as_bytes(v) == mine for v in values)

    def fence(self, target: str, what: str) -> None:
        """Raise LockError unless this worker still holds ``target``'s lock; ``what``
        (``image ID``, ``retire ID`` …) names the change in its message.

        Asked right before a seal is committed (decision 0011): a worker that
        was frozen past its lease (SIGSTOP, a VM paused, a long GC) finds its key
        gone and commits nothing.  What remains is the moment between this
        question and Glance's answer to the commit, not a whole lease.
        """
        if not self.holds(target):
            raise _lost(target, what)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


Coordination = LocalCoordination | ToozCoordination


def _with_lease(url: str, lease: int) -> str:
    """``url`` with tooz's membership and lock timeouts set to ``lease`` unless it sets them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key in ("membership_timeout", "lock_timeout"):
        query.setdefault(key, str(lease))
    query.setdefault("timeout", str(min(lease, 30)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def from_conf(conf: Any, state_dir: Path) -> Coordination:
    """The coordination ``[coordination]`` asks for (checked; nothing contacted yet)."""
    section = conf.coordination
    url = section.backend_url.strip()
    if not url:
        return LocalCoordination(state_dir)
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"[coordination] backend_url {redact(url)}: {scheme or 'no scheme'} is not "
            f"supported (use {' or '.join(s + '://HOST:PORT' for s in SCHEMES)})"
        )
    member = section.member_id.strip()
    if member and not _NAME.match(member):
        raise ConfigError(
            f"[coordination] member_id {member!r}: not a name (letters, digits, '.', '_' and "
            "'-', at most 64): it becomes a key in etcd"
        )
    return ToozCoordination(url, member, section.lease)


def check(conf: Any, state_dir: Path) -> tuple[list[str], list[str]]:
    """``--check``: (problems, notes) of ``[coordination]``; nobody joins the group.

    The backend must answer, and no live worker may have this host's member id.
    """
    try:
        backend = from_conf(conf, state_dir)
        if not isinstance(backend, ToozCoordination):
            return [], []
        members = backend.peek()
    except VmtrustError as exc:
        return [str(exc)], []
    problems = []
    if backend.member_id in members:
        problems.append(
            f"[coordination] member_id {backend.member_id}: a live worker has this id already "
            "(each worker needs its own)"
        )
    live = ", ".join(sorted(members)) or "none"
    return problems, [f"coordination {backend.shown}: {len(members)} live worker(s): {live}"]

"""The local directory store, the embedded default.

For plain KVM/Xen sites, for sites whose existing vmcatcher event handlers
take images from a directory, and for trying vmtrust out.  Layout (see
docs/local-store.md)::

    <path>/images/<identifier>/<version>-<sha16>.img    trusted image bytes
    <path>/images/<identifier>/<version>-<sha16>.json   {"record": …, "seal": …}
    <path>/retired/<identifier>/…                       retired versions, same pair
    <path>/.partial/                                    downloads in progress (0700)
    <path>/.vmtrust-sync.lock                           held by the sync using the store

Crash safety: bytes are written under ``.partial`` and fsynced; the file is
renamed into ``images/``; the record is written last, atomically.  The record
is the commit point: an ``.img`` without its ``.json`` is an orphan of an
interrupted run and :meth:`cleanup` removes it, as it empties ``.partial``.

The store cannot be used against its owner: nothing below the root is
reached through a symbolic link (:mod:`glance_sync.stores.localfs`); a link or
other file the store did not put where it expects its own is reported, every
pass, and left alone.  Folder and file names are an injective function of the
identifier and version (:func:`safe_name`), and a create never replaces what
already has its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync import hooks, lock
from glance_sync.plan import Desired, Held
from glance_sync.stores.base import Finish, Store, StoreContext, held_image
from glance_sync.stores.localfs import Dir, Unexpected
from glance_sync.transfer import DiskStream, copy_stream
from vmtrust import jsonsafe
from vmtrust.errors import ConfigError, LocalStoreError, VmtrustError
from vmtrust.imagelist import format_date
from vmtrust.record import TrustRecord
from vmtrust.trust import Code, Stored, check_binding, refuse

if TYPE_CHECKING:
    from oslo_config import cfg

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "LOCK_NAME",
    "MAX_RECORD_BYTES",
    "NOT_OURS",
    "LocalStore",
    "Planted",
    "safe_name",
]

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_AREAS = ("images", "retired", ".partial")
LOCK_NAME = ".vmtrust-sync.lock"
MAX_RECORD_BYTES = 64 * 1024  #: a record is about 2 KB
NOT_OURS = ", which the store did not put there (not followed; remove it)"
#: images and records: readable by the hypervisors' users; the umask can take more away
FILE_MODE = 0o644
DIR_MODE = 0o755


def safe_name(text: str) -> str:
    """A file-system-safe name: the text itself when harmless, else ``_`` and its SHA-256.

    Injective: a harmless name starts with a letter or digit, a hashed one
    with ``_``, so no identifier can take another's folder.  (Stores written
    before this rule used ``h-`` and 32 hex digits; their records carry their
    store ids, and they are read and retired where they are.)
    """
    if _SAFE.match(text) and ".." not in text:
        return text
    return "_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Planted(Held):
    """Something where the store keeps its own files that the store did not put
    there: a symbolic link, a FIFO, a device.  Reported on every pass (the planner
    retires it as an invalid image, and :meth:`LocalStore.retire` refuses, naming
    it), never followed, moved or removed: the operator looks at it first."""


class LocalStore(Store):
    name = "local"

    def __init__(
        self,
        path: Path,
        seal_keys: list[Ed25519PublicKey],
        target_format: str = "",
        *,
        hook: Path | None = None,
    ) -> None:
        self.root = Path(path).expanduser()
        self.seal_keys = seal_keys
        self.target_format = target_format
        self.hook = hook  #: vmcatcher event handler run after each create and retire
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._open(create=True):
                pass
        except LocalStoreError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"local store {self.root}: {exc.strerror or exc}") from None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, context: StoreContext) -> LocalStore:
        """``[store_local]``: the directory, the disk format and, for the sync, the hook."""
        section = conf.store_local
        if not section.path:
            raise ConfigError("configuration: [store_local] path is not set")
        hook = hooks.check(section.hook, "[store_local] hook") if context.syncing else None
        return cls(
            Path(section.path), context.seal_keys, section.disk_format.strip().lower(), hook=hook
        )

    def notify(self, event: str, held: Held, want: Desired | None = None) -> None:
        if self.hook is not None:
            image, imagelist = (want.image, want.imagelist) if want else (None, None)
            hooks.run(self.hook, event, image, imagelist, held)

    # --- the root and its folders ----------------------------------------------------

    def _error(self, exc: OSError | Unexpected | VmtrustError, doing: str = "") -> LocalStoreError:
        why = str(exc) if not isinstance(exc, OSError) else exc.strerror or str(exc)
        if isinstance(exc, OSError) and exc.filename and Path(exc.filename) != self.root:
            why = f"{exc.filename}: {why}"
        if isinstance(exc, Unexpected):
            why += NOT_OURS
        return LocalStoreError(f"local store {self.root}: {doing}{why}")

    @contextlib.contextmanager
    def _open(self, *, create: bool = False) -> Iterator[Dir]:
        """The root, checking its three folders; a folder that is not a real directory
        refuses the whole store (no image can be placed or found safely).  ``images``
        and ``retired`` are made only when the store is opened: a pass that finds them
        gone (a file system not mounted) stops rather than fill the mount point."""
        with Dir.root(self.root) as root:
            try:
                for area in _AREAS:  # .partial last, made again whenever missing
                    mode = 0o700 if area == ".partial" else DIR_MODE
                    with root.subdir(area, create=create or area == ".partial", mode=mode):
                        pass
            except Unexpected as exc:
                raise self._error(exc) from None
            yield root

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        """One sync per store, whatever its state directory."""
        path = self.root / LOCK_NAME

        def busy(other: str) -> str:
            return (
                f"local store {self.root} is in use by another vmtrust-sync ({other}; "
                f"lock {path}); not starting a second one on it"
            )

        try:
            root = Dir.root(self.root)  # not made again: an unmounted store stays empty
        except OSError as exc:
            raise self._error(exc) from None
        with root, lock.hold(path, holder, busy, dir_fd=root.fd):
            yield  # (the folders are checked by the pass, which reports what is wrong)

    # --- reading ------------------------------------------------------------------

    def _planted(self, where: Dir, name: str, mode: int, store_id: str) -> Held:
        return Planted(
            store_id=store_id,
            record=None,
            seal_ok=False,
            location=str(self.root / where.path(name)),
            problem=f"{where.path(name)} is {where.describe(name, mode)}{NOT_OURS}",
        )

    def _read(self, folder: Dir, stem: str, retired: bool) -> Held:
        store_id = f"{os.path.basename(folder.rel)}/{stem}"
        retired_at, unusable = None, None
        try:
            content = jsonsafe.loads(
                folder.read(f"{stem}.json", MAX_RECORD_BYTES),
                what="trust record",
                max_bytes=MAX_RECORD_BYTES,
            )
            record = TrustRecord.from_dict(content["record"])
            seal, retired_at = content.get("seal", ""), content.get("retired_at")
        except (OSError, Unexpected, VmtrustError, KeyError, TypeError, AttributeError) as exc:
            verdict = refuse(Code.SEAL, f"unreadable trust record ({exc})")
        else:
            size, unusable = self._image_size(folder, f"{stem}.img")
            verdict = check_binding(
                lambda: (record, seal), Stored(store_id, size=size), keys=self.seal_keys
            )
        return held_image(
            verdict,
            store_id,
            retired=retired,
            retired_at=retired_at,
            location=str(self.root / folder.path(f"{stem}.img")),
            unusable=unusable,
        )

    @staticmethod
    def _image_size(folder: Dir, image: str) -> tuple[int | None, str | None]:
        """The size of a record's image file, or why there is no such file to bind it to.

        The store binds a record to its file's place (the store id, whose name
        carries the first 16 hex digits of the file's SHA-512) and size; hashing
        every image again on every pass would read the whole store each time.
        """
        try:
            if not folder.regular(image):
                return None, "image file missing"
            return os.stat(image, dir_fd=folder.fd, follow_symlinks=False).st_size, None
        except Unexpected as exc:
            return None, f"{exc}{NOT_OURS}"
        except OSError as exc:
            return None, f"image file: {exc.strerror or exc}"

    def _folder(self, folder: Dir, retired: bool) -> list[Held]:
        """The images of one folder, and whatever in it is not a plain file."""
        found = []
        entries = dict(folder.entries())
        for name, mode in entries.items():
            stem = name.removesuffix(".json").removesuffix(".img")
            if name == f"{stem}.json" and stat.S_ISREG(mode):
                found.append(self._read(folder, stem, retired))
            elif not stat.S_ISREG(mode) and not (
                name == f"{stem}.img" and stat.S_ISREG(entries.get(f"{stem}.json", 0))
            ):  # (an image that is no file but has a record: that record's problem)
                store_id = f"{os.path.basename(folder.rel)}/{name}"
                found.append(self._planted(folder, name, mode, store_id))
        return found

    def held(self) -> list[Held]:
        result = []
        try:
            with self._open() as root:
                for area, retired in (("images", False), ("retired", True)):
                    with root.subdir(area) as top:
                        for name, mode in top.entries():
                            if stat.S_ISREG(mode):
                                continue  # a plain file is not the store's, and harmless
                            if not stat.S_ISDIR(mode):
                                result.append(self._planted(top, name, mode, f"{area}/{name}"))
                                continue
                            try:
                                with top.subdir(name) as folder:
                                    result += self._folder(folder, retired)
                            except Unexpected:  # replaced since the listing
                                now = top.mode(name) or 0
                                result.append(self._planted(top, name, now, f"{area}/{name}"))
        except (OSError, Unexpected) as exc:
            raise self._error(exc, "cannot list the images: ") from None
        return result

    def disk_format(self, source_format: str) -> str:
        return self.target_format or source_format

    def free_bytes(self) -> int | None:
        usage = shutil.disk_usage(self.root)
        return usage.free

    # --- writing ------------------------------------------------------------------

    def create(self, want: Desired, stream: DiskStream, disk_format: str, finish: Finish) -> Held:
        identifier, version = want.identifier, want.image.version
        partial_name = f"{uuid.uuid4().hex}.img"
        folder_name = safe_name(identifier)
        try:
            with self._open() as root, root.subdir(".partial") as partial:
                try:
                    with partial.create(partial_name, FILE_MODE) as out:
                        size, sha512 = copy_stream(stream, out.write, identifier)
                        out.flush()
                        os.fsync(out.fileno())
                    stem = f"{safe_name(version)}-{sha512[:16]}"
                    store_id = f"{folder_name}/{stem}"
                    record, seal = finish(store_id, size, sha512)
                    with (
                        root.subdir("images") as images,
                        images.subdir(folder_name, create=True, mode=DIR_MODE) as folder,
                    ):
                        for name in (f"{stem}.img", f"{stem}.json"):
                            if folder.mode(name) is not None:  # an old layout's, say
                                raise LocalStoreError(
                                    f"local store {self.root}: {folder.path(name)} already "
                                    "exists; not replaced"
                                )
                        partial.move(partial_name, folder, f"{stem}.img")
                        try:
                            self._write_record(folder, stem, record, seal)
                        except BaseException:
                            with contextlib.suppress(OSError):
                                folder.remove(f"{stem}.img")
                            raise
                        location = str(self.root / folder.path(f"{stem}.img"))
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        partial.remove(partial_name)
        except (OSError, Unexpected) as exc:
            raise self._error(exc, f"cannot store image {identifier}: ") from None
        return Held(store_id=store_id, record=record, seal_ok=True, location=location)

    def _write_record(
        self, folder: Dir, stem: str, record: TrustRecord, seal: str, **extra: str
    ) -> None:
        body = {"record": record.__dict__, "seal": seal, **extra}
        data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        folder.write_atomic(f"{stem}.json", data, FILE_MODE)

    def _pair(self, held: Held, *, retired: bool) -> tuple[str, str]:
        """(folder, stem) of a held image, refusing what the store must not touch."""
        if isinstance(held, Planted):
            raise LocalStoreError(f"local store {self.root}: {held.problem}")
        if held.retired != retired:
            state = "retired" if held.retired else "trusted"
            raise LocalStoreError(f"local store {self.root}: {held.store_id} is {state}")
        folder, _, stem = held.store_id.partition("/")
        for part in (folder, stem):
            if not part or "/" in part or part in (".", "..") or "\0" in part:
                raise LocalStoreError(f"local store {self.root}: bad store id {held.store_id!r}")
        return folder, stem

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        folder_name, stem = self._pair(held, retired=False)
        try:
            with (
                self._open() as root,
                root.subdir("images") as images,
                images.subdir(folder_name) as folder,
            ):
                folder.regular(f"{stem}.json")  # a link there is reported, not replaced
                self._write_record(folder, stem, record, seal)
        except (OSError, Unexpected) as exc:
            raise self._error(exc) from None
        return Held(store_id=held.store_id, record=record, seal_ok=True, location=held.location)

    def retire(self, held: Held, mode: str, now: datetime) -> None:
        folder_name, stem = self._pair(held, retired=False)
        image, meta = f"{stem}.img", f"{stem}.json"
        try:
            with (
                self._open() as root,
                root.subdir("images") as images,
                images.subdir(folder_name) as folder,
            ):
                has_image = folder.regular(image)  # links refused before anything moves
                content: dict = {}
                if folder.regular(meta):
                    with contextlib.suppress(OSError, VmtrustError):
                        loaded = jsonsafe.loads(
                            folder.read(meta, MAX_RECORD_BYTES), max_bytes=MAX_RECORD_BYTES
                        )
                        content = loaded if isinstance(loaded, dict) else {}
                content["retired_at"] = format_date(now)
                content["retire_mode"] = mode
                data = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
                with (
                    root.subdir("retired") as retired,
                    retired.subdir(folder_name, create=True, mode=DIR_MODE) as target,
                ):
                    # record first: a crash leaves the image trusted, never recordless
                    target.write_atomic(meta, data, FILE_MODE)
                    if has_image:
                        folder.move(image, target, image)
                        target.sync()
                with contextlib.suppress(FileNotFoundError):
                    folder.remove(meta)
                images.remove_dir_if_empty(folder_name)
        except (OSError, Unexpected) as exc:
            raise self._error(exc) from None

    def purge(self, held: Held) -> None:
        folder_name, stem = self._pair(held, retired=True)
        try:
            with (
                self._open() as root,
                root.subdir("retired") as retired,
                retired.subdir(folder_name) as folder,
            ):
                present = [n for n in (f"{stem}.img", f"{stem}.json") if folder.regular(n)]
                for name in present:
                    folder.remove(name)
                retired.remove_dir_if_empty(folder_name)
        except (OSError, Unexpected) as exc:
            raise self._error(exc) from None

    def cleanup(self) -> list[str]:
        removed = []
        try:
            with self._open() as root:
                with root.subdir(".partial") as partial:
                    self._private(partial)
                    for name, mode in partial.entries():
                        removed.append(self._leftover(partial, name, mode))
                for area in ("images", "retired"):
                    with root.subdir(area) as top:
                        for name, mode in top.entries():
                            if stat.S_ISDIR(mode):
                                with contextlib.suppress(Unexpected), top.subdir(name) as folder:
                                    removed += self._orphans(folder)
        except (OSError, Unexpected) as exc:
            raise self._error(exc, "cannot clean up: ") from None
        return removed

    @staticmethod
    def _leftover(partial: Dir, name: str, mode: int) -> str:
        """Remove one name from ``.partial``: a link goes, never what it points to;
        a hard link goes, the file's other names keep it."""
        what = f"{partial.path(name)}, {partial.describe(name, mode)}"
        if stat.S_ISDIR(mode):
            partial.remove_tree(name)
            return f"{what}, and all in it (links inside removed, not followed)"
        partial.remove(name)
        if stat.S_ISREG(mode):
            return f"partial download {partial.path(name)}"
        return f"{what} (only the link itself)" if stat.S_ISLNK(mode) else what

    def _private(self, partial: Dir) -> None:
        """``.partial`` holds bytes not yet checked: the sync's own, nobody else's."""
        info = os.fstat(partial.fd)
        if info.st_uid != os.geteuid():
            raise LocalStoreError(
                f"local store {self.root}: .partial belongs to uid {info.st_uid}, not to the "
                f"sync's uid {os.geteuid()}; remove it"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(partial.fd, 0o700)

    def _orphans(self, folder: Dir) -> list[str]:
        """Images whose record was never written, and temporary files of record writes."""
        removed = []
        entries = dict(folder.entries())
        for name, mode in entries.items():
            if not stat.S_ISREG(mode):
                continue  # links and the like are reported by held(), not touched
            orphan = name.endswith(".img") and f"{name[:-4]}.json" not in entries
            if orphan or (name.startswith(".") and name.endswith(".tmp")):
                folder.remove(name)
                removed.append(f"orphan {folder.path(name)}")
        return removed

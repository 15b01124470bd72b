"""The local directory store, the embedded default.

For plain KVM/Xen sites, for sites whose existing vmcatcher event handlers
take images from a directory, and for trying vmtrust out.  Layout::

    <path>/images/<identifier>/<version>-<sha16>.img    trusted image bytes
    <path>/images/<identifier>/<version>-<sha16>.json   {"record": …, "seal": …}
    <path>/retired/<identifier>/…                       retired versions, same pair
    <path>/.partial/                                    downloads in progress

Crash safety: bytes are written under ``.partial`` and fsynced; the file is
renamed into ``images/``; the record is written last, atomically.  The record
is the commit point: an ``.img`` without its ``.json`` is an orphan of an
interrupted run and :meth:`cleanup` removes it, as it removes ``.partial``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.plan import Desired, Held
from glance_sync.stores.base import Finish, Store
from glance_sync.transfer import copy_stream
from vmtrust import fileio
from vmtrust.errors import ConfigError, VmtrustError
from vmtrust.imagelist import format_date, parse_date
from vmtrust.record import SealError, TrustRecord, check_seal

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def safe_name(text: str) -> str:
    """A file-system-safe name: the text itself when harmless, else a hash of it."""
    if _SAFE.match(text) and ".." not in text:
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class LocalStoreError(VmtrustError):
    exit_code = 41
    rule = "store"


class LocalStore(Store):
    name = "local"

    def __init__(
        self, path: Path, seal_keys: list[Ed25519PublicKey], target_format: str = ""
    ) -> None:
        self.root = Path(path).expanduser()
        self.seal_keys = seal_keys
        self.target_format = target_format
        try:
            for sub in ("images", "retired", ".partial"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"local store {self.root}: {exc.strerror or exc}") from None

    # --- reading ------------------------------------------------------------------

    def _read(self, meta: Path, retired: bool) -> Held:
        data_path = meta.with_suffix(".img")
        store_id = f"{meta.parent.name}/{meta.stem}"
        try:
            content = json.loads(meta.read_text(encoding="utf-8"))
            record = TrustRecord.from_dict(content["record"])
            seal = content.get("seal", "")
        except (OSError, ValueError, KeyError, TypeError, SealError) as exc:
            return Held(
                store_id=store_id,
                record=None,
                seal_ok=False,
                retired=retired,
                location=str(data_path),
                problem=f"unreadable trust record ({exc})",
            )
        retired_at = None
        if retired and isinstance(content.get("retired_at"), str):
            with contextlib.suppress(ValueError):
                retired_at = parse_date(content["retired_at"])
        problem = None
        try:
            check_seal(record, seal, self.seal_keys)
            if record.store_id != store_id:
                problem = f"record belongs to {record.store_id}, found at {store_id}"
            elif not data_path.is_file():
                problem = "image file missing"
            elif data_path.stat().st_size != record.size:
                problem = (
                    f"image file has {data_path.stat().st_size} bytes, "
                    f"the record says {record.size}"
                )
        except SealError as exc:
            problem = str(exc)
        return Held(
            store_id=store_id,
            record=record,
            seal_ok=problem is None,
            retired=retired,
            retired_at=retired_at,
            location=str(data_path),
            problem=problem,
        )

    def held(self) -> list[Held]:
        result = []
        for area, retired in (("images", False), ("retired", True)):
            for meta in sorted((self.root / area).glob("*/*.json")):
                result.append(self._read(meta, retired))
        return result

    def disk_format(self, source_format: str) -> str:
        return self.target_format or source_format

    def free_bytes(self) -> int | None:
        usage = shutil.disk_usage(self.root)
        return usage.free

    # --- writing ------------------------------------------------------------------

    def create(self, want: Desired, stream: IO[bytes], disk_format: str, finish: Finish) -> Held:
        identifier, version = want.identifier, want.image.version
        partial = self.root / ".partial" / f"{uuid.uuid4().hex}.img"
        try:
            with open(partial, "wb") as out:
                size, sha512 = copy_stream(stream, out.write, identifier)
                out.flush()
                os.fsync(out.fileno())
            store_id = f"{safe_name(identifier)}/{safe_name(version)}-{sha512[:16]}"
            record, seal = finish(store_id, size, sha512)
            target_dir = self.root / "images" / safe_name(identifier)
            target_dir.mkdir(exist_ok=True)
            data_path = target_dir / f"{safe_name(version)}-{sha512[:16]}.img"
            os.replace(partial, data_path)
            self._write_meta(data_path.with_suffix(".json"), record, seal)
        except OSError as exc:
            raise LocalStoreError(
                f"local store {self.root}: cannot store image {identifier}: {exc.strerror or exc}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return Held(store_id=store_id, record=record, seal_ok=True, location=str(data_path))

    def _write_meta(self, path: Path, record: TrustRecord, seal: str, **extra: str) -> None:
        body = {"record": record.__dict__, "seal": seal, **extra}
        fileio.write_atomic(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        meta = Path(held.location).with_suffix(".json")
        self._write_meta(meta, record, seal)
        return Held(store_id=held.store_id, record=record, seal_ok=True, location=held.location)

    def retire(self, held: Held, mode: str, now: datetime) -> None:
        source = Path(held.location)
        target_dir = self.root / "retired" / source.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        meta = source.with_suffix(".json")
        content: dict = {}
        with contextlib.suppress(OSError, ValueError):
            content = json.loads(meta.read_text(encoding="utf-8"))
        content["retired_at"] = format_date(now)
        content["retire_mode"] = mode
        if source.exists():
            os.replace(source, target_dir / source.name)
        fileio.write_atomic(
            target_dir / meta.name, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
        )
        with contextlib.suppress(FileNotFoundError):
            meta.unlink()
        with contextlib.suppress(OSError):
            source.parent.rmdir()

    def purge(self, held: Held) -> None:
        source = Path(held.location)
        for path in (source, source.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            source.parent.rmdir()

    def cleanup(self) -> list[str]:
        removed = []
        for leftover in (self.root / ".partial").iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed.append(f"partial download {leftover.name}")
        for area in ("images", "retired"):
            for data in (self.root / area).glob("*/*.img"):
                if not data.with_suffix(".json").exists():
                    with contextlib.suppress(OSError):
                        data.unlink()
                        removed.append(f"orphan {area}/{data.parent.name}/{data.name}")
        return removed

"""Per-target state (failing images, each target's last outcome) on the state database.

The state database learns targets natively (a ``target=`` keyword on
``record_images``/``failing_images`` and a per-target outcome; issue 16's
scale-out half).  Until a database has them, this thin layer keeps the same
facts in the tables it already has: the failing images of a target other than
``default`` under ``SUBSCRIPTION@TARGET`` (``@`` is in no subscription name),
and a target's outcome as the row ``@TARGET``.  Callers use only these
functions, so the switch is one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from glance_sync.report import ImageFailure
from glance_sync.state import FailedImage, StateDB
from vmtrust.safetext import redact

__all__ = ["TargetOutcome", "failing_images", "outcome", "record_images", "record_outcome"]

DEFAULT = "default"


@dataclass(frozen=True)
class TargetOutcome:
    """How a target's last pass ended."""

    name: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None


def _native(db: StateDB, method: str) -> bool:
    function = getattr(db, method, None)
    return function is not None and "target" in inspect.signature(function).parameters


def record_images(
    db: StateDB, name: str, failures: Iterable[ImageFailure], now: datetime, target: str
) -> None:
    """Replace the failing images of subscription ``name`` in ``target`` by these."""
    if _native(db, "record_images"):
        db.record_images(name, failures, now, target=target)  # type: ignore[call-arg]
    elif target == DEFAULT:
        db.record_images(name, failures, now)
    else:
        db.record_images(f"{name}@{target}", failures, now)


def failing_images(db: StateDB, name: str, target: str) -> list[FailedImage]:
    if _native(db, "failing_images"):
        return db.failing_images(name, target=target)  # type: ignore[call-arg]
    return db.failing_images(name if target == DEFAULT else f"{name}@{target}")


def record_outcome(db: StateDB, target: str, error: str | None, now: datetime) -> None:
    """A target's pass ended: ``error`` is None when all of it succeeded."""
    native = getattr(db, "record_target", None)
    if native is not None:
        native(target, error, now)
        return
    from glance_sync.state import _text

    values: dict[str, object] = {"last_attempt": _text(now), "last_error": redact(error or "")}
    if error is None:
        values["last_success"] = _text(now)
        values["last_error"] = None
    db._upsert(f"@{target}", **values)


def outcome(db: StateDB, target: str) -> TargetOutcome:
    native = getattr(db, "target_outcome", None)
    if native is not None:
        return native(target)  # type: ignore[no-any-return]
    row = db.get(f"@{target}")
    return TargetOutcome(target, row.last_attempt, row.last_success, row.last_error or None)

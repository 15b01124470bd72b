"""What the Glance store last saw of its images, so that most passes ask Glance only for changes.

Listing every managed image with all its properties is most of a no-op pass's
time, and it grows with the number of images.  Glance stamps ``updated_at`` on
every change to an image — a property, the status (deactivate, upload), the
visibility, ``os_hidden`` — and lists by it (``updated_at=gte:…``).  So a pass
can start from the last survey, kept in the state directory, and ask Glance
only for the managed images updated since, which is what any edit made
behind vmtrust's back, or by vmtrust itself after that survey, shows up as.

What an incremental listing cannot see is an image that left it: deleted,
its ``vmtrust_managed`` marker taken off, given to another owner.  A **full
reconcile** — the whole listing, which replaces the survey — runs every
``[store_glance] reconcile_passes`` passes or ``reconcile_hours`` hours,
whichever comes first, and whenever the survey is missing, unreadable, of
another Glance or project, or in doubt.  Between two of them such an image is
still believed held, so the plan neither re-creates nor retires it; the next
reconcile does what the plan then says.

The survey never vouches for a record: it keeps the image properties Glance
returned, and every pass checks every seal again (:func:`vmtrust.trust.check_binding`).
It keeps only what judging, retiring and sharing read (:data:`KEEP` and the
``vmtrust_*`` properties); a refresh fetches the whole image first.

Safety margins:

* the watermark is Glance's own ``updated_at`` (the newest the survey holds),
  never this host's clock, and each incremental listing reaches
  ``changes_margin`` seconds further back, for API servers whose clocks
  differ, updates in the same second and transactions that were still open
  when the last listing ran;
* an incremental listing must return at least the image that carries the
  watermark (the margin includes it).  A Glance that refuses the filter
  (HTTP 400), ignores it wrongly, or answers without that image (deleted
  meanwhile) gets a full listing instead;
* the file is private (0600, written as a new file and renamed over the old
  one), checked for its Glance endpoint, project and format; losing it or
  damaging it only forces a full reconcile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vmtrust import glanceprops as gp
from vmtrust.errors import GlanceError, InputError
from vmtrust.fileio import write_atomic

__all__ = ["Survey", "SurveyFile", "Surveyor", "filter_time", "glance_time", "trim"]

LOG = logging.getLogger("vmtrust.glance")
FORMAT = 1
#: Glance attributes the store reads of an image it holds (besides ``vmtrust_*``).
KEEP = frozenset(
    {
        "id",
        "owner",
        "status",
        "visibility",
        "os_hidden",
        "size",
        "virtual_size",
        "os_hash_algo",
        "os_hash_value",
        "updated_at",
        "name",
    }
)
#: how far ahead of this host's clock Glance's newest update may be before it is distrusted
FUTURE = timedelta(hours=1)
MAX_BYTES = 1 << 30  #: a survey larger than this is not read (10,000 images take ~20 MB)


def trim(image: dict[str, Any]) -> dict[str, Any]:
    """What the survey keeps of an image: what the store judges, retires and shares by."""
    return {k: v for k, v in image.items() if k in KEEP or k.startswith(gp.PREFIX)}


def glance_time(text: object) -> datetime | None:
    """Glance's ``updated_at`` (``2026-12-02T12:00:00Z``) as a UTC datetime; None if not one."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def filter_time(when: datetime) -> str:
    """A time as Glance's ``updated_at`` filter takes it (ISO 8601, UTC, whole seconds)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Survey:
    """The managed images of one project of one Glance, as last seen."""

    images: dict[str, dict[str, Any]] = field(default_factory=dict)  #: id → trimmed image
    full_at: float = 0.0  #: this host's clock (epoch seconds) at the last full reconcile
    passes: int = 0  #: incremental passes since that reconcile

    def watermark(self) -> datetime | None:
        """The newest ``updated_at`` the survey holds (Glance's clock), None without one."""
        times = [t for image in self.images.values() if (t := glance_time(image.get("updated_at")))]
        return max(times, default=None)


@dataclass
class SurveyFile:
    """The survey of one (Glance endpoint, project) in the sync's state directory."""

    state_dir: Path
    reconcile_passes: int = 6  #: a full listing at least every this many passes (1: always)
    reconcile_hours: float = 6.0  #: ... and at least this often (0: no time limit)
    margin: timedelta = timedelta(seconds=120)  #: how much further back each listing reaches
    endpoint: str = ""  #: set once known (the first request resolves it)
    project: str = ""

    @property
    def path(self) -> Path:
        key = hashlib.sha256(f"{self.endpoint}\n{self.project}".encode()).hexdigest()[:16]
        return self.state_dir / f"glance-survey-{key}.json"

    def load(self, now: float | None = None) -> Survey | None:
        """The survey to build on, or None when this pass must list everything (why: logged)."""
        if self.reconcile_passes <= 1:
            return None
        survey = self._read()
        return None if survey is None else self.check(survey, now)

    def check(self, survey: Survey, now: float | None = None) -> Survey | None:
        """``survey`` unless a full reconcile is due (passes or hours), else None."""
        if self.reconcile_passes <= 1:
            return None
        age = (time.time() if now is None else now) - survey.full_at
        if survey.passes + 1 >= self.reconcile_passes:
            LOG.info("glance: full listing (every %d passes)", self.reconcile_passes)
            return None
        if age < 0 or (self.reconcile_hours > 0 and age >= self.reconcile_hours * 3600):
            LOG.info("glance: full listing (the last one %.1f h ago)", age / 3600)
            return None
        return survey

    def _read(self) -> Survey | None:
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            LOG.warning("glance: survey %s not read (%s); listing every image", path, exc.strerror)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                LOG.warning("glance: survey %s is not a file of a survey's size; ignored", path)
                return None
            if info.st_mode & 0o077:
                LOG.warning("glance: survey %s is open to other users; ignored", path)
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
        except OSError as exc:
            LOG.warning("glance: survey %s not read (%s); listing every image", path, exc.strerror)
            return None
        finally:
            os.close(fd)
        try:
            return self._parse(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            LOG.warning("glance: survey %s unreadable (%s); listing every image", path, exc)
            return None

    def _parse(self, doc: Any) -> Survey | None:
        if doc.get("format") != FORMAT:
            return None
        if doc.get("endpoint") != self.endpoint or doc.get("project") != self.project:
            return None
        images = doc["images"]
        full_at, passes = doc["full_at"], doc["passes"]
        if not isinstance(images, dict) or not isinstance(passes, int):
            raise TypeError("images or passes of the wrong type")
        if not isinstance(full_at, int | float):
            raise TypeError("full_at is not a number")
        for image_id, image in images.items():
            # What Glance's listing guarantees of each image, checked as a sanity test.
            if not isinstance(image, dict) or image.get("id") != image_id:
                raise ValueError(f"image {image_id!r} malformed")
            if image.get("owner") != self.project or image.get(gp.MANAGED) != "true":
                raise ValueError(f"image {image_id!r} is not a managed image of the project")
        return Survey(images, float(full_at), passes)

    def save(self, survey: Survey) -> None:
        """Write ``survey`` atomically, private to the sync; a failure is a warning only."""
        doc = {
            "format": FORMAT,
            "endpoint": self.endpoint,
            "project": self.project,
            "full_at": survey.full_at,
            "passes": survey.passes,
            "images": survey.images,
        }
        path = self.path
        try:
            # dumps, not dump: only the one-shot encoder is json's C one (5x faster)
            data = json.dumps(doc, separators=(",", ":")).encode()
            write_atomic(path, data, mode=0o600)  # removes its temporary file on failure
        except (InputError, TypeError, ValueError) as exc:
            LOG.warning("glance: survey %s not saved (%s); the next pass lists every image",
                        path, exc)  # fmt: skip
            self.forget()

    def stamp(self) -> tuple[int, int, int] | None:
        """The file's identity and version (inode, mtime, size); None when absent."""
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def forget(self) -> None:
        """Remove the survey: the next pass lists everything."""
        with contextlib.suppress(OSError):
            self.path.unlink()


class Surveyor:
    """A store's listing of its managed images: the changes since the survey, or all.

    ``managed(since)`` lists the managed images (updated at or after ``since``, or
    all with None); ``endpoint()`` names the Glance, which picks the survey file.
    Without a survey file (readers, tests) every listing is a full one.
    """

    def __init__(
        self,
        file: SurveyFile | None,
        managed: Callable[[datetime | None], list[dict[str, Any]]],
        endpoint: Callable[[], str],
    ) -> None:
        self.file = file
        self._managed = managed
        self._endpoint = endpoint
        self.survey: Survey | None = None  #: as last listed (and saved)
        self._stamp: tuple[int, int, int] | None = None  #: the file as this process wrote it
        self.full_listing = False  #: whether the pass's first listing listed every image
        self.last_full = False  #: whether the last listing did
        self._lock = threading.Lock()

    def listing(
        self, *, new_pass: bool, full: bool = False
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(what Glance returned now, whole; every managed image — the survey's copy of
        those it did not return).  ``new_pass``: the first listing of a pass, which
        counts towards the next full reconcile; ``full`` forces one."""
        file = self.file
        if file is None:
            listed = self._managed(None)
            self.full_listing = self.last_full = True
            return listed, listed
        if not file.endpoint:
            file.endpoint = self._endpoint()
        prior = None if full else self._prior(file)
        changed = self._changes(prior, file.margin) if prior is not None else None
        if prior is None or changed is None:
            survey = Survey(full_at=time.time())
            listed = self._managed(None)
        else:
            survey = Survey(dict(prior.images), prior.full_at, prior.passes + new_pass)
            listed = changed
        self.last_full = changed is None
        if new_pass or full:
            self.full_listing = self.last_full
        survey.images.update((image["id"], trim(image)) for image in listed)
        with self._lock:
            self.survey = survey
        self.save()
        whole = {image["id"]: image for image in listed}
        return listed, [whole.get(i, image) for i, image in survey.images.items()]

    def _prior(self, file: SurveyFile) -> Survey | None:
        """The survey to build on: this process's own while the file is as it wrote it."""
        if not file.endpoint:
            return None
        if self.survey is not None and self._stamp is not None and self._stamp == file.stamp():
            return file.check(self.survey)
        self.survey = None
        return file.load()

    def _changes(self, prior: Survey, margin: timedelta) -> list[dict[str, Any]] | None:
        """The managed images updated since ``prior`` (with the margin); None when a full
        listing is needed: no watermark, a Glance that refuses the filter, or an answer
        without the newest image the survey knows (deleted, or the filter not honoured)."""
        mark = prior.watermark()
        if mark is None:
            return None
        if mark > datetime.now(UTC) + FUTURE:
            # A Glance clock that ran ahead once would hide every later update until the
            # next reconcile: asking by it is not safe.
            LOG.warning("glance: images updated at %s, in the future; listing every image", mark)
            return None
        try:
            changed = self._managed(mark - margin)
        except GlanceError as exc:
            if exc.status != 400:
                raise
            LOG.warning("glance: listing by updated_at refused (%s); listing every image", exc)
            return None
        if not any((t := glance_time(i.get("updated_at"))) and t >= mark for i in changed):
            LOG.info("glance: the newest image of the survey was not listed; listing every image")
            return None
        return changed

    def cached(self, image_id: str) -> dict[str, Any] | None:
        """The survey's copy of an image (what judging, retiring and sharing read)."""
        survey = self.survey
        return survey.images.get(image_id) if survey is not None else None

    def forget(self, image_id: str) -> None:
        """An image the store deleted (saved with the next listing, or :meth:`save`)."""
        with self._lock:
            if self.survey is not None:
                self.survey.images.pop(image_id, None)

    def save(self) -> None:
        file, survey = self.file, self.survey
        if file is None or survey is None or not file.endpoint:
            return
        with self._lock:
            file.save(survey)
        self._stamp = file.stamp()

"""Site hooks with vmcatcher's ``VMCATCHER_EVENT_*`` environment.

Sites have years of vmcatcher event handlers (gpvcmupdate, local scripts) that
take images from a directory.  With the local store (``[store_local] hook``)
vmtrust runs such a handler after it stores an image (``AvailablePostfix``) and
after it retires one (``ExpirePostfix``), with the variables vmcatcher set and
``VMCATCHER_EVENT_FILENAME`` naming the image file, so those scripts keep
working.  The other stores run no hook: Glance and EC2 take the image
themselves, and a handler such as glancepush would upload it a second time.
Unlike vmcatcher the handler is run without a shell (no injection through
list data) and with a timeout; its failure is logged and does not undo the
store operation.  The program is checked when the sync starts: an absolute
path to an executable file, so it does not depend on the working directory.
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from glance_sync.plan import Held
from vmtrust.errors import ConfigError
from vmtrust.imagelist import Image, ImageList

__all__ = ["SESSION", "TIMEOUT", "check", "event_environment", "run"]

LOG = logging.getLogger("vmtrust.hooks")
SESSION = str(uuid.uuid1())
TIMEOUT = 600

_IMAGE_FIELDS = {
    "DC_IDENTIFIER": "dc:identifier",
    "DC_TITLE": "dc:title",
    "DC_DESCRIPTION": "dc:description",
    "HV_URI": "hv:uri",
    "HV_SIZE": "hv:size",
    "HV_VERSION": "hv:version",
    "HV_HYPERVISOR": "hv:hypervisor",
    "HV_FORMAT": "hv:format",
    "SL_ARCH": "sl:arch",
    "SL_OS": "sl:os",
    "SL_OSVERSION": "sl:osversion",
    "SL_OSNAME": "sl:osname",
    "SL_COMMENTS": "sl:comments",
    "SL_CHECKSUM_SHA512": "sl:checksum:sha512",
    "AD_MPURI": "ad:mpuri",
}


def event_environment(
    event: str, image: Image | None, imagelist: ImageList | None, held: Held
) -> dict[str, str]:
    """The variables vmcatcher exported for ``event`` (only non-empty ones, as it did)."""
    env = {"VMCATCHER_EVENT_TYPE": event, "VMCATCHER_EVENT_UUID_SESSION": SESSION}
    record = held.record
    raw: dict[str, Any] = image.raw if image else {}
    for name, key in _IMAGE_FIELDS.items():
        value = raw.get(key)
        if value not in (None, ""):
            env[f"VMCATCHER_EVENT_{name}"] = str(value)
    if record is not None:
        env.setdefault("VMCATCHER_EVENT_DC_IDENTIFIER", record.image_identifier)
        env.setdefault("VMCATCHER_EVENT_DC_TITLE", record.title)
        env.setdefault("VMCATCHER_EVENT_HV_VERSION", record.image_version)
        env["VMCATCHER_EVENT_IL_DC_IDENTIFIER"] = record.list_identifier
        if record.vo:
            env["VMCATCHER_EVENT_VO"] = record.vo
    elif imagelist is not None:
        env["VMCATCHER_EVENT_IL_DC_IDENTIFIER"] = imagelist.identifier
    if imagelist is not None and imagelist.vo and "VMCATCHER_EVENT_VO" not in env:
        env["VMCATCHER_EVENT_VO"] = imagelist.vo
    env["VMCATCHER_EVENT_FILENAME"] = held.location
    env["VMTRUST_STORE_ID"] = held.store_id
    return {k: v for k, v in env.items() if v}


def check(command: str, option: str) -> Path | None:
    """The hook program ``option`` names (None when empty), or one line saying what is wrong."""
    if not command.strip():
        return None
    path = Path(command.strip()).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{option} {command}: not an absolute path")
    if not path.is_file():
        raise ConfigError(f"{option} {command}: no such program")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"{option} {command}: not executable")
    return path


def run(
    command: Path | None,
    event: str,
    image: Image | None,
    imagelist: ImageList | None,
    held: Held,
) -> int | None:
    """Run the site hook for ``event``; return its exit status (None if no hook)."""
    if command is None:
        return None
    env = {**os.environ, **event_environment(event, image, imagelist, held)}
    try:
        result = subprocess.run(
            [str(command)],
            env=env,
            timeout=TIMEOUT,
            capture_output=True,
            text=True,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOG.error("hook %s for %s of %s failed: %s", command, event, held.store_id, exc)
        return -1
    for line in (result.stdout + result.stderr).splitlines():
        LOG.info("hook %s: %s", event, line)
    if result.returncode != 0:
        LOG.error(
            "hook %s for %s of %s exited with %d", command, event, held.store_id, result.returncode
        )
    return result.returncode

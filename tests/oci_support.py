"""Helpers for OCI sync tests: the real registry as a fixture, subscriptions, store contents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import sync_settings
from oci_registry import LocalRegistry, available

from vmtrust.policy import parse_subscriptions

#: A small qcow2 disk: what EGI pushes (inspection checks the format).
QCOW2_HEADER_SIZE = 1 << 16


def require_registry() -> None:
    why_not = available()
    if why_not:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"the OCI registry is required here: {why_not}")
        pytest.skip(why_not)


def qcow2_disk(tmp_path: Path, name: str = "disk", size: str = "1M", fill: bytes = b"") -> bytes:
    """A real qcow2 image made by qemu-img (with ``fill`` written at offset 0)."""
    import subprocess

    raw = tmp_path / f"{name}.raw"
    raw.write_bytes(fill.ljust(1024 * 1024, b"\0"))
    out = tmp_path / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


def subscriptions(text: str) -> tuple[Any, ...]:
    return parse_subscriptions(text, "subs.yaml")


def oci_subscription(
    registry: LocalRegistry,
    *,
    trust: str,
    name: str = "egi",
    repository: str | None = "egi_vm_images/ubuntu",
    project: str | None = None,
    extra: str = "",
) -> Any:
    where = f"repository: {repository}" if project is None else f"project: {project}"
    text = (
        "subscriptions:\n"
        f"  - name: {name}\n"
        "    type: oci\n"
        f"    registry: {registry.url}\n"
        f"    {where}\n"
        f"    trust: {trust}\n"
        "    vo: ops\n"
    )
    for line in extra.strip("\n").splitlines():
        text += f"    {line}\n"
    (sub,) = subscriptions(text)
    return sub


def make_service(tmp_path: Path, ca_dir: Path, *, store: Any = None) -> Any:
    """A sync service with a fresh seal key and a local store (or ``store``)."""
    from glance_sync.service import SyncService
    from glance_sync.stores.local import LocalStore
    from vmtrust.record import generate_key_pair, load_private_key

    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    settings = sync_settings(tmp_path, ca_dir, key)
    settings.registry_deadline = 60
    service = SyncService(settings, store or LocalStore(tmp_path / "store", [key.public_key()]))
    service.key = key  # type: ignore[attr-defined]  # for the test
    return service


def trusted(service: Any) -> dict[str, tuple[str, str]]:
    """identifier → (version, basis) of the trusted images the store holds."""
    return {
        h.record.image_identifier: (h.record.image_version, h.record.basis)
        for h in service.store.held()
        if h.record and h.seal_ok and not h.retired
    }

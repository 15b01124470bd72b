"""The registry half of a ``type: oci`` subscription, read and validated with the rest.

::

    - name: egi-base
      type: oci
      registry: https://registry.egi.eu
      project: egi_vm_images          # a Harbor project, or repository: egi_vm_images/ubuntu
      tag_pattern: '[^-]*'            # or tags: ['22.04', 'sha256:…']; neither: every tag
      trust: cosign                   # or hepix (url + endorsers), or registry
      keys: [/etc/vmtrust/cosign/egi.pub]
      credentials: {username: 'robot$sync', password_file: /etc/vmtrust/egi.password}

Every problem is added to the caller's :class:`~vmtrust.errors.Problems`, so
the site sees them all at once with the rest of the file's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vmtrust.cosign import CosignKey, load_key
from vmtrust.errors import OciReferenceError, Problems, VmtrustError
from vmtrust.ociref import is_digest, is_repository, is_tag, registry_base
from vmtrust.urls import host_problem

__all__ = ["OCI_KEYS", "TRUST_MODES", "OciSource", "oci_source"]

TRUST_MODES = ("hepix", "cosign", "registry")
#: Keys only a subscription of type oci has.
OCI_KEYS = {
    "registry",
    "repository",
    "project",
    "tags",
    "tag_pattern",
    "keys",
    "signed_registry",
    "valid_days",
}


@dataclass(frozen=True)
class OciSource:
    """Where an OCI subscription's images live and which of them it follows."""

    registry: str  #: ``https://host[:port]``
    repository: str | None = None  #: one repository …
    project: str | None = None  #: … or every repository of a Harbor project
    tags: tuple[str, ...] = ()  #: tags or ``sha256:`` digests; empty: every tag …
    tag_pattern: str | None = None  #: … or those matching this (whole-tag) pattern
    keys: tuple[CosignKey, ...] = field(default=(), compare=False)  #: for trust: cosign
    signed_registry: str | None = None  #: host the images were signed under, if not this one
    valid_days: int = 7  #: how long records stay valid without a new listing

    @property
    def host(self) -> str:
        return urlsplit(self.registry).netloc.lower()

    @property
    def where(self) -> str:
        """``host/repository`` or ``host/project``: what the subscription reads."""
        return f"{self.host}/{self.repository or self.project}"


def _registry(p: Problems, value: Any, path: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        p.add(f"{path}.registry", "missing: the registry's URL, like https://registry.example.org")
        return None
    try:
        return registry_base(value)[0]
    except OciReferenceError as exc:
        p.add(f"{path}.registry", str(exc).removeprefix("registry "))
        return None


def _tags(p: Problems, value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        p.add(f"{path}.tags", "must be a non-empty list of tags or sha256: digests")
        return ()
    result = []
    for index, item in enumerate(value):
        if is_tag(item) or is_digest(item):
            result.append(item)
        else:
            p.add(f"{path}.tags[{index}]", f"not a tag or sha256:<64 hex> digest: {item!r}")
    return tuple(result)


def _pattern(p: Problems, value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        p.add(f"{path}.tag_pattern", "must be a non-empty regular expression")
        return None
    try:
        re.compile(value)
    except re.error as exc:
        p.add(f"{path}.tag_pattern", f"not a regular expression: {exc}")
        return None
    return value


def _keys(p: Problems, value: Any, trust: str, path: str) -> tuple[CosignKey, ...]:
    if trust != "cosign":
        if value is not None:
            p.add(f"{path}.keys", "only with trust: cosign")
        return ()
    if not isinstance(value, list) or not value:
        p.add(f"{path}.keys", "trust: cosign needs the public key files that may sign (keys:)")
        return ()
    keys = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            p.add(f"{path}.keys[{index}]", "not a file name")
            continue
        try:
            keys.append(load_key(item))
        except VmtrustError as exc:
            p.add(f"{path}.keys[{index}]", str(exc))
    return tuple(keys)


def oci_source(p: Problems, obj: dict[str, Any], trust: str, path: str) -> OciSource | None:
    """The registry settings of a ``type: oci`` subscription (None if any is wrong)."""
    before = len(p.items)
    registry = _registry(p, obj.get("registry"), path)
    repository, project = obj.get("repository"), obj.get("project")
    if (repository is None) == (project is None):
        p.add(path, "give one of repository: (a repository) or project: (a Harbor project)")
    for key, value in (("repository", repository), ("project", project)):
        if value is not None and not is_repository(value):
            p.add(f"{path}.{key}", f"not a valid repository name: {value!r}")
    if project is not None and isinstance(project, str) and "/" in project:
        p.add(f"{path}.project", "a project name has no '/'")
    tags = _tags(p, obj.get("tags"), path)
    pattern = _pattern(p, obj.get("tag_pattern"), path)
    if tags and pattern:
        p.add(path, "give tags: or tag_pattern:, not both")
    if trust == "hepix" and (tags or pattern):
        p.add(path, "with trust: hepix the signed list names the images (no tags or tag_pattern)")
    keys = _keys(p, obj.get("keys"), trust, path)
    signed = obj.get("signed_registry")
    if signed is not None:
        if trust != "cosign":
            p.add(f"{path}.signed_registry", "only with trust: cosign")
        elif not isinstance(signed, str) or host_problem(signed.rpartition(":")[0] or signed):
            p.add(f"{path}.signed_registry", f"not a host[:port]: {signed!r}")
    days = obj.get("valid_days", 7)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        p.add(f"{path}.valid_days", f"must be a whole number of days from 1 to 365, not {days!r}")
    if len(p.items) > before or registry is None:
        return None
    return OciSource(
        registry=registry,
        repository=repository,
        project=project,
        tags=tags,
        tag_pattern=pattern,
        keys=keys,
        signed_registry=signed.lower() if isinstance(signed, str) else None,
        valid_days=days,
    )

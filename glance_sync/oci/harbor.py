"""Which repositories and tags a project holds: Harbor's API where the registry is Harbor.

The OCI distribution API has no notion of a project: a subscription to a
Harbor project (EGI's ``egi_vm_images``) needs the repositories in it.  Where
the registry answers Harbor's ``/api/v2.0/systeminfo`` this adapter asks
Harbor (``/projects/<p>/repositories``, then each repository's artifacts with
their tags, pages followed through ``Link: rel="next"``); elsewhere it falls
back to the distribution API's ``/v2/_catalog``, filtered by ``<project>/``,
and each repository's tag list.

Only names come from here.  Manifests, digests, annotations and signatures are
always read through the distribution API and checked there
(:mod:`glance_sync.oci.source`): what Harbor's API says about an artefact is a
hint, never trusted.
"""

from __future__ import annotations

from urllib.parse import quote

from glance_sync.httpclient import Deadline
from glance_sync.oci.registry import Registry
from vmtrust.errors import RegistryError, RegistryNotFound
from vmtrust.ociref import is_repository, is_tag

__all__ = ["API", "PAGE_SIZE", "SCOPE", "project_tags"]

API = "/api/v2.0"
SCOPE = "harbor-api"  #: Harbor's API takes the credentials directly (no token handshake)
PAGE_SIZE = 100


def _is_harbor(registry: Registry, deadline: Deadline) -> bool:
    """Whether the registry serves Harbor's API (``/api/v2.0/systeminfo`` answers)."""
    registry.authorise(SCOPE, registry.credentials.basic_auth())
    try:
        response = registry.request(f"{API}/systeminfo", deadline, scope=SCOPE)
    except RegistryNotFound:
        return False
    info = registry.read_json(response, 64 * 1024, "Harbor systeminfo")
    return isinstance(info, dict) and isinstance(info.get("harbor_version"), str)


def _repositories(registry: Registry, project: str, deadline: Deadline) -> list[str]:
    names = []
    path = f"{API}/projects/{quote(project, safe='')}/repositories"
    params = {"page": "1", "page_size": str(PAGE_SIZE)}
    for page in registry.pages(path, deadline, scope=SCOPE, key=None, params=params):
        for item in page:
            name = item.get("name") if isinstance(item, dict) else None
            if is_repository(name) and name.startswith(f"{project}/"):
                names.append(name)
            else:
                raise RegistryError(
                    f"registry {registry.base}: Harbor listed {str(name)[:80]!r} in project "
                    f"{project}; refused"
                )
    return names


def _tags(registry: Registry, project: str, repository: str, deadline: Deadline) -> list[str]:
    # Harbor wants a repository name with '/' URL-encoded twice.
    inner = quote(quote(repository.removeprefix(f"{project}/"), safe=""), safe="")
    path = f"{API}/projects/{quote(project, safe='')}/repositories/{inner}/artifacts"
    params = {"page": "1", "page_size": str(PAGE_SIZE), "with_tag": "true"}
    tags = []
    for page in registry.pages(path, deadline, scope=SCOPE, key=None, params=params):
        for artifact in page:
            for tag in (artifact.get("tags") or []) if isinstance(artifact, dict) else []:
                name = tag.get("name") if isinstance(tag, dict) else None
                if is_tag(name):
                    tags.append(name)
    return tags


def project_tags(registry: Registry, project: str, deadline: Deadline) -> dict[str, list[str]]:
    """repository → its tags, for every repository of ``project``."""
    if _is_harbor(registry, deadline):
        return {
            repo: _tags(registry, project, repo, deadline)
            for repo in _repositories(registry, project, deadline)
        }
    repositories = [r for r in registry.catalog(deadline) if r.startswith(f"{project}/")]
    return {repo: registry.tags(repo, deadline) for repo in repositories if is_repository(repo)}

"""What runs on worker nodes now that should not: the audit behind ``vmtrust audit``.

The nova filter decides when a server is scheduled; after that nothing looks
again.  An image retired after a revocation keeps running in the servers
booted from it, a rebuild onto the same image is never scheduled, rescue never
reaches the scheduler, and a volume-backed server may predate the filter's
refusal.  The audit lists, through nova's and Glance's APIs (openstacksdk,
admin credentials), every server that is a worker server — on a flavour with
``vmtrust:trusted_only``, or on a host of an aggregate with
``vmtrust_trusted_only`` (:mod:`vmtrust.enforcement`, the filter's own rule) —
and reports each one whose root disk is not a trusted image *now*:

========== ============================================================== =================
reason     what                                                           since
========== ============================================================== =================
retired    the sync retired the image (revoked, replaced, approval gone)  ``vmtrust_retired_at``
expired    the record's expiry passed                                     the expiry
seal       the seal does not verify or is bound to other bytes or id      the image's update
inactive   Glance status or trust state is not active / trusted           the image's update
not-vmtrust no trust record, or owned by a project the site does not trust the server's launch
deleted    the image is gone from Glance                                  the server's launch
volume     the root disk is a volume                                      the server's launch
rescue     the server is in rescue (booted from a rescue image)           the server's update
========== ============================================================== =================

The trust judgement is :func:`vmtrust.glanceprops.judge` (the one rule of
:mod:`vmtrust.trust` after Glance's own checks), the one the filter and launch
use; its :class:`~vmtrust.trust.Code` gives the reason.  Cost: nova's server
list, paged (``page_size`` per call), one aggregate list, one Glance look-up
per distinct image, and one attachment list for each worker server that has
volumes attached and an image (to tell whether a volume is its root) —
whatever the number of servers per image.

Servers that never ran (no host: refused or still scheduling) are skipped;
shelved-offloaded ones are not (unshelving brings them back).  Any API error
stops the audit (:class:`AuditError`) before any action: an action is only
ever taken on a complete, verified picture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import clouds, enforcement, glanceprops
from vmtrust.errors import AuditError
from vmtrust.trust import Code

__all__ = [
    "ACTIONS",
    "COMPUTE_HEADERS",
    "DELETED",
    "EXPIRED",
    "INACTIVE",
    "NOT_VMTRUST",
    "RESCUE",
    "RETIRED",
    "SEAL",
    "VOLUME",
    "Finding",
    "Report",
    "act",
    "audit",
    "log_action",
    "servers",
]

LOG = logging.getLogger(__name__)

#: 2.47: the flavour's extra specs inside the server; 2.73: lock with a reason.
COMPUTE_HEADERS = {"OpenStack-API-Version": "compute 2.79"}
ACTIONS = ("none", "stop", "shelve", "lock")

RETIRED = "retired"
EXPIRED = "expired"
SEAL = "seal"
INACTIVE = "inactive"
NOT_VMTRUST = "not-vmtrust"
DELETED = "deleted"
VOLUME = "volume"
RESCUE = "rescue"

_BY_CODE = {
    Code.NO_RECORD: NOT_VMTRUST,
    Code.OWNER: NOT_VMTRUST,
    Code.STATUS: INACTIVE,
    Code.STATE: INACTIVE,
    Code.SEAL: SEAL,
    Code.EXPIRED: EXPIRED,
}
#: What an action does not need to do again, by server status.
_DONE = {
    "stop": ("SHUTOFF", "SHELVED", "SHELVED_OFFLOADED"),
    "shelve": ("SHELVED", "SHELVED_OFFLOADED"),
}
_VERB = {"stop": "stopped", "shelve": "shelved", "lock": "locked"}


@dataclass
class Finding:
    server: str
    name: str
    project: str
    host: str
    image: str  #: the server's image id; empty for a server booted from a volume
    reason: str  #: one of RETIRED … RESCUE
    detail: str  #: the exact reason, e.g. judge()'s
    since: str  #: UTC, ``YYYY-MM-DDTHH:MM:SSZ``; empty when unknown
    status: str  #: the server's status when listed
    locked: bool = False
    action: str = ""  #: what ``act`` did (or would do) to the server


@dataclass
class Report:
    findings: list[Finding]
    servers: int  #: listed
    worker_servers: int  #: worker servers checked
    images: int  #: distinct images looked up in Glance


def _when(text: Any) -> str:
    """An API timestamp (nova's or Glance's, with or without zone) as ``…Z`` in UTC."""
    if not isinstance(text, str) or not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _call(conn: Any, service: str, method: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
    if service == "compute":
        kw["headers"] = COMPUTE_HEADERS
    return clouds.request(conn, service, method, url, ok, error=AuditError, **kw)


def _json(reply: Any, what: str) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        raise AuditError(f"{what}: the reply is not JSON") from None
    if not isinstance(body, dict):
        raise AuditError(f"{what}: the reply is not a JSON object")
    return body


def servers(conn: Any, page_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Every server of every project, in pages of ``page_size`` (nova caps it at max_limit)."""
    params: dict[str, Any] = {"all_tenants": "True", "limit": page_size}
    seen: set[str] = set()
    while True:
        reply = _call(conn, "compute", "GET", "/servers/detail", (200,), params=params)
        body = _json(reply, "nova server list")
        yield from body.get("servers", [])
        following = [link for link in body.get("servers_links", []) if link.get("rel") == "next"]
        if not following:
            return
        marker = parse_qs(urlparse(following[0].get("href", "")).query).get("marker", [""])[0]
        if not marker or marker in seen:
            raise AuditError(f"nova server list: paging does not advance (marker {marker!r})")
        seen.add(marker)
        params = {**params, "marker": marker}


def _trusted_hosts(conn: Any) -> set[str]:
    """Hosts of aggregates whose metadata marks them (``vmtrust_trusted_only``)."""
    body = _json(_call(conn, "compute", "GET", "/os-aggregates", (200,)), "nova aggregates")
    return {
        host
        for aggregate in body.get("aggregates", [])
        if enforcement.aggregate_enforces(aggregate.get("metadata"))
        for host in aggregate.get("hosts") or []
    }


def _is_worker(server: dict[str, Any], hosts: set[str]) -> bool:
    """Whether the server is a worker server; what nova hides stops the audit, not skips it."""
    flavor = server.get("flavor") or {}
    if "extra_specs" not in flavor:
        raise AuditError(
            f"server {server.get('id')}: nova did not show its flavour's extra specs "
            "(policy os_compute_api:servers:show:flavor-extra-specs): use admin credentials"
        )
    if "OS-EXT-SRV-ATTR:host" not in server:
        raise AuditError(
            f"server {server.get('id')}: nova did not show its host (policy "
            "os_compute_api:os-extended-server-attributes): use admin credentials"
        )
    host = server.get("OS-EXT-SRV-ATTR:host")
    return enforcement.flavour_enforces(flavor["extra_specs"]) or host in hosts


def _ran(server: dict[str, Any]) -> bool:
    return bool(server.get("OS-EXT-SRV-ATTR:host")) or server.get("status") == "SHELVED_OFFLOADED"


def _image_id(server: dict[str, Any]) -> str:
    image = server.get("image")
    return str(image.get("id") or "") if isinstance(image, dict) else ""


def _root_volume(conn: Any, server: dict[str, Any]) -> str | None:
    """The volume the server boots from, if any ("" when nova does not say which it is)."""
    if not _image_id(server):
        return ""  # nova records no image for a server booted from a volume
    if not server.get("os-extended-volumes:volumes_attached"):
        return None
    root = server.get("OS-EXT-SRV-ATTR:root_device_name")
    url = f"/servers/{server['id']}/os-volume_attachments"
    body = _json(_call(conn, "compute", "GET", url, (200,)), f"nova {url}")
    for attachment in body.get("volumeAttachments", []):
        if root and attachment.get("device") == root:
            return str(attachment.get("volumeId", ""))
    return None if root else ""  # no root device name: cannot tell, so fail closed


class _Images:
    """One Glance look-up per distinct image id, judged by the one rule."""

    def __init__(self, conn: Any, keys: list[Ed25519PublicKey], owners: list[str], now: datetime):
        self.conn, self.keys, self.owners, self.now = conn, keys, owners, now
        self.verdicts: dict[str, tuple[str, str, str] | None] = {}

    def problem(self, image_id: str) -> tuple[str, str, str] | None:
        """(reason, detail, since) when the image is not trusted now, else None."""
        if image_id not in self.verdicts:
            self.verdicts[image_id] = self._judge(image_id)
        return self.verdicts[image_id]

    def _judge(self, image_id: str) -> tuple[str, str, str] | None:
        reply = _call(self.conn, "image", "GET", f"/images/{image_id}", (200, 404))
        if reply.status_code == 404:
            return DELETED, "not in Glance (deleted, or hidden from these credentials)", ""
        image = _json(reply, f"Glance image {image_id}")
        verdict = glanceprops.judge(image, self.keys, self.now, owners=self.owners)
        if verdict.trusted:
            return None
        if image.get(glanceprops.STATE) == "retired":
            return RETIRED, verdict.reason, _when(image.get(glanceprops.RETIRED_AT))
        reason = _BY_CODE.get(verdict.code, SEAL)
        if reason == EXPIRED and verdict.record is not None:
            return reason, verdict.reason, verdict.record.expires
        if reason in (SEAL, INACTIVE):
            return reason, verdict.reason, _when(image.get("updated_at"))
        return reason, verdict.reason, ""


def _finding(server: dict[str, Any], reason: str, detail: str, since: str) -> Finding:
    return Finding(
        server=str(server.get("id")),
        name=str(server.get("name", "")),
        project=str(server.get("tenant_id", "")),
        host=str(server.get("OS-EXT-SRV-ATTR:host") or ""),
        image=_image_id(server),
        reason=reason,
        detail=detail,
        since=since,
        status=str(server.get("status", "")),
        locked=bool(server.get("locked")),
    )


def audit(
    conn: Any,
    keys: Iterable[Ed25519PublicKey],
    owners: Iterable[str],
    *,
    now: datetime | None = None,
    page_size: int = 1000,
) -> Report:
    """Every worker server whose root disk is not a trusted image now; nothing is changed."""
    keys, owners = list(keys), list(owners)
    if not keys or not owners:
        raise AuditError("audit: no seal keys or trusted owners given: every image would fail")
    if page_size < 1:
        raise AuditError(f"audit: page size {page_size}: must be at least 1")
    images = _Images(conn, keys, owners, now or datetime.now(UTC))
    hosts = _trusted_hosts(conn)
    findings: list[Finding] = []
    listed = workers = 0
    for server in servers(conn, page_size):
        listed += 1
        if not _is_worker(server, hosts) or not _ran(server):
            continue
        workers += 1

        launched = _when(server.get("OS-SRV-USG:launched_at") or server.get("created"))
        if server.get("OS-EXT-STS:vm_state") == "rescued":
            detail = "in rescue: runs a rescue image nova did not schedule"
            findings.append(_finding(server, RESCUE, detail, _when(server.get("updated"))))
        root = _root_volume(conn, server)
        if root is not None:
            detail = f"boots from volume {root}" if root else "boots from a volume"
            findings.append(_finding(server, VOLUME, detail, launched))
            continue  # its image, if any, is not what it runs
        problem = images.problem(_image_id(server))
        if problem is not None:
            reason, detail, since = problem
            findings.append(_finding(server, reason, detail, since or launched))
    return Report(findings, listed, workers, len(images.verdicts))


def act(conn: Any, findings: list[Finding], action: str, *, dry_run: bool = False) -> bool:
    """Stop, shelve or lock each server with a finding (once each); False if one failed.

    Each action is logged (logger ``vmtrust.audit``: WARNING for what was done or
    failed, INFO for a dry run or a server already in the wanted state, which is
    left alone) and recorded in the findings' ``action``.
    """
    if action not in ACTIONS:
        raise AuditError(f"audit: action {action!r}: one of {', '.join(ACTIONS)}")
    if action == "none":
        return True
    done: dict[str, str] = {}
    ok = True
    for finding in findings:
        if finding.server not in done:
            done[finding.server] = _act_once(conn, finding, action, dry_run)
            ok = ok and not done[finding.server].startswith("failed")
        finding.action = done[finding.server]
    return ok


def _act_once(conn: Any, finding: Finding, action: str, dry_run: bool) -> str:
    already = finding.locked if action == "lock" else finding.status in _DONE[action]
    if already:
        outcome = f"already {_VERB[action]}"
    elif dry_run:
        outcome = f"would {action}"
    else:
        bodies: dict[str, dict[str, Any]] = {
            "stop": {"os-stop": None},
            "shelve": {"shelve": None},
            "lock": {"lock": {"locked_reason": f"vmtrust audit: {finding.reason}"}},
        }
        body = bodies[action]
        try:
            _call(conn, "compute", "POST", f"/servers/{finding.server}/action", (202,), json=body)
            outcome = _VERB[action]
        except AuditError as exc:
            outcome = f"failed: {exc}"
    log_action(finding, outcome, changed=not (already or dry_run))
    return outcome


def log_action(
    finding: Finding, outcome: str, *, changed: bool, what: str = "server %s of project %s on host"
) -> None:
    """One log line per action: what was done, or failed, is a warning; the rest news."""
    LOG.log(
        logging.WARNING if changed else logging.INFO,
        f"audit: %s {what} %s: %s (%s)",
        outcome,
        finding.server,
        finding.project,
        finding.host or "-",
        finding.reason,
        finding.detail,
    )

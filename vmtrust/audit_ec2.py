"""Instances on EC2 that run what is not a trusted image now: ``vmtrust audit --cloud-type ec2``.

EC2 has no scheduler hook, and Allowed AMIs and the service-control policies
(docs/ec2.md) decide only at launch.  An AMI the sync retires, deprecates or
disables later leaves its instances running, a stopped instance can be started
again from it, and a root volume can be swapped under an instance whose
``ImageId`` still names a trusted AMI.  The audit lists every instance in the
accounts and regions given (the VO accounts by default) and reports each one
that does not run a trusted image now, with the fields of
:class:`vmtrust.audit.Finding` (``project`` is the account, ``host`` the
availability zone, ``status`` EC2's instance state):

============ ================================================================ =====================
reason       what                                                             since
============ ================================================================ =====================
retired      the sync retired the AMI (``vmtrust:state = retired``)           ``vmtrust:retired_at``
disabled     the AMI is disabled, not by the sync                             the instance's launch
deregistered the AMI is gone (neither the site's account nor the instance's   the instance's launch
             sees it)
deprecated   the AMI's deprecation time has passed                            the deprecation time
expired      the record's expiry has passed (the AMI is not deprecated)       the expiry
not-vmtrust  not an AMI of the site account, or one vmtrust did not make      the instance's launch
inactive     the AMI is not available (pending, failed) or not committed      the instance's launch
seal         the published record is missing, not sealed by the site's key,   the instance's launch
             or bound to another AMI or snapshot
volume       the root volume was not made from the AMI's root snapshot        when it was attached
             (replaced or swapped), or there is none
============ ================================================================ =====================

Whether an AMI is trusted is decided by :func:`vmtrust.launch_ec2.judge` — the
rule ``vmtrust launch`` uses, over the published record and
:func:`vmtrust.trust.judge` — and by nothing else; the reason is only
a label, taken from what the site account shows about the AMI (its state,
deprecation and tags), with judge's words as the detail.

Each AMI is looked up once per region, in the site account: the owner sees its
own AMIs in every state and their tags, which accounts they are shared with do
not.  An AMI the site does not see is looked up once more in the instance's
account (a VO's own AMI, or one gone).  Cost per account and region: an STS
AssumeRole (once per account, when it is not the credentials' own), the paged
DescribeInstances, and one DescribeVolumes per page for the root volumes of
instances whose AMI is trusted; per distinct AMI and region, one DescribeImages
(two when the site does not see it) and at most one S3 GetObject.

Any API error — a refused read of a published record included — stops the
audit (:class:`~vmtrust.audit.AuditError`) before any action: an action is only
ever taken on a complete, verified picture.  The actions: ``stop``
(StopInstances; the root volume stays, the instance can be started again by
its account, and the next audit finds it again).  ``shelve`` and ``lock`` have
no EC2 meaning: :func:`act` refuses them (the command, before anything is contacted).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import ec2client, ec2record, launch_ec2
from vmtrust.audit import (
    ACTIONS,
    EXPIRED,
    INACTIVE,
    NOT_VMTRUST,
    RETIRED,
    SEAL,
    VOLUME,
    Finding,
    Report,
    log_action,
)
from vmtrust.ec2client import Accounts, Clients
from vmtrust.errors import AuditError, EC2Error
from vmtrust.imagelist import parse_date

__all__ = [
    "DEPRECATED",
    "DEREGISTERED",
    "DISABLED",
    "EC2_ACTIONS",
    "GONE",
    "STOPPED",
    "VOLUME_BATCH",
    "EC2Report",
    "Problem",
    "Site",
    "act",
    "audit",
    "label",
    "places",
]

DISABLED = "disabled"
DEREGISTERED = "deregistered"
DEPRECATED = "deprecated"
#: The actions EC2 has a meaning for; the others of ``vmtrust.audit.ACTIONS`` are refused.
EC2_ACTIONS = ("none", "stop")
#: Instances that no longer run and cannot be started again: listed, not checked.
GONE = ("shutting-down", "terminated")
#: Instances a stop need not touch.
STOPPED = ("stopping", "stopped")
#: Root volumes asked for in one DescribeVolumes (EC2 takes up to 200 filter values).
VOLUME_BATCH = 200


@dataclass(frozen=True)
class Site:
    """Whose AMIs are trusted: the site account, its published records and seal keys."""

    account: str
    record_bucket: str
    record_prefix: str
    keys: tuple[Ed25519PublicKey, ...]


@dataclass
class EC2Report(Report):
    #: the (account, region) pairs audited
    places: list[tuple[str, str]] = field(default_factory=list)
    #: instance id → (account, region), for the actions
    located: dict[str, tuple[str, str]] = field(default_factory=dict)


def _guard(function: Any, *args: Any, **kw: Any) -> Any:
    """Call ``function``; an EC2/EBS/S3/STS failure becomes an AuditError line."""
    try:
        return function(*args, **kw)
    except EC2Error as exc:
        raise AuditError(str(exc)) from None


def _clients(reach: Accounts, account: str, region: str) -> Clients:
    """Clients of ``account`` in ``region`` (a role assumed in it the first time)."""
    return _guard(reach.clients, account, region)


def _call(client: Any, operation: str, *, what: str, **params: Any) -> dict[str, Any]:
    return _guard(ec2client.call, client, operation, what=what, **params) or {}


def _pages(
    client: Any, operation: str, key: str, *, what: str, **params: Any
) -> Iterator[list[dict[str, Any]]]:
    """Each page's ``key`` items, following NextToken; a token seen twice stops the audit."""
    seen: set[str] = set()
    while True:
        reply = _call(client, operation, what=what, **params)
        yield reply.get(key) or []
        token = reply.get("NextToken")
        if not token:
            return
        if token in seen:
            raise AuditError(f"{what}: EC2 {operation}: paging does not advance ({token[:40]!r})")
        seen.add(token)
        params = {**params, "NextToken": token}


def _regions_of(reach: Accounts, account: str, region: str) -> list[str]:
    """The regions enabled in ``account`` (DescribeRegions), asked from ``region``."""
    clients = _clients(reach, account, region)
    reply = _call(clients.ec2, "DescribeRegions", what=f"audit: account {account}")
    return sorted(str(r["RegionName"]) for r in reply.get("Regions", []) if r.get("RegionName"))


def _stamp(value: Any) -> str:
    """An EC2 or record time (a datetime from botocore, or text) as ``…Z`` in UTC; "" if none."""
    moment = value if isinstance(value, datetime) else _moment(value)
    if moment is None:
        return value if isinstance(value, str) else ""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _moment(text: Any) -> datetime | None:
    """A time from EC2 (ISO) or a record (HEPiX's form), in UTC; None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = parse_date(text)
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


#: (reason, detail, since) of an untrusted AMI; since "" means the instance's launch.
Problem = tuple[str, str, str]


def label(image: dict[str, Any] | None, why: str, site_account: str, now: datetime) -> Problem:
    """The finding for an AMI ``judge`` refused with ``why``: which reason, since when.

    Only a label: whether the AMI is trusted was decided by judge.  Tags are the
    site account's view (an AMI of another account shows none here).
    """
    if image is None:
        return DEREGISTERED, why, ""
    if image.get("OwnerId") != site_account:  # its owner's tags, if shown, mean nothing
        return NOT_VMTRUST, why, ""
    tags = ec2record.tag_dict(image.get("Tags"))
    if tags.get(ec2record.STATE) == "retired":
        mode = tags.get(ec2record.RETIRE_MODE, "?")
        return (
            RETIRED,
            f"retired by the sync ({mode}): {why}",
            _stamp(tags.get(ec2record.RETIRED_AT)),
        )
    if image.get("State") == DISABLED:
        return DISABLED, why, ""
    if image.get("State") != "available":
        return INACTIVE, why, ""
    deprecated = _moment(image.get("DeprecationTime"))
    if deprecated is not None and deprecated <= now:
        return DEPRECATED, why, _stamp(deprecated)
    if tags.get(ec2record.MANAGED) != "true":
        return NOT_VMTRUST, f"not made by vmtrust: {why}", ""
    expires = _moment(ec2record.join(tags, ec2record.PREFIX + "expires"))
    if expires is not None and expires <= now:
        return EXPIRED, why, _stamp(expires)
    if tags.get(ec2record.STATE) not in (None, "trusted"):
        return INACTIVE, f"trust state {tags.get(ec2record.STATE)}: {why}", ""
    return SEAL, why, ""


class _Images:
    """One look-up per distinct AMI and region, judged by the one rule; verdicts kept."""

    def __init__(self, reach: Accounts, site: Site, now: datetime) -> None:
        self.reach, self.site, self.now = reach, site, now
        #: (region, AMI) → (the AMI as the site account sees it, or None; its problem)
        self.seen: dict[tuple[str, str], tuple[dict[str, Any] | None, Problem | None]] = {}
        #: (account, region, AMI) → the same, for AMIs the site account does not see
        self.elsewhere: dict[tuple[str, str, str], tuple[dict[str, Any] | None, Problem | None]]
        self.elsewhere = {}

    def judged(
        self, account: str, region: str, image_id: str
    ) -> tuple[dict[str, Any] | None, Problem | None]:
        """(the AMI, None) when it is trusted now, else (the AMI or None, its problem)."""
        if (region, image_id) not in self.seen:
            clients = _clients(self.reach, self.site.account, region)
            image = self._describe(clients, image_id, f"audit: AMI {image_id} in {region}")
            problem = None if image is None else self._judge(image, region)
            self.seen[region, image_id] = (image, problem)
        image, problem = self.seen[region, image_id]
        if image is not None:
            return image, problem
        key = (account, region, image_id)
        if key not in self.elsewhere:  # a VO's own AMI, or one gone: ask the instance's account
            clients = _clients(self.reach, account, region)
            found = self._describe(clients, image_id, f"audit: AMI {image_id} in {account}")
            if found is None:
                why = f"not found in the site account {self.site.account} or in {account}"
                self.elsewhere[key] = (None, label(None, why, self.site.account, self.now))
            else:
                self.elsewhere[key] = (found, self._judge(found, region))
        return self.elsewhere[key]

    @staticmethod
    def _describe(clients: Clients, image_id: str, what: str) -> dict[str, Any] | None:
        reply = _guard(
            ec2client.call,
            clients.ec2,
            "DescribeImages",
            what=what,
            tolerate=("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"),
            ImageIds=[image_id],
            IncludeDeprecated=True,
            IncludeDisabled=True,
        )
        found = [i for i in (reply or {}).get("Images", []) if i.get("ImageId") == image_id]
        return found[0] if found else None

    def _judge(self, image: dict[str, Any], region: str) -> Problem | None:
        verdict = _guard(
            launch_ec2.judge,
            _clients(self.reach, self.site.account, region),  # the site reads its own records
            image,
            keys=list(self.site.keys),
            site_account=self.site.account,
            record_bucket=self.site.record_bucket,
            record_prefix=self.site.record_prefix,
            now=self.now,
            denied_means_absent=False,
        )
        if verdict.trusted:
            return None
        return label(image, verdict.reason, self.site.account, self.now)


def places(
    reach: Accounts, accounts: Iterable[str], regions: list[str] | None, home: str
) -> list[tuple[str, str]]:
    """(account, region) pairs to audit: ``regions``, or every region enabled in each
    account (asked from the ``home`` region) when ``regions`` is None."""
    accounts = list(dict.fromkeys(accounts))
    _guard(reach.check, accounts)
    pairs = []
    for account in accounts:
        for region in regions if regions is not None else _regions_of(reach, account, home):
            pairs.append((account, region))
    return pairs


def _finding(instance: dict[str, Any], account: str, problem: Problem) -> Finding:
    reason, detail, since = problem
    tags = ec2record.tag_dict(instance.get("Tags"))
    return Finding(
        server=str(instance.get("InstanceId", "")),
        name=tags.get("Name", ""),
        project=account,
        host=str((instance.get("Placement") or {}).get("AvailabilityZone", "")),
        image=str(instance.get("ImageId", "")),
        reason=reason,
        detail=detail,
        since=since or _stamp(instance.get("LaunchTime")),
        status=str((instance.get("State") or {}).get("Name", "")),
    )


def _root(instance: dict[str, Any]) -> dict[str, Any] | None:
    """The EBS part of the mapping at the instance's root device (None: there is none)."""
    root = instance.get("RootDeviceName")
    for mapping in instance.get("BlockDeviceMappings") or ():
        if (
            root
            and mapping.get("DeviceName") == root
            and (mapping.get("Ebs") or {}).get("VolumeId")
        ):
            return mapping["Ebs"]
    return None


def _swapped(
    clients: Clients, account: str, roots: list[tuple[dict[str, Any], dict[str, Any], str]]
) -> list[Finding]:
    """Findings for instances whose root volume was not made from their AMI's root snapshot.

    ``roots``: (instance, its root EBS mapping, the AMI's root snapshot).  EC2
    makes an instance's root volume from its AMI's root snapshot, and a volume
    keeps the snapshot it was made from: another one at the root device was
    swapped in (detach and attach) or restored from another snapshot.
    """
    made_from: dict[str, str] = {}
    what = f"audit: root volumes in {account} {clients.region}"
    ids = sorted({ebs["VolumeId"] for _, ebs, _ in roots})
    for start in range(0, len(ids), VOLUME_BATCH):
        chunk = ids[start : start + VOLUME_BATCH]
        filters = [{"Name": "volume-id", "Values": chunk}]
        for page in _pages(clients.ec2, "DescribeVolumes", "Volumes", what=what, Filters=filters):
            made_from.update({v["VolumeId"]: v.get("SnapshotId") or "" for v in page})
    findings = []
    for instance, ebs, snapshot in roots:
        volume = ebs["VolumeId"]
        source = made_from.get(volume)
        if source == snapshot:
            continue
        detail = (
            f"root volume {volume} not found"
            if source is None
            else f"root volume {volume} was made from {source or 'no snapshot'}, not from the "
            f"AMI's {snapshot} (replaced or swapped)"
        )
        findings.append(
            _finding(instance, account, (VOLUME, detail, _stamp(ebs.get("AttachTime"))))
        )
    return findings


def audit(
    reach: Accounts,
    site: Site,
    where: Iterable[tuple[str, str]],
    *,
    now: datetime | None = None,
    page_size: int = 1000,
) -> EC2Report:
    """Every instance in the (account, region) pairs ``where`` (see :func:`places`) that
    does not run a trusted image now; nothing is changed."""
    if not site.keys or not site.account:
        raise AuditError("audit: no seal keys or site account given: every AMI would fail")
    if not 5 <= page_size <= 1000:
        raise AuditError(f"audit: page size {page_size}: EC2 takes 5 to 1000")
    report = EC2Report([], 0, 0, 0, places=list(where))
    _guard(reach.check, [site.account, *(account for account, _ in report.places)])
    images = _Images(reach, site, now or datetime.now(UTC))
    for account, region in report.places:
        clients = _clients(reach, account, region)
        what = f"audit: instances of {account} in {region}"
        for page in _pages(
            clients.ec2, "DescribeInstances", "Reservations", what=what, MaxResults=page_size
        ):
            roots: list[tuple[dict[str, Any], dict[str, Any], str]] = []
            for instance in (i for r in page for i in r.get("Instances") or ()):
                report.servers += 1
                if (instance.get("State") or {}).get("Name") in GONE:
                    continue
                report.worker_servers += 1
                report.located[str(instance.get("InstanceId"))] = (account, region)
                if not instance.get("ImageId"):
                    no_ami = (NOT_VMTRUST, "EC2 names no AMI for it", "")
                    report.findings.append(_finding(instance, account, no_ami))
                    continue
                image, problem = images.judged(account, region, str(instance["ImageId"]))
                if problem is not None:
                    report.findings.append(_finding(instance, account, problem))
                    continue
                ebs = _root(instance)
                if ebs is None:
                    detail = f"no EBS volume at its root device {instance.get('RootDeviceName')}"
                    report.findings.append(_finding(instance, account, (VOLUME, detail, "")))
                else:
                    roots.append((instance, ebs, ec2record.root_snapshot(image or {})))
            report.findings += _swapped(clients, account, roots)
    report.images = len(images.seen)
    return report


def act(reach: Accounts, report: EC2Report, action: str, *, dry_run: bool = False) -> bool:
    """Stop each instance with a finding (once each); False if a stop failed.

    Logged as :func:`vmtrust.audit.act` logs (logger ``vmtrust.audit``) and
    recorded in the findings' ``action``.
    """
    if action not in ACTIONS:
        raise AuditError(f"audit: action {action!r}: one of {', '.join(EC2_ACTIONS)}")
    if action not in EC2_ACTIONS:
        raise AuditError(
            f"audit: action {action!r} has no EC2 meaning: EC2 instances can be stopped "
            "(--action stop)"
        )
    if action == "none":
        return True
    done: dict[str, str] = {}
    for finding in report.findings:
        if finding.server not in done:
            done[finding.server] = _stop(reach, report, finding, dry_run)
        finding.action = done[finding.server]
    return not any(outcome.startswith("failed") for outcome in done.values())


def _stop(reach: Accounts, report: EC2Report, finding: Finding, dry_run: bool) -> str:
    already = finding.status in STOPPED
    if already:
        outcome = "already stopped"
    elif dry_run:
        outcome = "would stop"
    else:
        account, region = report.located[finding.server]
        try:
            _call(
                _clients(reach, account, region).ec2,
                "StopInstances",
                what=f"audit: stop {finding.server}",
                InstanceIds=[finding.server],
            )
            outcome = "stopped"
        except AuditError as exc:
            outcome = f"failed: {exc}"
    log_action(
        finding, outcome, changed=not (already or dry_run), what="instance %s of account %s in"
    )
    return outcome

"""Find the VO's current trusted AMI and launch worker nodes from it, on EC2.

The EC2 flavour of :mod:`vmtrust.launch`, for pilot frameworks in a VO account::

    import boto3
    from vmtrust import context, ec2client, launch_ec2
    from vmtrust.record import load_public_key

    clients = ec2client.clients(boto3.Session(profile_name="cms", region_name="eu-west-1"))
    image = launch_ec2.find_trusted_image(
        clients, vo="cms", keys=[load_public_key("seal.key.pub")],
        site_account="123456789012", record_bucket="site-vmtrust-records",
    )
    user_data = context.build(site, vo_profile, cloud="ec2")
    for node in launch_ec2.launch(clients, image, instance_type="m6i.large",
                                  user_data=user_data, count=4):
        print(node.id, node.status, node.fault)

A VO account sees the AMIs shared with it but not their tags, so every
candidate — an available, undeprecated AMI owned by the site account — is
judged from its *published* record (an S3 object of the site, see
docs/ec2.md): the seal is checked here with the site's public key, and the
record must be bound to this AMI and the snapshot EC2 shows as its root
(:func:`vmtrust.record.check_binding`), in state trusted and unexpired.  Among
the trusted AMIs of the VO the newest image version wins.  Instances get the
user-data gzipped within EC2's 16 KiB, require IMDSv2, and are waited for until
running or failed.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import ec2record, trust
from vmtrust.context.profiles import Flavour
from vmtrust.context.userdata import LIMITS
from vmtrust.ec2client import Clients, call, error_code
from vmtrust.errors import EC2Error, LaunchError, UserDataError
from vmtrust.launch import Server, TrustedImage, newest
from vmtrust.trust import Code, Stored, Verdict, refuse

__all__ = [
    "FAILED",
    "GZIP_MAGIC",
    "find_trusted_image",
    "instance_type",
    "judge",
    "launch",
    "pack_user_data",
]

GZIP_MAGIC = b"\x1f\x8b"
FAILED = ("shutting-down", "terminated", "stopping", "stopped")


def _images(clients: Clients, owner: str) -> Iterator[dict[str, Any]]:
    token, seen = None, set()
    while True:
        extra: dict[str, Any] = {"NextToken": token} if token else {}
        reply = (
            call(
                clients.ec2,
                "DescribeImages",
                what="launch",
                Owners=[owner],
                MaxResults=1000,
                **extra,
            )
            or {}
        )
        yield from reply.get("Images", [])
        if not (token := reply.get("NextToken")):
            return
        if token in seen:  # an endpoint that pages in a circle would loop for ever
            raise EC2Error(f"launch: EC2 DescribeImages: paging does not advance ({token[:40]!r})")
        seen.add(token)


def _published(
    clients: Clients, bucket: str, key: str, *, denied_means_absent: bool = True
) -> bytes | None:
    """The published record document, None when there is none.

    S3 answers AccessDenied for a missing key to a reader without
    ``s3:ListBucket`` (a VO account), so by default a refused read counts as
    no record: launch then skips the AMI.  The audit passes
    ``denied_means_absent=False``: a read it was refused must stop it, not turn
    into findings that stop instances.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    absent = ("NoSuchKey", "404") + (("AccessDenied", "403") if denied_means_absent else ())
    where = f"S3 GetObject s3://{bucket}/{key}"
    try:
        reply = clients.s3.get_object(Bucket=bucket, Key=key)
        return reply["Body"].read(ec2record.MAX_DOCUMENT + 1)
    except ClientError as exc:
        if error_code(exc) in absent:
            return None
        raise EC2Error(f"launch: {where}: {error_code(exc)}") from None
    except BotoCoreError as exc:  # the connection broke, no credentials, a timeout
        raise EC2Error(f"launch: {where}: {' '.join(str(exc).split())[:200]}") from None


def judge(
    clients: Clients,
    image: dict[str, Any],
    *,
    keys: list[Ed25519PublicKey],
    site_account: str,
    record_bucket: str,
    record_prefix: str,
    now: datetime,
    denied_means_absent: bool = True,
) -> Verdict:
    """May this AMI be used now?  Fail closed, with the exact reason.

    What only EC2 can tell comes first (the owner, the AMI's state and
    deprecation) and costs no S3 request; then the published record, judged by
    the one rule (:func:`vmtrust.trust.judge`) against the AMI and its root
    snapshot as EC2 shows them.  ``denied_means_absent``: whether a refused read of
    the published record counts as no record (see :func:`_published`) or raises EC2Error.
    """
    image_id = image.get("ImageId", "?")
    if image.get("OwnerId") != site_account:
        return refuse(Code.OWNER, f"owned by {image.get('OwnerId')}, not the site account")
    if image.get("State") != "available":
        return refuse(Code.STATUS, f"state is {image.get('State')}")
    deprecated = image.get("DeprecationTime")
    if deprecated:
        try:
            if datetime.fromisoformat(deprecated) <= now:
                return refuse(Code.STATUS, f"deprecated since {deprecated}")
        except (TypeError, ValueError):
            return refuse(Code.STATUS, f"unreadable deprecation time {deprecated!r}")
    key = f"{record_prefix}{image_id}.json"
    body = _published(clients, record_bucket, key, denied_means_absent=denied_means_absent)
    if body is None:
        return refuse(Code.NO_RECORD, f"no published record at s3://{record_bucket}/{key}")
    where = f"s3://{record_bucket}/{key}"
    bound = Stored(ec2record.store_id(image_id, ec2record.root_snapshot(image)))
    return trust.judge(lambda: ec2record.read_document(body, where), bound, keys=keys, now=now)


def find_trusted_image(
    clients: Clients,
    vo: str,
    keys: Iterable[Ed25519PublicKey],
    *,
    site_account: str,
    record_bucket: str,
    record_prefix: str = "vmtrust/records/",
    identifier: str | None = None,
    now: datetime | None = None,
) -> TrustedImage:
    """The newest AMI of ``vo`` (optionally of one image ``identifier``) that is trusted."""
    keys, now = list(keys), now or datetime.now(UTC)
    judged = (
        (
            image,
            image.get("ImageId"),
            judge(
                clients,
                image,
                keys=keys,
                site_account=site_account,
                record_bucket=record_bucket,
                record_prefix=record_prefix,
                now=now,
            ),
        )
        for image in _images(clients, site_account)
    )
    image, record = newest(
        judged, vo=vo, identifier=identifier, where=f"among the AMIs of {site_account}", kind="AMI"
    )
    return TrustedImage.of(image["ImageId"], image.get("Name", ""), record)


def instance_type(clients: Clients, name: str) -> Flavour:
    """The sizes of instance type ``name``, for the worker node's machine/job features.

    The scratch space is the instance store when the type has one; without
    one it is left to the machine to measure at boot (the root volume's size
    is the AMI's).  An unknown type is a LaunchError naming it.
    """
    what = f"instance type {name}"
    try:
        reply = call(
            clients.ec2,
            "DescribeInstanceTypes",
            what=what,
            tolerate=("InvalidInstanceType",),
            InstanceTypes=[name],
        )
    except EC2Error as exc:
        raise LaunchError(str(exc)) from None
    for item in (reply or {}).get("InstanceTypes", []):
        if item.get("InstanceType") == name:
            store = (item.get("InstanceStorageInfo") or {}).get("TotalSizeInGB")
            return Flavour(
                vcpus=_whole((item.get("VCpuInfo") or {}).get("DefaultVCpus")),
                ram_mb=_whole((item.get("MemoryInfo") or {}).get("SizeInMiB")),
                swap_mb=0,
                scratch_gb=_whole(store),
            )
    raise LaunchError(f"{what}: not offered in {clients.region}")


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def pack_user_data(data: bytes) -> bytes:
    """``data`` gzipped (once) and within EC2's 16 KiB; cloud-init gunzips it."""
    limit, _ = LIMITS["ec2"]
    packed = data if data[:2] == GZIP_MAGIC else gzip.compress(data, mtime=0)
    if len(packed) > limit:
        raise UserDataError(
            f"user-data is {len(packed)} bytes gzipped ({len(data)} as given); ec2 allows {limit}"
        )
    return packed


def launch(
    clients: Clients,
    image: TrustedImage,
    *,
    instance_type: str,
    user_data: bytes,
    count: int = 1,
    name: str = "vmtrust-wn",
    subnet_id: str | None = None,
    security_group_ids: list[str] | None = None,
    key_name: str | None = None,
    wait: bool = True,
    timeout: float = 600.0,
    poll: float = 5.0,
) -> list[Server]:
    """Run ``count`` instances of ``image``; with ``wait``, until each runs or has failed.

    Statuses as :mod:`vmtrust.launch` gives them: ``ACTIVE`` (running), ``ERROR``
    (shut down or terminated, with EC2's state reason as the fault), ``BUILD``.
    """
    if count < 1:
        raise LaunchError(f"count {count}: must be at least 1")
    # what the audit and the console show: the VO and the image (encoded as the record's tags)
    tags = {
        "Name": name,
        **ec2record.split("vmtrust:vo", image.vo),
        **ec2record.split("vmtrust:image_identifier", image.identifier),
    }
    params: dict[str, Any] = {
        "ImageId": image.id,
        "InstanceType": instance_type,
        "MinCount": count,
        "MaxCount": count,
        "UserData": pack_user_data(user_data),
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": ec2record.tag_list(tags)}],
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    if security_group_ids:
        params["SecurityGroupIds"] = security_group_ids
    if key_name:
        params["KeyName"] = key_name
    try:
        reply = call(clients.ec2, "RunInstances", what=f"launch {image.id}", **params) or {}
    except EC2Error as exc:
        raise LaunchError(str(exc)) from None
    ids = [item["InstanceId"] for item in reply.get("Instances", [])]
    if not wait:
        return [Server(i, name, "BUILD") for i in ids]
    deadline = time.monotonic() + timeout
    done: dict[str, Server] = {}
    while True:
        pending = [i for i in ids if i not in done]
        try:  # new instances may be unknown to DescribeInstances for a moment (EC2 says so)
            found = call(
                clients.ec2,
                "DescribeInstances",
                what="launch",
                tolerate=("InvalidInstanceID.NotFound",),
                InstanceIds=pending,
            )
        except EC2Error as exc:  # they run: say which, so that nobody loses them
            raise LaunchError(f"{exc} (while waiting for {_listed(ids)})") from None
        for reservation in (found or {}).get("Reservations", []):
            for item in reservation.get("Instances", []):
                state = item.get("State", {}).get("Name")
                if state == "running":
                    done[item["InstanceId"]] = Server(item["InstanceId"], name, "ACTIVE")
                elif state in FAILED:
                    reason = item.get("StateReason", {}).get("Message", state)
                    done[item["InstanceId"]] = Server(item["InstanceId"], name, "ERROR", reason)
        if len(done) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(poll)
    return [done.get(i, Server(i, name, "BUILD", f"not running after {timeout:g} s")) for i in ids]


def _listed(ids: list[str], most: int = 10) -> str:
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return f"instance(s) {', '.join(ids[:most])}{more}"

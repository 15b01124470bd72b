"""The calls the EC2 store makes in the site account: AMIs, snapshots, published records.

One method per thing the store does, each a plain boto3 call through
:func:`vmtrust.ec2client.call` (one-line errors, botocore's retries), each
counted in :attr:`SiteAccount.calls` so that tests and the benchmark can show
that a no-op pass costs a constant number of requests.  Removing something
already gone is not an error: an interrupted run may have removed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from vmtrust import ec2record
from vmtrust.ec2client import Clients, call
from vmtrust.imagelist import parse_date

__all__ = ["PAGE", "SiteAccount", "aws_time", "deprecate_at", "next_minute", "parse_time"]

PAGE = 1000  # DescribeImages' and DescribeSnapshots' largest page
_AMI_GONE = ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable")
_SNAPSHOT_GONE = ("InvalidSnapshot.NotFound",)
_MANAGED = [{"Name": f"tag:{ec2record.MANAGED}", "Values": ["true"]}]


class SiteAccount:
    def __init__(self, clients: Clients, record_bucket: str = "", record_prefix: str = "") -> None:
        self.c = clients
        self.record_bucket = record_bucket
        self.record_prefix = record_prefix
        self.calls = 0

    def _call(self, client: Any, operation: str, what: str, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        return call(client, operation, what=what, **kw) or {}

    def _pages(self, operation: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            extra: dict[str, Any] = {"NextToken": token} if token else {}
            reply = self._call(
                self.c.ec2, operation, "ec2 store", MaxResults=PAGE, **params, **extra
            )
            yield from reply.get(key, [])
            token = reply.get("NextToken")
            if not token:
                return

    # --- listing ------------------------------------------------------------------------

    def managed_images(self) -> list[dict[str, Any]]:
        """Every AMI of the account tagged managed, deprecated and disabled ones included."""
        return list(
            self._pages(
                "DescribeImages",
                "Images",
                Owners=["self"],
                Filters=_MANAGED,
                IncludeDeprecated=True,
                IncludeDisabled=True,
            )
        )

    def managed_snapshots(self) -> Iterator[dict[str, Any]]:
        return self._pages("DescribeSnapshots", "Snapshots", OwnerIds=["self"], Filters=_MANAGED)

    def snapshot_state(self, snapshot_id: str, what: str) -> str:
        reply = self._call(self.c.ec2, "DescribeSnapshots", what, SnapshotIds=[snapshot_id])
        return str((reply.get("Snapshots") or [{}])[0].get("State"))

    def launch_permissions(self, image_id: str, what: str) -> list[dict[str, str]]:
        reply = self._call(
            self.c.ec2,
            "DescribeImageAttribute",
            what,
            ImageId=image_id,
            Attribute="launchPermission",
        )
        return list(reply.get("LaunchPermissions", []))

    # --- changing ------------------------------------------------------------------------

    def register(self, what: str, **params: Any) -> str:
        return str(self._call(self.c.ec2, "RegisterImage", what, **params)["ImageId"])

    def tag(self, resource: str, values: dict[str, str], what: str) -> None:
        tags = ec2record.tag_list(values)
        self._call(self.c.ec2, "CreateTags", what, Resources=[resource], Tags=tags)

    def untag(self, resource: str, keys: list[str], what: str) -> None:
        tags = [{"Key": key} for key in keys]
        self._call(self.c.ec2, "DeleteTags", what, Resources=[resource], Tags=tags)

    def deprecate(self, image_id: str, when: datetime, what: str) -> datetime:
        """Deprecate at ``when``, or the next minute if that is sooner (EC2 refuses the past)."""
        when = max(when, next_minute(datetime.now(UTC)))
        self._call(self.c.ec2, "EnableImageDeprecation", what, ImageId=image_id, DeprecateAt=when)
        return when

    def share(self, image_id: str, accounts: list[str], what: str) -> None:
        """Make the launch permissions of ``image_id`` exactly ``accounts``."""
        current = self.launch_permissions(image_id, what)
        have = {p["UserId"] for p in current if "UserId" in p}
        change: dict[str, list[dict[str, str]]] = {}
        if add := sorted(set(accounts) - have):
            change["Add"] = [{"UserId": account} for account in add]
        if remove := [p for p in current if p.get("UserId") not in accounts]:
            change["Remove"] = remove
        if change:
            self._call(
                self.c.ec2, "ModifyImageAttribute", what, ImageId=image_id, LaunchPermission=change
            )

    def disable(self, image_id: str, what: str) -> None:
        self._call(self.c.ec2, "DisableImage", what, ImageId=image_id)

    def deregister(self, image_id: str, what: str) -> None:
        self._call(self.c.ec2, "DeregisterImage", what, tolerate=_AMI_GONE, ImageId=image_id)

    def delete_snapshot(self, snapshot_id: str, what: str) -> None:
        self._call(
            self.c.ec2, "DeleteSnapshot", what, tolerate=_SNAPSHOT_GONE, SnapshotId=snapshot_id
        )

    # --- the published record ---------------------------------------------------------------

    def record_key(self, image_id: str) -> str:
        return f"{self.record_prefix}{image_id}.json"

    def publish(self, image_id: str, body: bytes, what: str) -> None:
        self._call(
            self.c.s3,
            "PutObject",
            what,
            Bucket=self.record_bucket,
            Key=self.record_key(image_id),
            Body=body,
            ContentType="application/json",
        )

    def unpublish(self, image_id: str, what: str) -> None:
        self._call(
            self.c.s3,
            "DeleteObject",
            what,
            Bucket=self.record_bucket,
            Key=self.record_key(image_id),
        )


def next_minute(now: datetime) -> datetime:
    """The first whole minute after ``now`` (EC2 refuses deprecation times in the past)."""
    return now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)


def deprecate_at(expires: str) -> datetime:
    """A record's expiry rounded down to the minute EC2 keeps: never after the expiry."""
    return parse_date(expires).replace(second=0)


def aws_time(when: datetime) -> str:
    """A time as DescribeImages shows DeprecationTime."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_time(text: object) -> datetime | None:
    """DescribeImages' DeprecationTime, or None when there is none."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC).replace(microsecond=0)
    except ValueError:
        return None

"""The documents an EC2 operator deploys so that only trusted images run: EC2 has no scheduler hook.

Four places decide what may run, and each gets its document here (printed and,
where the API allows, applied by ``vmtrust ec2 policy``; see docs/ec2.md):

* **Allowed AMIs** in every VO account and region: only images owned by the
  site account, and none once deprecated — the sync deprecates every AMI at
  its record's expiry and at once when it is retired, so an expired or retired
  image cannot be launched even if the sync has stopped.  It covers every
  launch path of the account (also services launching for it).  It cannot
  check a seal: there is no tag criterion, and watermarks propagate to copies.
* a **service-control policy for the VO accounts**: RunInstances only on images
  owned by the site account (``ec2:Owner``; whether the owner's tags of a shared
  AMI are evaluated in the launching account is not documented, so no tag
  condition is used), no images of their own (create, register, copy, import),
  and no changing the Allowed AMIs settings.  SCPs do not bind service-linked
  roles: Allowed AMIs is what covers those;
* a **service-control policy for the site account**: only the sync's role
  registers, changes and removes images, writes ``vmtrust:*`` tags and EBS
  blocks, and writes the published records;
* the **sync role's IAM policy**: what the sync needs and no more — changing
  and removing only images and snapshots tagged ``vmtrust:managed``;
* the **record bucket's policy**: the VO accounts read the published records,
  only the sync's role writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vmtrust.errors import ConfigError

__all__ = [
    "ALLOWED_AMIS_SETTINGS",
    "DOCUMENTS",
    "EBS_WRITING",
    "IMAGE_CHANGING",
    "IMAGE_MAKING",
    "MANAGED",
    "VERSION",
    "WHERE",
    "Site",
    "allowed_amis",
    "document",
    "record_bucket",
    "site_scp",
    "sync_role",
    "vo_scp",
]

VERSION = "2012-10-17"
MANAGED = {"StringEquals": {"aws:ResourceTag/vmtrust:managed": "true"}}
#: Actions that make an image a VO account could launch without the site.
IMAGE_MAKING = [
    "ec2:CopyImage",
    "ec2:CreateImage",
    "ec2:CreateRestoreImageTask",
    "ec2:ImportImage",
    "ec2:ImportInstance",
    "ec2:ImportSnapshot",
    "ec2:ImportVolume",
    "ec2:RegisterImage",
]
ALLOWED_AMIS_SETTINGS = [
    "ec2:DisableAllowedImagesSettings",
    "ec2:EnableAllowedImagesSettings",
    "ec2:ReplaceImageCriteriaInAllowedImagesSettings",
]
#: What changes an image or its launch permissions in the site account.
IMAGE_CHANGING = [
    "ec2:DeregisterImage",
    "ec2:DisableImage",
    "ec2:DisableImageDeprecation",
    "ec2:DisableImageDeregistrationProtection",
    "ec2:EnableImage",
    "ec2:EnableImageDeprecation",
    "ec2:EnableImageDeregistrationProtection",
    "ec2:ModifyImageAttribute",
    "ec2:ResetImageAttribute",
]
EBS_WRITING = ["ebs:CompleteSnapshot", "ebs:PutSnapshotBlock", "ebs:StartSnapshot"]
DOCUMENTS = ("allowed-amis", "vo-scp", "site-scp", "sync-role", "record-bucket")


@dataclass(frozen=True)
class Site:
    """What the documents are about, from ``[store_ec2]``."""

    account: str
    region: str = "*"
    sync_role_arn: str = ""
    record_bucket: str = ""
    record_prefix: str = "vmtrust/records/"
    vo_accounts: list[str] = field(default_factory=list)
    partition: str = "aws"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9]{12}", self.account):
            raise ConfigError(
                f"[store_ec2] account_id {self.account!r}: the site account's 12-digit id is "
                "needed for the policy documents"
            )

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        where = (self.region or "*") if region else ""
        return f"arn:{self.partition}:{service}:{where}::{resource}"

    def role(self) -> str:
        if not re.fullmatch(r"arn:[a-z-]+:iam::[0-9]{12}:role/.+", self.sync_role_arn):
            raise ConfigError(
                f"[store_ec2] sync_role_arn {self.sync_role_arn!r}: the ARN of the sync's IAM "
                "role (arn:aws:iam::ACCOUNT:role/NAME) is needed for this document"
            )
        return self.sync_role_arn

    def bucket(self) -> str:
        if not self.record_bucket:
            raise ConfigError("[store_ec2] record_bucket: needed for this document")
        return self.record_bucket

    def records(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket()}/{self.record_prefix}*"


def allowed_amis(site: Site, state: str = "enabled") -> dict[str, Any]:
    """Allowed AMIs for a VO account: the site's images, none deprecated (one region)."""
    return {
        "AllowedImagesSettingsState": state,
        "ImageCriteria": [
            {
                "ImageProviders": [site.account],
                "DeprecationTimeCondition": {"MaximumDaysSinceDeprecated": 0},
            }
        ],
    }


def vo_scp(site: Site) -> dict[str, Any]:
    """The service-control policy for the VO accounts (AWS Organizations)."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "VmtrustLaunchOnlySiteImages",
                "Effect": "Deny",
                "Action": "ec2:RunInstances",
                "Resource": site.arn("ec2", "image/*"),
                "Condition": {"StringNotEquals": {"ec2:Owner": site.account}},
            },
            {
                "Sid": "VmtrustNoImagesOfTheirOwn",
                "Effect": "Deny",
                "Action": IMAGE_MAKING,
                "Resource": "*",
            },
            {
                "Sid": "VmtrustAllowedAmisStay",
                "Effect": "Deny",
                "Action": ALLOWED_AMIS_SETTINGS,
                "Resource": "*",
            },
        ],
    }


def site_scp(site: Site) -> dict[str, Any]:
    """The service-control policy for the site account: only the sync's role writes trust."""
    others = {"ArnNotLike": {"aws:PrincipalArn": site.role()}}
    statements: list[dict[str, Any]] = [
        {
            "Sid": "VmtrustOnlySyncWritesImages",
            "Effect": "Deny",
            "Action": sorted(IMAGE_MAKING + IMAGE_CHANGING + EBS_WRITING),
            "Resource": "*",
            "Condition": others,
        },
        {
            "Sid": "VmtrustOnlySyncWritesTrustTags",
            "Effect": "Deny",
            "Action": ["ec2:CreateTags", "ec2:DeleteTags"],
            "Resource": "*",
            "Condition": {**others, "ForAnyValue:StringLike": {"aws:TagKeys": ["vmtrust:*"]}},
        },
        {
            "Sid": "VmtrustOnlySyncRemovesManagedSnapshots",
            "Effect": "Deny",
            "Action": ["ec2:DeleteSnapshot", "ec2:ModifySnapshotAttribute"],
            "Resource": site.arn("ec2", "snapshot/*"),
            "Condition": {**others, **MANAGED},
        },
    ]
    if site.record_bucket:
        statements.append(
            {
                "Sid": "VmtrustOnlySyncWritesRecords",
                "Effect": "Deny",
                "Action": ["s3:DeleteObject", "s3:PutObject"],
                "Resource": site.records(),
                "Condition": others,
            }
        )
    return {"Version": VERSION, "Statement": statements}


def sync_role(site: Site) -> dict[str, Any]:
    """The IAM policy of the sync's role."""
    image, snapshot = site.arn("ec2", "image/*"), site.arn("ec2", "snapshot/*")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "VmtrustList",
            "Effect": "Allow",
            "Action": ["ec2:DescribeImages", "ec2:DescribeSnapshots"],
            "Resource": "*",
        },
        {
            "Sid": "VmtrustReadSharing",
            "Effect": "Allow",
            "Action": "ec2:DescribeImageAttribute",
            "Resource": image,
        },
        {
            "Sid": "VmtrustUpload",
            "Effect": "Allow",
            "Action": EBS_WRITING,
            "Resource": snapshot,
        },
        {
            "Sid": "VmtrustRegisterAndTag",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags", "ec2:RegisterImage"],
            "Resource": [image, snapshot],
        },
        {
            "Sid": "VmtrustManageOwnImages",
            "Effect": "Allow",
            "Action": [
                "ec2:DeleteTags",
                "ec2:DeregisterImage",
                "ec2:DisableImage",
                "ec2:EnableImageDeprecation",
                "ec2:ModifyImageAttribute",
            ],
            "Resource": image,
            "Condition": MANAGED,
        },
        {
            "Sid": "VmtrustRemoveOwnSnapshots",
            "Effect": "Allow",
            "Action": "ec2:DeleteSnapshot",
            "Resource": snapshot,
            "Condition": MANAGED,
        },
    ]
    if site.record_bucket:
        statements.append(
            {
                "Sid": "VmtrustPublishRecords",
                "Effect": "Allow",
                "Action": ["s3:DeleteObject", "s3:PutObject"],
                "Resource": site.records(),
            }
        )
    return {"Version": VERSION, "Statement": statements}


def record_bucket(site: Site) -> dict[str, Any]:
    """The bucket policy: VO accounts read the published records, only the sync writes them."""
    statements: list[dict[str, Any]] = []
    if site.vo_accounts:
        principals = [f"arn:{site.partition}:iam::{a}:root" for a in sorted(set(site.vo_accounts))]
        statements.append(
            {
                "Sid": "VmtrustVOsReadRecords",
                "Effect": "Allow",
                "Principal": {"AWS": principals},
                "Action": "s3:GetObject",
                "Resource": site.records(),
            }
        )
    statements.append(
        {
            "Sid": "VmtrustOnlySyncWritesRecords",
            "Effect": "Deny",
            "Principal": "*",
            "Action": ["s3:DeleteObject", "s3:PutObject"],
            "Resource": site.records(),
            "Condition": {"ArnNotLike": {"aws:PrincipalArn": site.role()}},
        }
    )
    return {"Version": VERSION, "Statement": statements}


def document(name: str, site: Site) -> dict[str, Any]:
    makers = {
        "allowed-amis": allowed_amis,
        "vo-scp": vo_scp,
        "site-scp": site_scp,
        "sync-role": sync_role,
        "record-bucket": record_bucket,
    }
    return makers[name](site)


#: Where each document goes, for the printed header.
WHERE = {
    "allowed-amis": "each VO account, each region: EC2 Allowed AMIs settings "
    "(vmtrust ec2 policy allowed-amis --apply with the VO account's credentials)",
    "vo-scp": "AWS Organizations: a service-control policy attached to the VO accounts",
    "site-scp": "AWS Organizations: a service-control policy attached to the site account",
    "sync-role": "IAM: the sync role's inline policy (--apply puts it on the role)",
    "record-bucket": "S3: the record bucket's policy (--apply sets it)",
}

"""boto3 sessions and clients for EC2, EBS and S3, and one-line errors for every failure.

The EC2 store, ``vmtrust launch`` on EC2 and ``vmtrust ec2 policy --apply``
reach AWS (or an emulator through ``endpoint_url``) only through :func:`clients`
and :func:`call`.  Credentials come from boto3's own chain (environment, a
named profile — which may assume a role — or the instance's role); retries of
throttling and 5xx answers are botocore's ``standard`` mode; and every failure
— an AWS error code, no credentials, a connection that breaks — becomes one
:class:`~vmtrust.ec2record.EC2Error` line naming the call, never a traceback.
boto3 is imported only here and only when a client is made (the ``[ec2]`` extra).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmtrust.errors import ConfigError, EC2Error


@dataclass(frozen=True)
class Clients:
    ec2: Any
    ebs: Any
    s3: Any
    region: str


def session(profile: str = "", region: str = "") -> Any:
    """A boto3 session from the default chain or ``profile``; ConfigError when unusable."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise ConfigError("EC2 needs boto3: install vmtrust with the [ec2] extra") from None
    try:
        made = boto3.Session(profile_name=profile or None, region_name=region or None)
    except BotoCoreError as exc:
        raise ConfigError(f"[store_ec2] profile {profile}: {_short(exc)}") from None
    if not made.region_name:
        raise ConfigError("[store_ec2] region: not set, and the AWS configuration names no region")
    return made


def clients(
    boto_session: Any,
    *,
    endpoint_url: str = "",
    pool: int = 10,
    attempts: int = 8,
    timeout: float = 60.0,
) -> Clients:
    """EC2, EBS and S3 clients of ``boto_session`` sharing one retry and pool policy."""
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": attempts},
        max_pool_connections=pool,
        connect_timeout=timeout,
        read_timeout=timeout,
        # S3 through an emulator on an address: path-style URLs
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    kw: dict[str, Any] = {"config": config}
    if endpoint_url:
        kw["endpoint_url"] = endpoint_url
    region = boto_session.region_name
    return Clients(
        ec2=boto_session.client("ec2", **kw),
        ebs=boto_session.client("ebs", **kw),
        s3=boto_session.client("s3", **kw),
        region=region,
    )


def parse_vo_accounts(entries: list[str]) -> dict[str, list[str]]:
    """``VO:ACCOUNT_ID`` entries → VO → [account ids]."""
    result: dict[str, list[str]] = {}
    for entry in entries:
        vo, _, account = (part.strip() for part in entry.partition(":"))
        if not vo or not re.fullmatch(r"[0-9]{12}", account):
            raise ConfigError(
                f"[store_ec2] vo_account {entry!r}: expected VO:ACCOUNT_ID (12 digits)"
            )
        result.setdefault(vo, []).append(account)
    return result


def error_code(exc: BaseException) -> str:
    """AWS's error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def call(
    client: Any, operation: str, *, what: str, tolerate: tuple[str, ...] = (), **params: Any
) -> dict[str, Any] | None:
    """``client.<operation>(**params)``; every failure one EC2Error line starting with ``what``.

    AWS error codes in ``tolerate`` (e.g. ``InvalidSnapshot.NotFound`` when
    removing something already gone) return None instead.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    method = getattr(client, _snake(operation))
    service = client.meta.service_model.service_id
    try:
        return method(**params)
    except ClientError as exc:
        code = error_code(exc)
        if code in tolerate:
            return None
        message = _short(exc.response.get("Error", {}).get("Message", "") or exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        raise EC2Error(f"{what}: {service} {operation}: {code or status} {message}") from None
    except NoCredentialsError:
        raise EC2Error(
            f"{what}: {service} {operation}: no AWS credentials (environment, profile or "
            "instance role)"
        ) from None
    except BotoCoreError as exc:
        raise EC2Error(f"{what}: {service} {operation}: {_short(exc)}") from None


def _snake(operation: str) -> str:
    """botocore's method name of an operation (``PutSnapshotBlock`` → ``put_snapshot_block``)."""
    from botocore import xform_name

    return xform_name(operation)


def _short(exc: object) -> str:
    return " ".join(str(exc).split())[:200]

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmtrust.errors import ConfigError, EC2Error

__all__ = [
    "SERVICES",
    "Accounts",
    "Clients",
    "assume_role",
    "call",
    "clients",
    "error_code",
    "parse_vo_accounts",
    "session",
]

#: The services a :class:`Clients` holds, made by :func:`clients`.
SERVICES = ("ec2", "ebs", "s3")


@dataclass(frozen=True)
class Clients:
    ec2: Any
    ebs: Any
    s3: Any
    region: str


def session(profile: str = "", region: str = "", *, what: str = "[store_ec2]") -> Any:
    """A boto3 session from the default chain or ``profile``; ConfigError when unusable.

    ``what`` names where the profile and region came from in the error (the
    section of vmtrust.conf, or a command's options).
    """
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise ConfigError("EC2 needs boto3: install vmtrust with the [ec2] extra") from None
    try:
        made = boto3.Session(profile_name=profile or None, region_name=region or None)
    except BotoCoreError as exc:
        raise ConfigError(f"{what} profile {profile}: {_short(exc)}") from None
    if not made.region_name:
        raise ConfigError(f"{what} region: not set, and the AWS configuration names no region")
    return made


def clients(
    boto_session: Any,
    *,
    endpoint_url: str = "",
    pool: int = 10,
    attempts: int = 8,
    timeout: float = 60.0,
    region: str = "",
    credentials: dict[str, str] | None = None,
) -> Clients:
    """EC2, EBS and S3 clients of ``boto_session`` sharing one retry and pool policy.

    ``region`` overrides the session's; ``credentials`` (from :func:`assume_role`)
    replace the session's own, while the session's event hooks still apply.  A
    region or endpoint boto3 cannot use is a ConfigError, not a traceback.
    """
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": attempts},
        max_pool_connections=pool,
        connect_timeout=timeout,
        read_timeout=timeout,
        # S3 through an emulator on an address: path-style URLs
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    kw: dict[str, Any] = {"config": config, **_credentials(credentials)}
    region = region or boto_session.region_name
    made = {name: _client(boto_session, name, region, endpoint_url, kw) for name in SERVICES}
    return Clients(**made, region=region)


def _client(
    boto_session: Any, name: str, region: str, endpoint_url: str, kw: dict[str, Any]
) -> Any:
    """One boto3 client; a region or endpoint boto3 cannot use is one ConfigError line."""
    if endpoint_url:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", endpoint_url):
            raise ConfigError(f"EC2 endpoint URL {endpoint_url!r}: expected http(s)://HOST[:PORT]")
        kw = {**kw, "endpoint_url": endpoint_url}
    try:
        return boto_session.client(name, region_name=region or None, **kw)
    except ValueError as exc:  # botocore's InvalidRegionError, an endpoint it cannot parse
        raise ConfigError(f"AWS region {region!r}: {_short(exc)}") from None


def _credentials(credentials: dict[str, str] | None) -> dict[str, str]:
    if not credentials:
        return {}
    return {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }


def _caller_account(boto_session: Any, *, endpoint_url: str = "", what: str) -> str:
    """The account id of the session's credentials (STS GetCallerIdentity)."""
    sts = _client(boto_session, "sts", boto_session.region_name, endpoint_url, {})
    reply = call(sts, "GetCallerIdentity", what=what) or {}
    return str(reply.get("Account", ""))


def assume_role(
    boto_session: Any, role_arn: str, *, endpoint_url: str = "", what: str
) -> dict[str, str]:
    """Temporary credentials of ``role_arn`` (STS AssumeRole, one hour) for :func:`clients`."""
    sts = _client(boto_session, "sts", boto_session.region_name, endpoint_url, {})
    reply = call(sts, "AssumeRole", what=what, RoleArn=role_arn, RoleSessionName="vmtrust")
    credentials = (reply or {}).get("Credentials") or {}
    if not all(credentials.get(k) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")):
        raise EC2Error(f"{what}: STS AssumeRole {role_arn}: no credentials in the answer")
    return dict(credentials)


class Accounts:
    """Clients for any account and region: the credentials' own account as they are,
    another through the role ``role_name`` assumed in it (STS AssumeRole, once per account).

    ``what`` starts every error line (``audit``).  Temporary credentials last
    an hour, STS's default: enough for one account's pass.
    """

    def __init__(
        self,
        boto_session: Any,
        *,
        role_name: str = "",
        endpoint_url: str = "",
        attempts: int = 8,
        timeout: float = 60.0,
        what: str,
    ) -> None:
        self.session, self.role_name, self.endpoint_url = boto_session, role_name, endpoint_url
        self.attempts, self.timeout, self.what = attempts, timeout, what
        self._caller = ""
        self._credentials: dict[str, dict[str, str] | None] = {}
        self._clients: dict[tuple[str, str], Clients] = {}

    def caller(self) -> str:
        """The account of the credentials (STS GetCallerIdentity, asked once)."""
        if not self._caller:
            what = f"{self.what}: whose credentials"
            self._caller = _caller_account(self.session, endpoint_url=self.endpoint_url, what=what)
        return self._caller

    def check(self, accounts: Iterable[str]) -> None:
        """Refuse, before anything is asked of them, accounts these credentials cannot reach."""
        if self.role_name:
            return
        for account in accounts:
            if account != self.caller():
                raise ConfigError(
                    f"{self.what}: account {account}: the credentials are of account "
                    f"{self.caller()}, and no role to assume in it was given (--role-name)"
                )

    def clients(self, account: str, region: str) -> Clients:
        if (account, region) not in self._clients:
            self._clients[account, region] = clients(
                self.session,
                endpoint_url=self.endpoint_url,
                attempts=self.attempts,
                timeout=self.timeout,
                region=region,
                credentials=self._credentials_of(account),
            )
        return self._clients[account, region]

    def _credentials_of(self, account: str) -> dict[str, str] | None:
        if account not in self._credentials:
            if account == self.caller():
                self._credentials[account] = None
            else:
                self.check([account])
                self._credentials[account] = assume_role(
                    self.session,
                    f"arn:aws:iam::{account}:role/{self.role_name}",
                    endpoint_url=self.endpoint_url,
                    what=f"{self.what}: account {account}",
                )
        return self._credentials[account]


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
    from botocore.parsers import ResponseParserError

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
    except (BotoCoreError, ResponseParserError) as exc:  # the latter: an HTML error page
        raise EC2Error(f"{what}: {service} {operation}: {_short(exc)}") from None


def _snake(operation: str) -> str:
    """botocore's method name of an operation (``PutSnapshotBlock`` → ``put_snapshot_block``)."""
    from botocore import xform_name

    return xform_name(operation)


def _short(exc: object) -> str:
    return " ".join(str(exc).split())[:200]

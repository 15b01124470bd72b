"""``[store_ec2]`` to an EC2 store, for ``EC2Store.from_conf``: every option checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust.errors import ConfigError

if TYPE_CHECKING:
    from glance_sync.stores.ec2 import EC2Store

__all__ = ["ImageOptions", "build_store"]


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How AMIs are registered: what the site's images need to boot on EC2."""

    boot_mode: str = "uefi-preferred"
    ena_support: bool = True
    root_device: str = "/dev/xvda"
    volume_type: str = "gp3"
    imds_v2: bool = True
    name_prefix: str = ""


def build_store(conf: Any, seal_keys: list[Ed25519PublicKey], workdir: Path) -> EC2Store:
    """The store as ``[store_ec2]`` describes it; every option checked, nothing contacted."""
    from glance_sync.stores.ec2 import EC2Store
    from vmtrust import ec2client

    section = conf.store_ec2
    vo_accounts = ec2client.parse_vo_accounts(section.vo_account)
    if vo_accounts and not section.record_bucket:
        raise ConfigError(
            "[store_ec2] record_bucket: needed with vo_account (VO accounts cannot read the "
            "tags of shared AMIs; they read the published record)"
        )
    clients = ec2client.clients(
        ec2client.session(section.profile, section.region),
        endpoint_url=section.endpoint_url,
        pool=section.upload_threads + 2,
        attempts=section.api_retries + 1,
        timeout=section.api_timeout,
    )
    return EC2Store(
        clients,
        seal_keys=seal_keys,
        workdir=workdir,
        vo_accounts=vo_accounts,
        record_bucket=section.record_bucket,
        record_prefix=section.record_prefix,
        options=ImageOptions(
            boot_mode=section.boot_mode,
            ena_support=section.ena_support,
            root_device=section.root_device,
            volume_type=section.volume_type,
            imds_v2=section.imds_v2,
            name_prefix=section.name_prefix,
        ),
        threads=section.upload_threads,
    )

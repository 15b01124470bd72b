"""The sync's settings, read and validated from vmtrust.conf before anything is touched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from oslo_config import cfg

from glance_sync.download import HttpSettings
from glance_sync.stores.base import Store
from vmtrust.errors import ConfigError
from vmtrust.record import load_private_key
from vmtrust.truststore import TrustStore


@dataclass
class SyncSettings:
    state_dir: Path
    subscriptions_file: Path
    trust: TrustStore
    seal_key: Ed25519PrivateKey
    store_name: str
    retire_mode: str
    retire_grace: timedelta
    parallel_downloads: int
    http: HttpSettings
    allow_sha1: bool
    clock_skew: timedelta
    max_list_bytes: int
    hook: str | None
    local_path: Path
    local_disk_format: str = ""
    conf: cfg.ConfigOpts | None = None  #: for store-specific sections ([store_glance] …)
    parallel_lists: int = 4
    max_image_size: int = 64 * 1024**3  #: bytes of a stored image, after unpacking/conversion
    max_expansion_ratio: int = 20  #: unpacked bytes per downloaded byte of a compressed image
    registry_deadline: float = 300.0  #: seconds for listing one OCI registry subscription


def _path(value: str, option: str) -> Path:
    if not value:
        raise ConfigError(f"configuration: {option} is not set")
    return Path(value).expanduser()


def from_conf(conf: cfg.ConfigOpts) -> SyncSettings:
    state_dir = _path(conf.state_dir, "[DEFAULT] state_dir")
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"[DEFAULT] state_dir {state_dir}: {exc.strerror or exc}") from None
    if not os.access(state_dir, os.W_OK):
        raise ConfigError(f"[DEFAULT] state_dir {state_dir}: not writable")
    seal_path = _path(conf.trust.seal_key, "[trust] seal_key")
    if not seal_path.exists():
        raise ConfigError(
            f"[trust] seal_key {seal_path}: not found (make one with "
            f"'vmtrust keygen --out {seal_path}')"
        )
    return SyncSettings(
        state_dir=state_dir,
        subscriptions_file=_path(conf.sync.subscriptions_file, "[sync] subscriptions_file"),
        trust=TrustStore(
            Path(conf.trust.ca_dir).expanduser(),
            require_crls=conf.trust.require_crls,
            require_namespaces=conf.trust.require_namespaces,
        ),
        seal_key=load_private_key(seal_path),
        store_name=conf.sync.store,
        retire_mode=conf.sync.retire,
        retire_grace=timedelta(hours=conf.sync.retire_grace_hours),
        parallel_downloads=conf.sync.parallel_downloads,
        http=HttpSettings(
            timeout=conf.sync.http_timeout,
            retries=conf.sync.http_retries,
            backoff=conf.sync.http_backoff,
            max_redirects=conf.sync.max_redirects,
            list_retries=conf.sync.list_retries,
            list_deadline=conf.sync.list_deadline,
            image_deadline=conf.sync.image_deadline,
            min_rate=conf.sync.min_rate * 1024,
        ),
        allow_sha1=conf.trust.allow_sha1,
        clock_skew=timedelta(seconds=conf.trust.clock_skew),
        max_list_bytes=conf.trust.max_list_bytes,
        hook=conf.store_local.hook or None,
        local_path=_path(conf.store_local.path, "[store_local] path"),
        local_disk_format=conf.store_local.disk_format.strip().lower(),
        conf=conf,
        parallel_lists=conf.sync.parallel_lists,
        max_image_size=conf.sync.max_image_size,
        max_expansion_ratio=conf.sync.max_expansion_ratio,
        registry_deadline=conf.sync.registry_deadline,
    )


def make_store(settings: SyncSettings) -> Store:
    if settings.store_name == "local":
        from glance_sync.stores.local import LocalStore

        return LocalStore(
            settings.local_path, [settings.seal_key.public_key()], settings.local_disk_format
        )
    if settings.store_name == "glance" and settings.conf is not None:
        from glance_sync.stores.glance import from_conf

        return from_conf(settings.conf, [settings.seal_key.public_key()])
    if settings.store_name == "ec2" and settings.conf is not None:
        from glance_sync.convert import work_folder
        from glance_sync.stores.ec2_conf import from_conf as ec2_from_conf

        return ec2_from_conf(
            settings.conf, [settings.seal_key.public_key()], work_folder(settings.state_dir)
        )
    raise ConfigError(f"[sync] store = {settings.store_name}: not available")

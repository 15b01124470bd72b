"""The sync's settings, read and validated from vmtrust.conf before anything is touched.

Only what the sync service itself uses lives here; each store reads its own
section (``Store.from_conf``) and the registry picks the store
(:mod:`glance_sync.stores.registry`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from oslo_config import cfg

from glance_sync.download import HttpSettings
from glance_sync.stores.base import Store, StoreContext
from glance_sync.stores.registry import store_from_conf
from glance_sync.targets import DEFAULT, Target, build_targets, target_specs
from vmtrust.errors import ConfigError
from vmtrust.record import load_private_key
from vmtrust.truststore import TrustStore

__all__ = ["SyncSettings", "from_conf", "http_settings", "make_store", "make_targets"]

LOG = logging.getLogger("vmtrust.sync")


@dataclass
class SyncSettings:
    state_dir: Path
    subscriptions_file: Path
    trust: TrustStore
    seal_key: Ed25519PrivateKey
    retire_mode: str
    retire_grace: timedelta
    parallel_downloads: int
    http: HttpSettings
    allow_sha1: bool
    clock_skew: timedelta
    max_list_bytes: int
    parallel_lists: int = 4
    max_image_size: int = 64 * 1024**3  #: bytes of a stored image, after unpacking/conversion
    max_expansion_ratio: int = 20  #: unpacked bytes per downloaded byte of a compressed image
    registry_deadline: float = 300.0  #: seconds for listing one OCI registry subscription
    state_connection: str = ""  #: a shared state database's URL; empty: SQLite in state_dir
    #: bytes of an image kept in memory for several targets (glance_sync.fanout)
    fanout_buffer: int = 32 * 1024 * 1024


def _path(value: str, option: str) -> Path:
    if not value:
        raise ConfigError(f"configuration: {option} is not set")
    return Path(value).expanduser()


def http_settings(conf: cfg.ConfigOpts) -> HttpSettings:
    """How the sync fetches lists and images (also what ``--check`` fetches with)."""
    return HttpSettings(
        timeout=conf.sync.http_timeout,
        retries=conf.sync.http_retries,
        backoff=conf.sync.http_backoff,
        max_redirects=conf.sync.max_redirects,
        list_retries=conf.sync.list_retries,
        list_deadline=conf.sync.list_deadline,
        image_deadline=conf.sync.image_deadline,
        min_rate=conf.sync.min_rate * 1024,
    )


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
        retire_mode=conf.sync.retire,
        retire_grace=timedelta(hours=conf.sync.retire_grace_hours),
        parallel_downloads=conf.sync.parallel_downloads,
        http=http_settings(conf),
        allow_sha1=conf.trust.allow_sha1,
        clock_skew=timedelta(seconds=conf.trust.clock_skew),
        max_list_bytes=conf.trust.max_list_bytes,
        parallel_lists=conf.sync.parallel_lists,
        max_image_size=conf.sync.max_image_size,
        max_expansion_ratio=conf.sync.max_expansion_ratio,
        registry_deadline=conf.sync.registry_deadline,
        state_connection=conf.sync.state_connection,
        fanout_buffer=conf.sync.fanout_buffer * 1024 * 1024,
    )


def make_store(conf: cfg.ConfigOpts, settings: SyncSettings) -> Store:
    """The store ``[sync] store`` names, for the sync: checked with the seal key's public
    half, scratch files in the state directory's work folder, the store's hook armed."""
    if conf.sync.store != "local" and conf.store_local.hook:
        LOG.warning(
            "[store_local] hook %s is not run: it is the local store's, and [sync] store = %s",
            conf.store_local.hook,
            conf.sync.store,
        )
    context = StoreContext(seal_keys=[settings.seal_key.public_key()], state_dir=settings.state_dir)
    return store_from_conf(conf, context)


def make_targets(conf: cfg.ConfigOpts, settings: SyncSettings) -> list[Target]:
    """Every target of the sync (:mod:`glance_sync.targets`): without ``[sync] targets``,
    the one store :func:`make_store` makes, named ``default``."""
    if not target_specs(conf):
        return [Target(DEFAULT, make_store(conf, settings), "")]  # "": [sync] retire
    context = StoreContext(seal_keys=[settings.seal_key.public_key()], state_dir=settings.state_dir)
    return build_targets(conf, context)

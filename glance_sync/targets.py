"""The targets of a sync: several stores fed by one configuration (``[sync] targets``).

Without ``[sync] targets`` the one store ``[sync] store`` names is the only
target, called ``default``, and the sync behaves as it always did.  With it,
each name has a section ``[target:NAME]``::

    [sync]
    targets = ral-a, ral-b, archive

    [target:ral-a]
    store = glance
    cloud = ral-a            # any [store_glance] option; those not given come from there
    vo_project = cms:1a2b3c
    retire = hide
    groups = uk, ral

    [target:archive]
    store = local
    path = /srv/images

A subscription says where its images go with ``targets: [ral-a, uk]`` (target or
group names; default: every target).  Everything wrong here — a name that is not
a plain word (a path, say), a name given twice, a target without its section, a
section no target names, a group named like a target, two targets writing to
the same place, a subscription naming an unknown target — is one
:class:`~vmtrust.errors.ConfigError` line naming it, before anything is touched.

The stores build themselves (``Store.from_conf``) from a view of the
configuration in which their own section is the target's section laid over the
store's usual one (:class:`TargetConf`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from oslo_config import cfg

from glance_sync.stores.base import Store, StoreContext
from glance_sync.stores.registry import store_from_conf
from vmtrust import conf as conf_mod
from vmtrust.errors import ConfigError

if TYPE_CHECKING:
    from vmtrust.policy import Subscription

__all__ = [
    "DEFAULT",
    "Named",
    "Target",
    "TargetConf",
    "TargetSpec",
    "build_targets",
    "named",
    "route",
    "store_of",
    "target_specs",
]

DEFAULT = "default"  #: the name of the one target of a configuration without [sync] targets
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_UNSET = (cfg.Locations.opt_default, cfg.Locations.set_default)


def _sections() -> dict[str, tuple[str, Sequence[cfg.Opt]]]:
    """Store name → (its usual section, its options), for the built-in stores."""
    return {
        "local": ("store_local", conf_mod.store_local_opts),
        "glance": ("store_glance", conf_mod.store_glance_opts + conf_mod.keystoneauth_opts()),
        "ec2": ("store_ec2", conf_mod.store_ec2_opts),
    }


class Named(Protocol):
    """A target or its configuration: what routing needs."""

    @property
    def name(self) -> str: ...

    @property
    def groups(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class TargetSpec:
    """A target as the configuration describes it (nothing built, nothing contacted)."""

    name: str
    store: str
    groups: frozenset[str]
    retire: str

    @property
    def group(self) -> str:
        return f"target:{self.name}"


@dataclass(frozen=True)
class Target:
    """One store the sync feeds, with what differs per target."""

    name: str
    store: Store
    retire_mode: str  #: "": the sync's ``[sync] retire``
    groups: frozenset[str] = frozenset()


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{what}: {name!r} is not a name (letters, digits, '.', '_' and '-', at most 64, "
            "not starting with '.' or '-')"
        )


def target_specs(conf: cfg.ConfigOpts) -> list[TargetSpec]:
    """The targets ``[sync] targets`` names, checked; [] when it names none."""
    names = [n.strip() for n in conf.sync.targets if n.strip()]
    if not names:
        return []
    seen: set[str] = set()
    sections = set(conf.list_all_sections())
    specs = []
    for name in names:
        _check_name(name, "[sync] targets")
        if name in seen:
            raise ConfigError(f"[sync] targets: {name} is named twice")
        seen.add(name)
        group = f"target:{name}"
        if group not in sections:
            raise ConfigError(f"[sync] targets names {name}, but there is no [{group}] section")
        conf.register_opts(conf_mod.target_opts, group=group)
        with _values(group):
            section = conf[group]
            store, retire = section.store, section.retire
            groups = frozenset(g.strip() for g in section.groups if g.strip())
        if not store:
            raise ConfigError(f"[{group}] store is not set (local, glance, ec2 or a plug-in)")
        for label in groups:
            _check_name(label, f"[{group}] groups")
        specs.append(TargetSpec(name, store, groups, retire or conf.sync.retire))
    stray = sorted(s for s in sections if s.startswith("target:") and s[7:] not in seen)
    if stray:
        raise ConfigError(f"[{stray[0]}]: [sync] targets does not name {stray[0][7:]}")
    for spec in specs:
        clash = spec.groups & seen
        if clash:
            raise ConfigError(
                f"[{spec.group}] groups: {sorted(clash)[0]} is a target's name, not a group's"
            )
    return specs


class _Section:
    """A target's section over the store's usual one: an option set in the target's
    section wins, any other comes from the usual section."""

    def __init__(self, conf: cfg.ConfigOpts, group: str, base: str, own: set[str]) -> None:
        self._conf, self._group, self._base, self._own = conf, group, base, own

    def __getattr__(self, name: str) -> Any:
        if name in self._own:
            where = self._conf.get_location(name, self._group)
            if where is not None and where.location not in _UNSET:
                return getattr(self._conf[self._group], name)
        return getattr(self._conf[self._base], name)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


class _Sync:
    """``[sync]`` as a target's store sees it: its ``store`` is the target's."""

    def __init__(self, sync: Any, store: str) -> None:
        self._sync, self.store = sync, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sync, name)


class TargetConf:
    """The configuration as one target's store reads it (``Store.from_conf``).

    Only the store's own section and ``[sync] store`` differ; everything else,
    methods included (keystoneauth registers its plug-in's options), is the
    real configuration's.
    """

    def __init__(self, conf: cfg.ConfigOpts, spec: TargetSpec) -> None:
        self._conf = conf
        self._spec = spec
        base = _sections().get(spec.store)
        self._base = base[0] if base else None
        if base is not None:
            conf.register_opts(base[1], group=spec.group)
            self._own = {opt.dest for opt in base[1]}

    def __getattr__(self, name: str) -> Any:
        if name == "sync":
            return _Sync(self._conf.sync, self._spec.store)
        if self._base is not None and name == self._base:
            return _Section(self._conf, self._spec.group, self._base, self._own)
        return getattr(self._conf, name)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


def _place(conf: cfg.ConfigOpts, spec: TargetSpec) -> tuple[tuple[Any, ...], str] | None:
    """Where a built-in store writes, and how to name it, to refuse two targets writing
    to one place: under different names too (a path through a link, ``..``; two
    clouds.yaml entries for one endpoint and project)."""
    view = TargetConf(conf, spec)
    if spec.store == "local":
        path = os.path.realpath(os.path.expanduser(str(view.store_local.path)))
        return ("local", path), f"local {path}"
    if spec.store == "glance":
        return _glance_place(view.store_glance)
    if spec.store == "ec2":
        s = view.store_ec2
        place = ("ec2", s.profile, s.region, s.endpoint_url, s.account_id)
        return place, "ec2 " + " ".join(str(p) for p in place[1:] if p)
    return None


def _glance_place(s: Any) -> tuple[tuple[Any, ...], str]:
    """A Glance target's (image endpoint, region, project), read from its clouds.yaml
    entry without contacting the cloud; its names alone when the entry cannot be
    read (the store's own build then reports why) or has no project to compare."""
    names = ("glance", s.cloud, s.clouds_file, s.project_id)
    shown = "glance " + " ".join(str(p) for p in names[1:] if p)
    if not s.cloud:
        return names, shown
    try:
        from openstack import config as os_config

        files = [s.clouds_file] if s.clouds_file else None
        config = os_config.OpenStackConfig(config_files=files, load_envvars=False)
        cloud = config.get_one(cloud=s.cloud).config
    except Exception:  # reported where the store is built
        return names, shown
    auth = cloud.get("auth") or {}
    endpoint = str(
        cloud.get("image_endpoint_override") or auth.get("auth_url") or auth.get("endpoint") or ""
    ).rstrip("/")
    project = s.project_id or auth.get("project_id") or ""
    if not project and auth.get("project_name"):
        domain = auth.get("project_domain_id") or auth.get("project_domain_name") or ""
        project = f"{domain}/{auth['project_name']}"
    if not project and auth.get("token"):  # a token is one principal in one project
        digest = hashlib.sha256(str(auth["token"]).encode()).hexdigest()[:16]
        project = f"token:{digest}"
    if not endpoint or not project:
        return names, shown
    place = ("glance", endpoint, cloud.get("region_name") or "", project)
    return place, f"glance project {project} at {endpoint}"


def named(conf: cfg.ConfigOpts, only: str | None = None) -> list[TargetSpec]:
    """Every target of the configuration (``default`` alone without [sync] targets), or
    only the one ``--target`` names; an unknown name is one ConfigError line."""
    specs = target_specs(conf) or [
        TargetSpec(DEFAULT, conf.sync.store, frozenset(), conf.sync.retire)
    ]
    if only is None:
        return specs
    chosen = [spec for spec in specs if spec.name == only]
    if not chosen:
        known = ", ".join(spec.name for spec in specs)
        raise ConfigError(f"--target {only}: no such target (configured: {known})")
    return chosen


def store_of(conf: cfg.ConfigOpts, spec: TargetSpec, context: StoreContext) -> Store:
    """The store of one target, built as the sync builds it."""
    if spec.name == DEFAULT and not conf.sync.targets:
        return store_from_conf(conf, context)
    with _values(spec.group):
        return store_from_conf(TargetConf(conf, spec), context)  # type: ignore[arg-type]


@contextlib.contextmanager
def _values(group: str) -> Iterator[None]:
    """A bad value in a target's section (read only now) as one line naming it."""
    try:
        yield
    except (cfg.ConfigFileValueError, cfg.ConfigSourceValueError, ValueError) as exc:
        text = " ".join(str(exc).split())
        option = re.search(r"Value for option (\S+)", text)
        reason = text.split(" is not valid: ", 1)[-1]
        name = f" {option.group(1)}" if option else ""
        raise ConfigError(f"[{group}]{name}: {reason}") from None


def build_targets(conf: cfg.ConfigOpts, context: StoreContext) -> list[Target]:
    """Every target's store, built and checked; nothing contacted yet."""
    specs = target_specs(conf)
    if not specs:
        return [Target(DEFAULT, store_from_conf(conf, context), "")]  # "": [sync] retire
    places: dict[tuple[Any, ...], str] = {}
    for spec in specs:  # every place compared before any store is built (or asks its cloud)
        where = _place(conf, spec)
        if where is not None:
            place, shown = where
            if place in places:
                raise ConfigError(
                    f"[{spec.group}]: writes where target {places[place]} writes "
                    f"({shown}); two targets would retire each other's images"
                )
            places[place] = spec.name
    return [
        Target(spec.name, store_of(conf, spec, context), spec.retire, spec.groups) for spec in specs
    ]


def route(
    subscriptions: Iterable[Subscription], targets: Sequence[Named]
) -> dict[str, frozenset[str]]:
    """Subscription name → the names of the targets its images go to.

    A subscription without ``targets`` goes to every target; one naming a
    target or group that does not exist is a ConfigError naming both.
    """
    everyone = frozenset(t.name for t in targets)
    members: dict[str, set[str]] = {t.name: {t.name} for t in targets}
    for t in targets:
        for label in t.groups:
            members.setdefault(label, set()).add(t.name)
    result = {}
    for sub in subscriptions:
        wanted = getattr(sub, "targets", None)
        if wanted is None:
            result[sub.name] = everyone
            continue
        chosen: set[str] = set()
        for label in wanted:
            if label not in members:
                known = ", ".join(sorted(members))
                raise ConfigError(
                    f"subscription {sub.name}: targets: no target or group named {label!r} "
                    f"(configured: {known})"
                )
            chosen |= members[label]
        result[sub.name] = frozenset(chosen)
    return result

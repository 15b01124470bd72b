"""``TrustedImageFilter``: on worker-node flavours, only images the site's sync sealed.

A request is a *worker-node request* when its flavour has the extra spec
``vmtrust:trusted_only`` or, with ``[vmtrust] aggregate_trusted_only``, for
hosts in an aggregate whose metadata has ``vmtrust_trusted_only``, with any
value but a recognised false (:mod:`vmtrust.enforcement`: ``on``, ``enabled``
or a typo enforce, and are logged).  Other requests pass untouched.

A worker-node request must not be volume-backed: the scheduler is told the
image of ``imageRef``, not which volume becomes the root disk (the user's own
volume, or one nova makes from another image, boot with a trusted
``imageRef`` beside them), so every request with ``is_bfv`` set — or without
it — is refused.  Worker nodes are image-backed.  Its image must then be
trusted by :class:`nova_filter.decision.ImageTrust` (owner, seal, hash, state,
expiry); optionally its VO must be the requesting project's.  Anything that
goes wrong on the way (configuration, Glance, a bug) refuses the request.

Cost: :meth:`filter_all` is overridden so the decision is computed once per
request, not per host; ``run_filter_once_per_request`` reuses it for the
other instances of a multi-create.  The Glance client and key files are set
up on first use, not at import, so the scheduler starts as fast as without
the filter.

Rebuilds are filtered (``RUN_ON_REBUILD``); moves of existing servers
(migrate, evacuate, resize, unshelve — the conductor restricts them to the
instance's cell) follow ``[vmtrust] moves``.  ``allow`` forgives an untrusted
image only when the instance already was a worker-node server (its current
flavour, or in aggregate mode its host, says so): a resize of another server
onto a worker flavour makes a new worker server and is filtered as one.
"""

from __future__ import annotations

import threading
from typing import Any

from nova import conf as nova_conf
from nova.scheduler import filters
from nova.scheduler import utils as scheduler_utils
from oslo_log import log as logging

from nova_filter import conf as vmtrust_conf
from nova_filter.decision import ImageTrust, glance_fetch
from vmtrust import enforcement
from vmtrust.enforcement import AGGREGATE_KEY, FLAVOR_KEY
from vmtrust.trust import Code, Verdict, refuse

LOG = logging.getLogger(__name__)
CONF = nova_conf.CONF
vmtrust_conf.register(CONF)

VOLUME_BACKED = (
    "{what} request (boot from volume): the scheduler cannot tell which volume becomes the "
    "root disk; worker nodes are image-backed"
)

_trust: ImageTrust | None = None
_trust_lock = threading.Lock()
#: Unusual mark values already logged: once per process, not per host and request.
_logged_values: set[tuple[str, str]] = set()


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a nova object if set (unset fields raise on access, not AttributeError)."""
    return getattr(obj, name) if name in obj else default


def _marked(key: str, specs: Any, where: str) -> bool:
    """Whether ``specs[key]`` enforces; a value that is no recognised boolean is logged."""
    value = (specs or {}).get(key)
    if enforcement.unusual(value) and len(_logged_values) < 1024:
        seen = (where, str(value))
        with _trust_lock:
            first = seen not in _logged_values
            _logged_values.add(seen)
        if first:
            LOG.warning(
                "TrustedImageFilter: %s %s=%r is not a recognised true or false: "
                "enforcing (fail closed); write true or false",
                where,
                key,
                value,
            )
    return enforcement.enforces(value)


def image_trust() -> ImageTrust:
    """The process-wide decision cache, built from ``[vmtrust]`` on first use."""
    global _trust
    with _trust_lock:
        if _trust is None:
            _trust = _build(CONF)
        return _trust


def reset() -> None:
    """Forget the cache, configuration and logged values (tests; a SIGHUP-style reload)."""
    global _trust
    with _trust_lock:
        _trust = None
        _logged_values.clear()


def _build(conf: Any) -> ImageTrust:
    from keystoneauth1 import loading as ks_loading

    from vmtrust.record import load_public_key

    section = conf.vmtrust
    keys = [load_public_key(path) for path in section.seal_public_keys]
    auth = ks_loading.load_auth_from_conf_options(conf, vmtrust_conf.GROUP)
    session = ks_loading.load_session_from_conf_options(conf, vmtrust_conf.GROUP, auth=auth)
    adapter = ks_loading.load_adapter_from_conf_options(
        conf, vmtrust_conf.GROUP, session=session, auth=auth
    )
    adapter.service_type = adapter.service_type or "image"
    return ImageTrust(
        glance_fetch(adapter),
        keys,
        section.trusted_owners,
        ttl=section.cache_ttl,
        size=section.cache_size,
        deadline=section.timeout or vmtrust_conf.DEFAULT_TIMEOUT,
        accept_registry=section.accept_registry_trust,
    )


def is_move(spec_obj: Any) -> bool:
    """Migrate, resize, evacuate, live-migrate, unshelve: the conductor pins the cell."""
    if scheduler_utils.request_is_rebuild(spec_obj):
        return False  # a rebuild brings a new image: always filtered
    destination = _field(spec_obj, "requested_destination")
    return destination is not None and _field(destination, "cell") is not None


def was_worker_server(spec_obj: Any) -> bool:
    """For a move: was the instance a worker-node server before it?

    The request carries the *target* flavour (a resize's new one), so the
    instance's current flavour is read from its cell, and in aggregate mode
    whether its host is in a marked aggregate.  Unknown (no context, a
    database error) counts as no: the move is then filtered like a new server.
    """
    from nova import context as nova_context
    from nova import objects

    try:
        context = spec_obj._context
        cell = spec_obj.requested_destination.cell
        with nova_context.target_cell(context, cell) as cell_context:
            instance = objects.Instance.get_by_uuid(
                cell_context, spec_obj.instance_uuid, expected_attrs=["flavor"]
            )
        if enforcement.flavour_enforces(instance.flavor.extra_specs):
            return True
        if CONF.vmtrust.aggregate_trusted_only and instance.host:
            aggregates = objects.AggregateList.get_by_host(context, instance.host,
                                                           key=AGGREGATE_KEY)  # fmt: skip
            return any(enforcement.aggregate_enforces(a.metadata) for a in aggregates)
    except Exception as exc:  # fail closed: the move is filtered
        LOG.warning(
            "TrustedImageFilter: cannot tell whether instance %s was a worker-node server "
            "(%s); its move is filtered like a new server",
            _field(spec_obj, "instance_uuid", "?"),
            " ".join(str(exc).split())[:200],
        )
    return False


def _image_id(spec_obj: Any) -> str | None:
    image = _field(spec_obj, "image")
    image_id = _field(image, "id") if image is not None else None
    return str(image_id) if image_id else None


def _project_vo(project_id: str) -> str | None:
    for entry in CONF.vmtrust.project_vo:
        project, _, vo = entry.partition(":")
        if project.strip() == project_id:
            return vo.strip()
    return None


class TrustedImageFilter(filters.BaseHostFilter):
    """Only trusted images on worker-node flavours (or worker-marked aggregates)."""

    RUN_ON_REBUILD = True
    run_filter_once_per_request = True

    def _worker_flavour(self, spec_obj: Any) -> bool:
        flavor = _field(spec_obj, "flavor")
        if flavor is None:
            return False
        where = f"flavour {_field(flavor, 'name', '?')}"
        return _marked(FLAVOR_KEY, _field(flavor, "extra_specs"), where)

    def _worker_host(self, host_state: Any) -> bool:
        if not CONF.vmtrust.aggregate_trusted_only:
            return False
        return any(
            _marked(
                AGGREGATE_KEY, aggregate.metadata, f"aggregate {_field(aggregate, 'name', '?')}"
            )
            for aggregate in getattr(host_state, "aggregates", []) or []
        )

    def _judge_image(self, spec_obj: Any, image_id: str | None) -> Verdict:
        if "is_bfv" not in spec_obj or spec_obj.is_bfv:
            what = "volume-backed" if "is_bfv" in spec_obj else "possibly volume-backed"
            return refuse(Code.UNKNOWN, VOLUME_BACKED.format(what=what))
        if image_id is None:
            return refuse(Code.UNKNOWN, "no image id (boot from volume)")
        try:
            trust = image_trust()
        except Exception as exc:  # a bad key file or auth option: refuse, try again next time
            problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            return refuse(Code.UNKNOWN, f"[vmtrust] configuration: {problem}")
        return trust.decide(image_id)

    def decide(self, spec_obj: Any) -> Verdict:
        """The request's verdict: computed once, logged once if it refuses."""
        image_id = _image_id(spec_obj)
        decision = self._judge_image(spec_obj, image_id)
        if decision.trusted and CONF.vmtrust.require_vo_match:
            wanted = _project_vo(_field(spec_obj, "project_id", "") or "")
            if wanted is None:
                decision = refuse(Code.POLICY, "requesting project has no VO (project_vo)")
            elif wanted != decision.vo:
                decision = refuse(
                    Code.POLICY,
                    f"image serves VO {decision.vo!r}, the project works for {wanted!r}",
                    decision.record,
                )
        if (
            not decision.trusted
            and is_move(spec_obj)
            and CONF.vmtrust.moves == "allow"
            and was_worker_server(spec_obj)
        ):
            LOG.warning(
                "TrustedImageFilter: allowing a move of instance %s although its image %s is "
                "not trusted (%s); [vmtrust] moves = allow",
                _field(spec_obj, "instance_uuid", "?"),
                image_id,
                decision.reason,
            )
            return Verdict(True, f"move allowed: {decision.reason}", decision.record)
        if not decision.trusted:
            LOG.info(
                "TrustedImageFilter: refusing image %s for instance %s on a worker-node "
                "request: %s",
                image_id,
                _field(spec_obj, "instance_uuid", "?"),
                decision.reason,
            )
        return decision

    def filter_all(self, filter_obj_list: Any, spec_obj: Any) -> list[Any]:
        hosts = list(filter_obj_list)
        worker_flavour = self._worker_flavour(spec_obj)
        if not worker_flavour and not CONF.vmtrust.aggregate_trusted_only:
            return hosts  # the common case for non-worker requests: no per-host work
        decision: Verdict | None = None
        passed = []
        for host in hosts:
            if not (worker_flavour or self._worker_host(host)):
                passed.append(host)
                continue
            if decision is None:
                decision = self.decide(spec_obj)
            if decision.trusted:
                passed.append(host)
        return passed

    def host_passes(self, host_state: Any, spec_obj: Any) -> bool:
        return bool(self.filter_all([host_state], spec_obj))


__all__ = ["TrustedImageFilter", "image_trust", "is_move", "reset", "was_worker_server"]

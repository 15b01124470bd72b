"""``vmtrust-sync --check``: is this configuration ready to sync?  Asked without changing anything.

The first sign of a misconfiguration should not be a failed pass at three in
the morning.  The check reads ``vmtrust.conf`` and everything it names, and
says, one line per problem:

* the state directory: there or creatable, writable;
* the subscriptions file: valid;
* the CA directory: every CA the subscriptions' endorsers chain to is there,
  with a CRL that is present and not past its next update (``[trust]
  require_crls``);
* the seal key: present, a private key, readable by the sync, no access for
  others, and its ``.pub`` (what the nova filter checks with) its public half;
* every subscription: its list fetched and verified exactly as a pass would,
  with the rollback floor the state database holds;
* the store: a local directory the sync can write; Glance reachable with the
  sync's credentials, which must be able to create images in the service project
  with ``vmtrust_*`` properties (the role ``vmtrust_service``), while an
  ordinary member must not (the shipped property protections are in force);
  EC2 listable;
* the programs the configuration needs (``qemu-img`` for conversions, the NBD
  tools for EC2), the hook, and where metrics go;
* the coordination service of several sync hosts, when there is one: reachable,
  and no live worker already has this host's member id (asked without joining).

**Nothing is written**: no directory is made, the state database is opened
read-only, no store object that creates its folders is built, and Glance is
asked with a request it refuses whatever the protections are (see
:func:`_glance_probe`): no image is ever created.  Things worth knowing that
are not problems are printed as notes.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from oslo_config import cfg

from glance_sync import confine
from glance_sync.fetch import fetch_list
from glance_sync.httpclient import make_session
from glance_sync.settings import http_settings
from glance_sync.state import StateDB
from vmtrust import anchors, record
from vmtrust.errors import VmtrustError
from vmtrust.policy import Subscription, load_subscriptions
from vmtrust.safetext import shown
from vmtrust.truststore import TrustStore
from vmtrust.verify import Policy, verify_signed_list

__all__ = ["CRL_SOON", "PROBE", "Findings", "main", "run"]

CRL_SOON = timedelta(hours=24)  #: a CRL renewed later than this from now is worth a note
PROBE = "vmtrust_check_probe"  #: the property the Glance probe asks for


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  #: what was looked at


def _nearest(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(f: Findings, path: Path, what: str) -> None:
    """A directory the sync writes in: there and writable, or creatable."""
    f.checked.append(what)
    if path.exists():
        if not path.is_dir():
            f.problems.append(f"{what} {path}: not a directory")
        elif not os.access(path, os.W_OK | os.X_OK):
            f.problems.append(f"{what} {path}: not writable by uid {os.geteuid()}")
        return
    parent = _nearest(path)
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        f.notes.append(f"{what} {path} does not exist yet; the first pass makes it")
    else:
        f.problems.append(f"{what} {path}: does not exist, and {parent} is not writable")


def _subscriptions(f: Findings, conf: cfg.ConfigOpts) -> tuple[Subscription, ...]:
    f.checked.append("subscriptions file")
    try:
        return load_subscriptions(Path(conf.sync.subscriptions_file).expanduser())
    except VmtrustError as exc:
        f.problems.append(str(exc))
        return ()


def _ca_dir(
    f: Findings, conf: cfg.ConfigOpts, subs: tuple[Subscription, ...], now: datetime
) -> TrustStore | None:
    f.checked.append("CA directory")
    try:
        trust = TrustStore(
            Path(conf.trust.ca_dir).expanduser(),
            require_crls=conf.trust.require_crls,
            require_namespaces=conf.trust.require_namespaces,
        )
    except VmtrustError as exc:
        f.problems.append(f"[trust] ca_dir: {exc}")
        return None
    names = [endorser.ca for sub in subs for endorser in sub.endorsers]
    for state in anchors.crl_states(trust, names, now):
        if state.problem:
            f.problems.append(state.problem)
        elif state.next_update is not None and state.next_update - now < CRL_SOON:
            f.notes.append(
                f"CRL of {state.ca} must be renewed by {state.next_update:%Y-%m-%d %H:%M}Z "
                "(is fetch-crl running?)"
            )
    return trust


def _seal_key(f: Findings, conf: cfg.ConfigOpts) -> None:
    path = Path(conf.trust.seal_key).expanduser()
    what = f"[trust] seal_key {path}"
    f.checked.append("seal key")
    try:
        st = path.stat()
    except OSError as exc:
        hint = f" (make one with 'vmtrust keygen --out {path}')" if not path.exists() else ""
        f.problems.append(f"{what}: {exc.strerror or exc}{hint}")
        return
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        f.problems.append(f"{what}: not a regular file")
        return
    if mode & 0o037:  # group may read (root:vmtrust 0640); nothing more, nobody else
        f.problems.append(
            f"{what}: mode {mode:04o} lets others use it; make it 0600 (or 0640 with the "
            "sync's group)"
        )
    if st.st_uid not in (0, os.geteuid()):
        f.problems.append(f"{what}: owned by uid {st.st_uid}, neither root nor this user")
    try:
        private = record.load_private_key(path)
    except VmtrustError as exc:
        f.problems.append(str(exc))
        return
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        f.notes.append(f"{public} does not exist: the nova filter needs the public key")
        return
    try:
        published = record.load_public_key(public)
    except VmtrustError as exc:
        f.problems.append(str(exc))
        return
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if published.public_bytes(*raw) != private.public_key().public_bytes(*raw):
        f.problems.append(
            f"{public} is not the public half of {path}: what checks seals with it "
            "(the nova filter, vmtrust images) refuses every image the sync seals"
        )


def _lists(
    f: Findings,
    conf: cfg.ConfigOpts,
    subs: tuple[Subscription, ...],
    trust: TrustStore,
    now: datetime,
) -> None:
    """Fetch and verify every list as a pass would, with the state's rollback floor."""
    http = http_settings(conf)
    try:
        state = StateDB(
            Path(conf.state_dir).expanduser(),
            readonly=True,
            connection=conf.sync.state_connection,
        )
        try:
            accepted = {sub.name: state.get(sub.name) for sub in subs}
        finally:
            state.close()
    except VmtrustError as exc:
        f.problems.append(f"{exc} (lists not checked: their rollback floor is unknown)")
        return
    session = make_session()

    def one(sub: Subscription) -> str | None:
        known = accepted[sub.name]
        try:
            data = fetch_list(sub, session, http, conf.trust.max_list_bytes)
            policy = Policy(
                trust=trust,
                endorsers=sub.endorsers,
                identifier=sub.identifier or known.list_identifier,
                min_version=known.list_version,
                min_created=known.list_created,
                allow_sha1=conf.trust.allow_sha1,
                clock_skew=timedelta(seconds=conf.trust.clock_skew),
                max_bytes=conf.trust.max_list_bytes,
            )
            verify_signed_list(data, policy, now)
        except VmtrustError as exc:
            return f"subscription {sub.name}: {exc}"
        except Exception as exc:  # one subscription's surprise is its own line
            return f"subscription {sub.name}: unexpected {type(exc).__name__}: {exc}"
        return None

    try:
        with ThreadPoolExecutor(min(conf.sync.parallel_lists, len(subs) or 1)) as pool:
            for sub, problem in zip(subs, pool.map(one, subs), strict=True):
                f.checked.append(f"subscription {sub.name}")
                if problem:
                    f.problems.append(problem)
    finally:
        session.close()


# --- the store ---------------------------------------------------------------------------


def _store(f: Findings, conf: cfg.ConfigOpts) -> None:
    kind = conf.sync.store
    f.checked.append(f"store {kind}")
    if kind == "local":
        _writable_dir(f, Path(conf.store_local.path).expanduser(), "[store_local] path")
        return
    keys = _public_keys(conf)
    if keys is None:
        f.notes.append(f"store {kind} not checked: no seal key to read its records with")
        return
    try:
        if kind == "glance":
            _glance(f, conf, keys)
        else:
            store = _reader(conf, keys)
            f.notes.append(f"{kind} store: {len(store.held())} managed image(s)")
    except VmtrustError as exc:
        f.problems.append(f"store {kind}: {exc}")


def _public_keys(conf: cfg.ConfigOpts) -> list | None:
    path = Path(conf.trust.seal_key).expanduser()
    try:
        return [record.load_private_key(path).public_key()]
    except VmtrustError:
        return None


def _reader(conf: cfg.ConfigOpts, keys: list) -> Any:
    """The configured store, built by the registry as the site commands build it (no hook)."""
    from glance_sync.stores.registry import StoreContext, store_from_conf

    context = StoreContext(keys, Path(conf.state_dir).expanduser(), syncing=False)
    return store_from_conf(conf, context)


def _glance(f: Findings, conf: cfg.ConfigOpts, keys: list) -> None:
    from glance_sync import cloud

    store = _reader(conf, keys)
    held = store.held()  # reachable, and the listing works with these credentials
    f.notes.append(f"Glance store: {len(held)} managed image(s) in project {store.project_id}")
    verdict = _glance_probe(store, None, owner=store.project_id)
    if verdict == "protected":
        f.problems.append(
            f"store glance: the sync's credentials may not set vmtrust_* properties in "
            f"project {store.project_id}: give its user the role vmtrust_service there"
        )
    elif verdict != "allowed":
        f.problems.append(f"store glance: the sync's credentials: {verdict}")
    section = conf.store_glance
    if section.check_cloud:
        conn = cloud.connect_cloud(section.check_cloud, section.clouds_file, section.api_timeout)
        members = [(f"[store_glance] check_cloud {section.check_cloud}", conn)]
    else:
        members = [
            (f"the cloud of vo_project {project}", conn)
            for entries in store.vo_projects.values()
            for project, conn in entries
            if conn is not None
        ]
    if not members:
        f.notes.append(
            "Glance property protections not checked: no member credentials "
            "(set [store_glance] check_cloud to a clouds.yaml entry of an ordinary member)"
        )
        return
    for what, conn in members:
        verdict = _glance_probe(store, conn)
        f.checked.append(f"property protections ({what})")
        if verdict == "allowed":
            f.problems.append(
                f"Glance property protections are not in force: a member ({what}) may set "
                "vmtrust_* properties (install etc/glance/property-protections-vmtrust.conf)"
            )
        elif verdict != "protected":
            f.problems.append(f"Glance property protections not checked with {what}: {verdict}")


def _glance_probe(store: Any, conn: Any, owner: str | None = None) -> str:
    """May these credentials create an image with a ``vmtrust_*`` property?

    Asked with ``POST /v2/images`` of an image that also sets ``status``, which
    no one may set: Glance checks the property protections first (its
    outermost layer) and refuses a protected property, naming it; a permitted
    one reaches the next check, which refuses ``status`` as read-only.  Either
    way Glance creates nothing.  Returns ``"protected"``, ``"allowed"`` or why
    it cannot tell.  Should a Glance ever create the image anyway, it is deleted
    at once and that is the answer.
    """
    from vmtrust.errors import GlanceError

    body: dict[str, Any] = {"name": "vmtrust-check-probe", PROBE: "probe", "status": "queued"}
    if owner:
        body["owner"] = owner
    try:
        reply = store.call("POST", "/images", (201,), conn, json=body)
    except GlanceError as exc:
        text = str(exc)
        if exc.status == 403 and f"'{PROBE}'" in text:
            return "protected"
        if exc.status == 403 and "'status'" in text:
            return "allowed"
        return text
    image_id = reply.json().get("id", "")
    try:
        store.call("DELETE", f"/images/{image_id}", (204, 404), conn)
    except GlanceError as exc:
        return f"Glance created probe image {image_id} and it could not be deleted: {exc}"
    return f"Glance created a probe image (deleted again): it does not refuse 'status' ({image_id})"


# --- programs, hook, metrics ---------------------------------------------------------


def _tools(f: Findings, conf: cfg.ConfigOpts) -> None:
    kind = conf.sync.store
    converts = (kind == "local" and conf.store_local.disk_format.strip()) or (
        kind == "glance" and any(x.strip() for x in conf.store_glance.disk_formats)
    )
    needed = ["qemu-img"] if converts else []
    if kind == "ec2":
        needed += ["qemu-nbd", "nbdinfo", "nbdcopy"]
    for program in needed:
        f.checked.append(program)
        if shutil.which(program) is None:
            package = "libnbd-bin" if program.startswith("nbd") else "qemu-utils"
            f.problems.append(f"{program} not found (install {package}): the store needs it")
    if converts and confine.abi_version() < 1:
        f.notes.append("this kernel has no Landlock: qemu-img would run without confinement")
    hook = conf.store_local.hook
    if hook:
        f.checked.append("hook")
        if not (os.path.isfile(hook) and os.access(hook, os.X_OK)):
            f.problems.append(f"[store_local] hook {hook}: not an executable file")


def _metrics(f: Findings, conf: cfg.ConfigOpts) -> None:
    from glance_sync.metrics import parse_address

    if conf.sync.metrics_address:
        f.checked.append("metrics address")
        try:
            parse_address(conf.sync.metrics_address)
        except VmtrustError as exc:
            f.problems.append(str(exc))
    if conf.sync.metrics_textfile:
        folder = Path(conf.sync.metrics_textfile).expanduser().parent
        f.checked.append("metrics textfile")
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            f.problems.append(
                f"[sync] metrics_textfile {conf.sync.metrics_textfile}: {folder} is not a "
                "writable directory"
            )


def run(conf: cfg.ConfigOpts, now: datetime | None = None) -> Findings:
    """Every check, in the order a pass needs them; nothing is changed."""
    now = now or datetime.now(UTC)
    f = Findings()
    _writable_dir(f, Path(conf.state_dir).expanduser(), "[DEFAULT] state_dir")
    subs = _subscriptions(f, conf)
    trust = _ca_dir(f, conf, subs, now)
    _seal_key(f, conf)
    if subs and trust is not None:
        _lists(f, conf, subs, trust, now)
    for label, view in _targets(f, conf, subs):
        before = (len(f.problems), len(f.notes), len(f.checked))
        _store(f, view)
        _tools(f, view)
        if label:  # several targets: each finding names its target
            for items, start in zip((f.problems, f.notes, f.checked), before, strict=True):
                items[start:] = [f"target {label}: {item}" for item in items[start:]]
    _metrics(f, conf)
    _coordination(f, conf)
    return f


def _coordination(f: Findings, conf: cfg.ConfigOpts) -> None:
    """``[coordination] backend_url``, when set: :func:`glance_sync.coordination.check`."""
    from glance_sync import coordination

    if conf.coordination.backend_url.strip():
        f.checked.append("coordination")
        problems, notes = coordination.check(conf, Path(conf.state_dir).expanduser())
        f.problems += problems
        f.notes += notes


def _targets(f: Findings, conf: cfg.ConfigOpts, subs: tuple[Subscription, ...]) -> list:
    """(name, configuration view) per target of ``[sync] targets``; ("", conf) without."""
    from glance_sync.targets import TargetConf, route, target_specs

    try:
        specs = target_specs(conf)
        route(subs, specs)
    except VmtrustError as exc:
        f.problems.append(str(exc))
        return []
    if not specs:
        return [("", conf)]
    return [(spec.name, TargetConf(conf, spec)) for spec in specs]


def main(conf: cfg.ConfigOpts, say: Callable[[str], None]) -> int:
    """Print the notes (stdout) and one line per problem (``say``); 1 if there is any."""
    f = run(conf)
    for note in f.notes:
        print(f"note: {shown(note)}")
    for problem in f.problems:
        say(f"check: {problem}")
    count = len(f.problems)
    verdict = f"{count} problem{'s' if count != 1 else ''}" if count else "no problems"
    print(f"{verdict} ({len(f.checked)} checks: {', '.join(f.checked)})")
    return 1 if count else 0

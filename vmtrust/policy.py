"""Site policy: which lists a site subscribes to, and which of their images it approves.

Endorsement is not approval: an endorser vouches for images, the site decides
which of them it runs.  A subscriptions file (YAML) names, per subscription,
the list URL, the endorsers allowed to sign it, the VO it serves and the
approval — ``all``, a list of image identifiers, or rules::

    subscriptions:
      - name: cms
        url: https://images.example.org/lists/cms.list
        endorsers:
          - dn: /DC=org/DC=example/O=People/CN=Jane Endorser
            ca: /DC=org/DC=example/CN=Example Test CA
        vo: cms
        approve:
          - 85bfb313-a852-444b-89e7-9cdf8c23dc91        # one image
          - {os: Linux, arch: x86_64, hypervisor: kvm}   # a rule
        new_images: refuse        # images that appear later wait for approval
        targets: [ral-a, uk]      # where its images go ([sync] targets); default: everywhere

A subscription of ``type: oci`` reads an OCI registry instead (a repository, or
a Harbor project, and which tags), and says what it trusts — never implicitly:
``trust: hepix`` (a signed HEPiX list, ``url`` and ``endorsers`` as above, whose
images are ``oci://`` references pinned by digest), ``trust: cosign`` (cosign
signatures made with the site's ``keys``) or ``trust: registry`` (the
registry's word only).  See docs/oci.md.

The whole file is validated before anything is touched; every problem names
the file, the key path and what is wrong.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmtrust import dn, yamlsafe
from vmtrust.errors import ConfigError, Problems
from vmtrust.imagelist import Endorser, Image, ImageList
from vmtrust.policy_oci import OCI_KEYS, TRUST_MODES, OciSource, oci_source
from vmtrust.safetext import redact
from vmtrust.urls import has_credentials, url_problem

__all__ = [
    "CREDENTIAL_KEYS",
    "RULE_KEYS",
    "SUBSCRIPTION_KEYS",
    "Credentials",
    "Rule",
    "Subscription",
    "load_subscriptions",
    "parse_subscriptions",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RULE_KEYS = (
    "identifier",
    "vo",
    "os",
    "osname",
    "osversion",
    "arch",
    "hypervisor",
    "format",
    "title",
)
SUBSCRIPTION_KEYS = {
    "name",
    "url",
    "endorsers",
    "identifier",
    "vo",
    "approve",
    "new_images",
    "credentials",
    "tls_ca",
    "site",
    "description",
    "type",
    "trust",
    "targets",
}
CREDENTIAL_KEYS = {"username", "password_file", "password_env", "token_file", "token_env"}


@dataclass(frozen=True)
class Credentials:
    """Where the secret comes from — never the secret itself, so it is never logged."""

    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    token_file: str | None = None
    token_env: str | None = None

    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) for HTTP Basic; AppDB tokens are ``<token>:x-oauth-basic``."""
        token = _secret(self.token_file, self.token_env, "token")
        if token is not None:
            return token, "x-oauth-basic"
        password = _secret(self.password_file, self.password_env, "password")
        if self.username is None and password is None:
            return None
        return self.username or "", password or ""


def _secret(path: str | None, env: str | None, what: str) -> str | None:
    if path:
        try:
            value = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{what} file {path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not value:
            raise ConfigError(f"{what} file {path}: empty")
        return value
    if env:
        if env not in os.environ:
            raise ConfigError(f"{what} environment variable {env} is not set")
        if not os.environ[env]:
            raise ConfigError(f"{what} environment variable {env}: empty")
        return os.environ[env]
    return None


@dataclass(frozen=True)
class Rule:
    """Image attributes that must all match (case-insensitive, shell-style globs)."""

    index: int
    match: tuple[tuple[str, str], ...]

    def matches(self, image: Image, vo: str | None) -> bool:
        values = {
            "identifier": image.identifier,
            "vo": vo or "",
            "os": image.os,
            "osname": image.osname or "",
            "osversion": image.osversion,
            "arch": image.arch,
            "hypervisor": image.hypervisor,
            "format": image.format or "",
            "title": image.title,
        }
        return all(
            fnmatch.fnmatchcase(values[k].lower(), pattern.lower()) for k, pattern in self.match
        )


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    endorsers: tuple[Endorser, ...]
    identifier: str | None = None
    vo: str | None = None
    approve_all: bool = False
    identifiers: frozenset[str] = frozenset()
    rules: tuple[Rule, ...] = ()
    new_images: str = "accept"  #: "accept" or "refuse"
    credentials: Credentials = field(default_factory=Credentials)
    tls_ca: str | None = None
    site: bool = False
    type: str = "list"  #: "list" or "oci"
    trust: str = "hepix"  #: what vouches for the images (:data:`TRUST_MODES`)
    oci: OciSource | None = None  #: the registry of a ``type: oci`` subscription
    #: the targets (or target groups) of the sync its images go to; None: every target
    targets: tuple[str, ...] | None = None

    @property
    def lists_registry(self) -> bool:
        """Its images come from listing a registry, not from a signed list."""
        return self.oci is not None and self.trust != "hepix"

    def approval(self, image: Image, lst: ImageList, known: frozenset[str] | None) -> str | None:
        """Why ``image`` is approved ("all", "identifier", "rule:N", "site"), or None.

        ``known`` are the identifiers seen when the subscription was first
        accepted; with ``new_images: refuse`` later ones wait for approval.  A
        subscription marked ``site: true`` is the site's own list (signed by the
        site itself): its approved images are recorded with approval "site", so
        the trust record, ``vmtrust images`` and the store's metadata tell the
        site's own images from endorsed ones.
        """
        why = self._approval(image, lst, known)
        return "site" if why is not None and self.site else why

    def _approval(self, image: Image, lst: ImageList, known: frozenset[str] | None) -> str | None:
        if image.identifier in self.identifiers:
            return "identifier"
        if self.new_images == "refuse" and known is not None and image.identifier not in known:
            return None
        if self.approve_all:
            return "all"
        vo = self.vo or lst.vo
        for rule in self.rules:
            if rule.matches(image, vo):
                return f"rule:{rule.index}"
        return None


def _string(
    p: Problems, obj: dict[str, Any], key: str, path: str, required: bool = False
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            p.add(f"{path}.{key}", "missing")
        return None
    if not isinstance(value, str) or not value.strip():
        p.add(f"{path}.{key}", f"not a non-empty string: {value!r}")
        return None
    return value


def _endorsers(p: Problems, value: Any, path: str) -> tuple[Endorser, ...]:
    if not isinstance(value, list) or not value:
        p.add(path, "must be a non-empty list of {dn, ca}")
        return ()
    result = []
    for index, entry in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(entry, dict):
            p.add(where, "not a mapping with dn and ca")
            continue
        subject = _string(p, entry, "dn", where, required=True)
        issuer = _string(p, entry, "ca", where, required=True)
        for key, text in (("dn", subject), ("ca", issuer)):
            if text is not None:
                try:
                    dn.parse(text)
                except ValueError as exc:
                    p.add(f"{where}.{key}", str(exc))
                    text = None
        if subject and issuer:
            result.append(Endorser(dn=subject, ca=issuer))
    return tuple(result)


def _approval(p: Problems, value: Any, path: str) -> tuple[bool, frozenset[str], tuple[Rule, ...]]:
    if value == "all":
        return True, frozenset(), ()
    if value is None:
        p.add(path, "missing (all, a list of image identifiers, or rules)")
        return False, frozenset(), ()
    if not isinstance(value, list):
        p.add(path, f"must be 'all' or a list, not {value!r}")
        return False, frozenset(), ()
    identifiers, rules = set(), []
    for index, entry in enumerate(value):
        where = f"{path}[{index}]"
        if isinstance(entry, str) and entry.strip():
            identifiers.add(entry.strip())
        elif isinstance(entry, dict) and entry:
            unknown = sorted(set(entry) - set(RULE_KEYS))
            if unknown:
                p.add(where, f"unknown rule key {unknown[0]!r} (use {', '.join(RULE_KEYS)})")
                continue
            # YAML turns `yes` into True and `8.10` into 8.1: only text and whole
            # numbers say what the site wrote.
            if any(isinstance(v, bool) or not isinstance(v, str | int) for v in entry.values()):
                p.add(where, "rule values must be strings (quote values like '8.10' or 'yes')")
                continue
            rules.append(Rule(index=index, match=tuple((k, str(v)) for k, v in entry.items())))
        else:
            p.add(where, f"not an image identifier or a rule: {entry!r}")
    return False, frozenset(identifiers), tuple(rules)


def _credentials(p: Problems, value: Any, path: str) -> Credentials:
    if value is None:
        return Credentials()
    if not isinstance(value, dict):
        p.add(path, "must be a mapping")
        return Credentials()
    unknown = sorted(set(value) - CREDENTIAL_KEYS)
    if unknown:
        p.add(
            f"{path}.{unknown[0]}",
            "unknown key (secrets come from *_file or *_env keys, never inline)",
        )
        return Credentials()
    fields_ = {k: _string(p, value, k, path) for k in CREDENTIAL_KEYS}
    if fields_["password_file"] and fields_["password_env"]:
        p.add(path, "give password_file or password_env, not both")
    if fields_["token_file"] and fields_["token_env"]:
        p.add(path, "give token_file or token_env, not both")
    return Credentials(**fields_)


def _url(p: Problems, url: str, path: str) -> None:
    shown = redact(url)  # a password in the URL must not reach the error either
    scheme = url.partition(":")[0]  # lower case only: the fetcher dispatches on it
    problem = url_problem(url, ("http", "https", "file"))
    if problem is None and scheme not in ("http", "https", "file"):
        problem = "not an http, https or file URL"
    if problem:
        p.add(f"{path}.url", f"{problem}: {shown}")
    elif has_credentials(url):
        p.add(
            f"{path}.url",
            f"credentials in the URL are refused (they would end up in logs): {shown}; "
            "use credentials: {username, password_file or password_env} or token_file",
        )


def _trust(p: Problems, obj: dict[str, Any], kind: str, path: str) -> str:
    """What vouches for the images: a registry's subscription must say it; a list's is hepix."""
    trust = obj.get("trust")
    if kind == "oci":
        if trust is None:
            p.add(
                f"{path}.trust",
                "missing: say what vouches for the images (hepix, cosign or registry); "
                "there is no default",
            )
        elif trust not in TRUST_MODES:
            p.add(f"{path}.trust", f"must be one of {', '.join(TRUST_MODES)}, not {trust!r}")
        return trust if trust in TRUST_MODES else "hepix"
    if trust not in (None, "hepix"):
        p.add(f"{path}.trust", "a list subscription is trusted through its signed list (hepix)")
    return "hepix"


def _subscription(p: Problems, obj: Any, path: str) -> Subscription | None:
    if not isinstance(obj, dict):
        p.add(path, "not a mapping")
        return None
    before = len(p.items)
    kind = obj.get("type", "list")
    if kind not in ("list", "oci"):
        p.add(f"{path}.type", f"must be list or oci, not {kind!r}")
    for key in sorted(set(obj) - SUBSCRIPTION_KEYS - (OCI_KEYS if kind == "oci" else set())):
        p.add(f"{path}.{key}", "only for type: oci" if key in OCI_KEYS else "unknown key")
    trust = _trust(p, obj, kind, path)
    from_list = trust == "hepix"  # a signed list says which images, and vouches for them
    name = _string(p, obj, "name", path, required=True)
    if name and not _NAME_RE.match(name):
        p.add(f"{path}.name", f"{name!r}: use letters, digits, '.', '_' and '-' (max 64)")
    url = _string(p, obj, "url", path, required=from_list)
    if url:
        _url(p, url, path)
    endorsers: tuple[Endorser, ...] = ()
    if from_list:
        endorsers = _endorsers(p, obj.get("endorsers"), f"{path}.endorsers")
    for key in ("url", "endorsers", "identifier"):
        if not from_list and key in obj:
            p.add(f"{path}.{key}", f"only with a signed list (trust: hepix), not trust: {trust}")
    approve = obj.get("approve", None if from_list else "all")
    approve_all, identifiers, rules = _approval(p, approve, f"{path}.approve")
    new_images = obj.get("new_images", "accept")
    if new_images not in ("accept", "refuse"):
        p.add(f"{path}.new_images", f"must be accept or refuse, not {new_images!r}")
    site = obj.get("site", False)
    if not isinstance(site, bool):
        p.add(f"{path}.site", "must be true or false")
    tls_ca = _string(p, obj, "tls_ca", path)
    if tls_ca and not Path(tls_ca).expanduser().exists():
        p.add(f"{path}.tls_ca", f"{tls_ca}: no such file or directory")
    credentials = _credentials(p, obj.get("credentials"), f"{path}.credentials")
    identifier = _string(p, obj, "identifier", path)
    vo = _string(p, obj, "vo", path)
    oci = oci_source(p, obj, trust, path) if kind == "oci" else None
    targets = _targets(p, obj.get("targets"), f"{path}.targets") if "targets" in obj else None
    if len(p.items) > before:
        return None
    return Subscription(
        name=name or "",
        url=url or "",
        endorsers=endorsers,
        identifier=identifier,
        vo=vo,
        approve_all=approve_all,
        identifiers=identifiers,
        rules=rules,
        new_images=new_images,
        credentials=credentials,
        tls_ca=str(Path(tls_ca).expanduser()) if tls_ca else None,
        site=site,
        type=kind,
        trust=trust,
        oci=oci,
        targets=targets,
    )


def _targets(p: Problems, value: Any, path: str) -> tuple[str, ...] | None:
    """Names of targets or target groups (checked against vmtrust.conf by the sync)."""
    if not isinstance(value, list) or not value:
        p.add(path, "must be a non-empty list of target or group names")
        return None
    names = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not _NAME_RE.match(entry):
            p.add(f"{path}[{index}]", f"not a target or group name: {entry!r}")
        elif entry in names:
            p.add(f"{path}[{index}]", f"{entry!r} is named twice")
        else:
            names.append(entry)
    return tuple(names)


def parse_subscriptions(text: str, source: str = "subscriptions") -> tuple[Subscription, ...]:
    """Parse and validate a subscriptions document; raise ConfigError listing problems."""
    try:
        document = yamlsafe.load(text, source=source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None
    p = Problems(source)
    if not isinstance(document, dict) or not isinstance(document.get("subscriptions"), list):
        raise ConfigError(f"{source}: must be a mapping with a 'subscriptions' list")
    result: list[Subscription] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(document["subscriptions"]):
        sub = _subscription(p, entry, f"subscriptions[{index}]")
        if sub is None:
            continue
        if sub.name in names:
            p.add(
                f"subscriptions[{index}].name",
                f"{sub.name!r} is already used by subscriptions[{names[sub.name]}]",
            )
            continue
        names[sub.name] = index
        result.append(sub)
    p.raise_if_any()
    return tuple(result)


def load_subscriptions(path: str | Path) -> tuple[Subscription, ...]:
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"subscriptions file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"subscriptions file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return parse_subscriptions(text, str(path))

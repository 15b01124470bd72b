"""type: oci subscriptions in the subscriptions file: what is required, what is refused.

Trust is never implicit: an OCI subscription must say hepix, cosign or
registry; each mode takes only the keys that make sense for it; every problem
is one line naming the file and the key.
"""

from __future__ import annotations

import pytest
from oci_registry import p256_key, write_public_key

from vmtrust.errors import InvalidConfiguration
from vmtrust.policy import parse_subscriptions

BASE = """subscriptions:
  - name: egi
    type: oci
    registry: https://registry.egi.eu
"""


def parse(extra: str):
    return parse_subscriptions(
        BASE + "".join(f"    {line}\n" for line in extra.splitlines()), "s.yaml"
    )


def problems(extra: str) -> list[str]:
    with pytest.raises(InvalidConfiguration) as info:
        parse(extra)
    return info.value.problems


def test_cosign_subscription(tmp_path):
    pub = write_public_key(p256_key(), tmp_path / "egi.pub")
    (sub,) = parse(
        f"project: egi_vm_images\ntag_pattern: '[^-]*'\ntrust: cosign\nkeys: [{pub}]\n"
        "signed_registry: registry.egi.eu\nvalid_days: 3\nvo: ops"
    )
    assert sub.type == "oci" and sub.trust == "cosign" and sub.lists_registry
    assert sub.oci.registry == "https://registry.egi.eu" and sub.oci.project == "egi_vm_images"
    assert sub.oci.where == "registry.egi.eu/egi_vm_images"
    assert len(sub.oci.keys) == 1 and sub.oci.valid_days == 3
    assert sub.approve_all  # the tags select; approval defaults to all


def test_hepix_subscription_reads_a_list():
    (sub,) = parse(
        "repository: egi_vm_images/ubuntu\ntrust: hepix\nurl: https://lists.example.org/a.list\n"
        "endorsers: [{dn: /DC=org/CN=E, ca: /DC=org/CN=CA}]\napprove: all"
    )
    assert sub.trust == "hepix" and not sub.lists_registry and sub.url.endswith("a.list")


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("repository: a/b", "s.yaml: subscriptions[0].trust: missing: say what vouches"),
        ("repository: a/b\ntrust: web", "trust: must be one of hepix, cosign, registry"),
        ("trust: registry", "give one of repository: (a repository) or project:"),
        ("repository: a/b\nproject: p\ntrust: registry", "give one of repository:"),
        ("repository: A/B\ntrust: registry", "repository: not a valid repository name: 'A/B'"),
        ("project: a/b\ntrust: registry", "project: a project name has no '/'"),
        ("repository: a/b\ntrust: registry\ntags: ['../x']", "tags[0]: not a tag or sha256"),
        ("repository: a/b\ntrust: registry\ntags: [x]\ntag_pattern: y", "not both"),
        ("repository: a/b\ntrust: registry\ntag_pattern: '('", "tag_pattern: not a regular"),
        ("repository: a/b\ntrust: cosign", "trust: cosign needs the public key files"),
        ("repository: a/b\ntrust: registry\nkeys: [x.pub]", "keys: only with trust: cosign"),
        ("repository: a/b\ntrust: cosign\nkeys: [/nonexistent.pub]", "cosign public key"),
        ("repository: a/b\ntrust: registry\nurl: https://x/l", "url: only with a signed list"),
        ("repository: a/b\ntrust: hepix\napprove: all", "url: missing"),
        ("repository: a/b\ntrust: hepix\nurl: https://x/l\napprove: all\n"
         "endorsers: [{dn: /CN=a, ca: /CN=b}]\ntag_pattern: x", "the signed list names"),
        ("repository: a/b\ntrust: registry\nvalid_days: 0", "valid_days: must be a whole"),
        ("repository: a/b\ntrust: registry\nsigned_registry: x", "only with trust: cosign"),
    ],
)  # fmt: skip
def test_problems(extra, problem):
    assert any(problem in line for line in problems(extra)), problems(extra)


@pytest.mark.parametrize(
    ("registry", "problem"),
    [
        ("ftp://r.example.org", "not an http or https URL"),
        ("https://user:pw@r.example.org", "credentials in the URL are refused"),
        ("https://r.example.org/v2/", "give only the scheme and host"),
    ],
)
def test_registry_url_problems_never_show_a_password(registry, problem):
    text = (
        f"subscriptions:\n  - name: e\n    type: oci\n    registry: {registry}\n"
        "    repository: a/b\n    trust: registry\n"
    )
    with pytest.raises(InvalidConfiguration) as info:
        parse_subscriptions(text, "s.yaml")
    assert problem in str(info.value) and "pw" not in str(info.value)


def test_oci_keys_are_refused_in_a_list_subscription():
    text = """subscriptions:
  - name: l
    url: https://x/l
    endorsers: [{dn: /CN=a, ca: /CN=b}]
    approve: all
    registry: https://r.example.org
    trust: registry
"""
    with pytest.raises(InvalidConfiguration) as info:
        parse_subscriptions(text, "s.yaml")
    assert "s.yaml: subscriptions[0].registry: only for type: oci" in info.value.problems
    assert any(
        "a list subscription is trusted through its signed list" in p for p in info.value.problems
    )

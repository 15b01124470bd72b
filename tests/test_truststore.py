"""The IGTF trust directory: CRL caching, untrusted certificates, namespace files."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from vmtrust import devpki, dn
from vmtrust.errors import (
    CertificateRevoked,
    ConfigError,
    CrlError,
    NamespaceViolation,
    UntrustedSigner,
)
from vmtrust.namespaces import NamespacePolicy, load_for_ca, parse_eacl, parse_signing_policy
from vmtrust.truststore import TrustStore, subject_hash
from vmtrust.verify import Policy, verify_signed_list

NOW = datetime.now(UTC)
CA = dn.parse("/DC=org/DC=example/CN=Example Test CA")
OTHER = dn.parse("/DC=org/DC=other/CN=Other CA")


def der(credential) -> bytes:
    return credential.cert.public_bytes(serialization.Encoding.DER)


def crl_pem(ca, revoked=()) -> bytes:
    return devpki.make_crl(ca, list(revoked)).public_bytes(serialization.Encoding.PEM)


def crl_path(ca_dir: Path, ca) -> Path:
    return ca_dir / f"{subject_hash(ca.cert)}.r0"


# --- CRLs --------------------------------------------------------------------------


def test_crl_cache_reloads_when_the_file_changes(ca_dir, pki):
    trust = TrustStore(ca_dir)
    assert trust.validate(pki.endorser.cert, [], NOW)[-1].der == der(pki.ca)
    crl_path(ca_dir, pki.ca).write_bytes(crl_pem(pki.ca, [pki.revoked.cert, pki.endorser.cert]))
    with pytest.raises(CertificateRevoked, match="Jane Endorser"):
        trust.validate(pki.endorser.cert, [], NOW)


def test_crl_replaced_with_same_size_and_mtime_is_reloaded(ca_dir, pki):
    """fetch-crl renames a new file into place; mtime and size alone can collide."""
    trust = TrustStore(ca_dir)
    path = crl_path(ca_dir, pki.ca)
    path.write_bytes(crl_pem(pki.ca, [pki.revoked.cert]))
    trust.validate(pki.endorser.cert, [], NOW)
    old = path.stat()
    fresh = ca_dir / "incoming.tmp"
    for _ in range(20):  # DER serials can differ in length by a byte: aim for the same size
        fresh.write_bytes(crl_pem(pki.ca, [pki.endorser.cert]))
        if fresh.stat().st_size == old.st_size:
            break
    os.utime(fresh, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(fresh, path)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (old.st_mtime_ns, old.st_size)
    with pytest.raises(CertificateRevoked):
        trust.validate(pki.endorser.cert, [], NOW)


def test_crl_removed_after_success_is_noticed(ca_dir, pki):
    trust = TrustStore(ca_dir)
    trust.validate(pki.endorser.cert, [], NOW)
    crl_path(ca_dir, pki.ca).unlink()
    with pytest.raises(CrlError, match="no valid CRL"):
        trust.validate(pki.endorser.cert, [], NOW)


@pytest.mark.parametrize("content", [b"", b"not a CRL", b"-----BEGIN X509 CRL-----\nAAAA\n"])
def test_unparsable_crl_is_missing(ca_dir, pki, content):
    crl_path(ca_dir, pki.ca).write_bytes(content)
    with pytest.raises(CrlError, match="no valid CRL"):
        TrustStore(ca_dir).validate(pki.endorser.cert, [], NOW)


def test_unreadable_crl_is_a_crl_error_not_an_oserror(ca_dir, pki):
    path = crl_path(ca_dir, pki.ca)
    path.unlink()
    path.mkdir()  # reading it raises IsADirectoryError
    with pytest.raises(CrlError, match="no valid CRL"):
        TrustStore(ca_dir).validate(pki.endorser.cert, [], NOW)


def test_intermediate_crl_is_checked(ca_dir, pki):
    crl_path(ca_dir, pki.ca).write_bytes(crl_pem(pki.ca, [pki.sub_ca.cert]))
    with pytest.raises(CertificateRevoked, match="Example Sub CA"):
        TrustStore(ca_dir).validate(pki.sub_endorser.cert, [der(pki.sub_ca)], NOW)


# --- what may and may not become a trust anchor -------------------------------------


def test_rogue_ca_sent_in_the_message_is_not_trusted(ca_dir, pki, sign):
    trust = TrustStore(ca_dir)
    with pytest.raises(UntrustedSigner) as info:
        trust.validate(pki.rogue.cert, [der(pki.rogue_ca)], NOW)
    assert "not issued by a CA in" in str(info.value)
    data = sign(signer=pki.rogue, extra=[pki.rogue_ca.cert])
    with pytest.raises(UntrustedSigner):
        verify_signed_list(data, Policy(trust=trust))


def test_validation_time_is_honoured(ca_dir, pki):
    trust = TrustStore(ca_dir)
    with pytest.raises(UntrustedSigner, match="not yet valid"):
        trust.validate(pki.endorser.cert, [], NOW - timedelta(days=30))


def test_ca_dir_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        TrustStore(tmp_path / "file")
    with pytest.raises(ConfigError, match="not a directory"):
        TrustStore(tmp_path / "missing")


# --- namespace files --------------------------------------------------------------


EACL = """\
##############################################################################
#NAMESPACES-VERSION: 1.0
#
# @(#)example.namespaces
#
TO Issuer "/DC=org/DC=example/CN=Example Test CA" \\
  PERMIT Subject "/DC=org/DC=example/.*"

# hosts are issued elsewhere
TO Issuer "/DC=org/DC=example/CN=Example Test CA" \\
  DENY Subject "/DC=org/DC=example/OU=Hosts/.*"

TO SELF PERMIT Subject "/DC=org/DC=self/.*"
"""


def test_eacl_continuations_comments_deny_and_self():
    policy = NamespacePolicy()
    parse_eacl(EACL, Path("x.namespaces"), OTHER, policy)
    assert policy.knows(CA) and policy.knows(OTHER)
    assert policy.allows(CA, "/DC=org/DC=example/O=People/CN=Jane Endorser")
    assert not policy.allows(CA, "/DC=org/DC=example/OU=Hosts/CN=host.example.org")
    assert not policy.allows(CA, "/DC=org/DC=elsewhere/CN=Outside")
    assert not policy.allows(CA, "/DC=org/DC=self/CN=x")  # SELF is the file's own CA only
    assert policy.allows(OTHER, "/DC=org/DC=self/CN=x")


def test_eacl_patterns_match_the_whole_subject():
    policy = NamespacePolicy()
    text = 'TO Issuer "/DC=org/DC=example/CN=Example Test CA" PERMIT Subject "/DC=org/DC=ex"\n'
    parse_eacl(text, Path("x.namespaces"), CA, policy)
    assert policy.allows(CA, "/DC=org/DC=ex")
    assert not policy.allows(CA, "/DC=org/DC=example/CN=Jane")


def test_signing_policy_with_several_globs():
    text = """# Globus signing policy
access_id_CA   X509   '/DC=org/DC=other/CN=Other CA'
pos_rights     globus CA:sign
cond_subjects  globus '"/DC=org/DC=other/*" "/C=XX/O=Other Grid/CN=host?.example.org"'
"""
    policy = NamespacePolicy()
    parse_signing_policy(text, Path("x.signing_policy"), policy)
    assert policy.allows(OTHER, "/DC=org/DC=other/CN=Other Endorser")
    assert policy.allows(OTHER, "/C=XX/O=Other Grid/CN=host1.example.org")
    assert not policy.allows(OTHER, "/C=XX/O=Other Grid/CN=host12.example.org")
    assert not policy.allows(OTHER, "/DC=org/DC=otherwise/CN=x")
    assert not policy.knows(CA)


def test_both_files_are_combined(tmp_path):
    (tmp_path / "abcd1234.namespaces").write_text(EACL)
    (tmp_path / "abcd1234.signing_policy").write_text(
        "access_id_CA X509 '/DC=org/DC=example/CN=Example Test CA'\n"
        "cond_subjects globus '\"/DC=org/DC=extra/*\"'\n"
    )
    policy = load_for_ca(tmp_path, "abcd1234", CA)
    assert policy is not None
    assert policy.allows(CA, "/DC=org/DC=extra/CN=x")
    assert policy.allows(CA, "/DC=org/DC=example/CN=x")
    assert load_for_ca(tmp_path, "00000000", CA) is None


@pytest.mark.parametrize(
    "text",
    [
        'TO Issuer "/DC=org/DC=example/CN=Example Test CA" PERMIT Subject "/DC=org/(unclosed"\n',
        'TO Issuer "/DC=org/DC=example/CN=Example Test CA" PERMIT Subject "/DC=org/.*\n',
        'TO Issuer "not a dn" PERMIT Subject "/DC=org/.*"\n',
        'TO Nobody "/DC=org" PERMIT Subject "/DC=org/.*"\n',
        'TO Issuer "/DC=org/DC=example/CN=Example Test CA" ALLOW Subject "/DC=org/.*"\n',
        'TO Issuer "/DC=org/DC=example/CN=Example Test CA" PERMIT Subject\n',
    ],
)
def test_malformed_namespace_file_names_the_file(ca_dir, pki, sign, text):
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.namespaces"
    path.write_text(text)
    with pytest.raises(NamespaceViolation) as info:
        verify_signed_list(sign(), Policy(trust=TrustStore(ca_dir)))
    assert str(path) in str(info.value)  # the file and its problem, not "no policy"


def test_unreadable_namespace_file_names_the_file(ca_dir, pki):
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.namespaces"
    path.unlink()
    path.mkdir()
    with pytest.raises(NamespaceViolation) as info:
        TrustStore(ca_dir).validate(pki.endorser.cert, [], NOW)
    assert f"{path}: cannot read" in str(info.value)


def test_namespace_file_for_another_ca_does_not_count(ca_dir, pki):
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.namespaces"
    path.write_text('TO Issuer "/DC=org/DC=other/CN=Other CA" PERMIT Subject "/DC=org/.*"\n')
    with pytest.raises(NamespaceViolation, match="no namespace policy for CA"):
        TrustStore(ca_dir).validate(pki.endorser.cert, [], NOW)


def test_namespace_change_is_picked_up(ca_dir, pki):
    trust = TrustStore(ca_dir)
    trust.validate(pki.endorser.cert, [], NOW)
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.namespaces"
    path.write_text(
        'TO Issuer "/DC=org/DC=example/CN=Example Test CA" '
        'PERMIT Subject "/DC=org/DC=example/OU=Only/.*"\n'
    )
    with pytest.raises(NamespaceViolation, match="outside the namespace"):
        trust.validate(pki.endorser.cert, [], NOW)

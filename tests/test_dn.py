"""Slash-form distinguished names (vmtrust.dn): rendering, parsing, comparing.

Covers: ``slash`` renders like OpenSSL's X509_NAME_oneline (short names, DC,
emailAddress, UID, ``\\xHH`` for bytes outside printable ASCII); ``parse``
reads OpenSSL 1.x and 3.x output (``\\/`` and ``\\+`` escapes, unescaped ``/``
inside a value, ``+`` between the attributes of a multi-valued RDN, ``\\xHH``
bytes), attribute type aliases in any case and dotted OIDs; ``same`` and
``normalise``; garbage refused; a hypothesis round trip; and a differential
test against ``openssl x509 -noout -subject -nameopt compat``.
"""

import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from vmtrust import devpki, dn

CN, DC, UID = NameOID.COMMON_NAME, NameOID.DOMAIN_COMPONENT, NameOID.USER_ID
ORG, EMAIL = NameOID.ORGANIZATION_NAME, NameOID.EMAIL_ADDRESS


def name(*pairs):
    """An x509.Name from (oid, value) pairs, or tuples of pairs for a multi-valued RDN."""
    rdns = []
    for pair in pairs:
        group = pair if isinstance(pair[0], tuple) else (pair,)
        rdns.append(x509.RelativeDistinguishedName(
            [x509.NameAttribute(oid, value, *kind) for oid, value, *kind in group]))  # fmt: skip
    return x509.Name(rdns)


JANE = name((DC, "org"), (DC, "example"), (ORG, "People"), (CN, "Jane Endorser"))
HOST = name((DC, "org"), (DC, "example"), (CN, "host/www.example.org"))


# --- slash ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "text"),
    [
        (JANE, "/DC=org/DC=example/O=People/CN=Jane Endorser"),
        (name((DC, "org"), (CN, "x"), (EMAIL, "x@example.org")),
         "/DC=org/CN=x/emailAddress=x@example.org"),
        (name((DC, "org"), (UID, "jdoe"), (CN, "John Doe")), "/DC=org/UID=jdoe/CN=John Doe"),
        (name((NameOID.COUNTRY_NAME, "DE"), (NameOID.STATE_OR_PROVINCE_NAME, "Hamburg"),
              (NameOID.LOCALITY_NAME, "Hamburg"), (ORG, "GermanGrid"),
              (NameOID.ORGANIZATIONAL_UNIT_NAME, "DESY"), (CN, "Owen Synge")),
         "/C=DE/ST=Hamburg/L=Hamburg/O=GermanGrid/OU=DESY/CN=Owen Synge"),
        (HOST, "/DC=org/DC=example/CN=host/www.example.org"),  # 1.x: '/' not escaped
        (name(((CN, "Jane"), (UID, "jd"))), "/CN=Jane/UID=jd"),  # multi-valued RDN
        (name((x509.ObjectIdentifier("1.2.3.4"), "x")), "/1.2.3.4=x"),
        (name((CN, "Müller")), "/CN=M\\xC3\\xBCller"),  # UTF8String bytes, as OpenSSL
        (name((CN, "tab\there")), "/CN=tab\\x09here"),
        (name((CN, "Bé", _ASN1Type.BMPString)), "/CN=\\x00B\\x00\\xE9"),
        (name((CN, "a+b=c, d\\e")), "/CN=a+b=c, d\\e"),
        (x509.Name([]), ""),
    ],
)  # fmt: skip
def test_slash(subject, text):
    assert dn.slash(subject) == text


def test_devpki_credentials_use_slash():
    ca = devpki.make_ca()
    assert ca.dn == ca.ca_dn == devpki.CA_DN
    assert dn.same(devpki.CA_DN, ca.cert.subject)


# --- parse ------------------------------------------------------------------------------


def test_parse_gives_oids_and_values():
    assert dn.parse("/DC=org/CN=Jane") == (
        ("0.9.2342.19200300.100.1.25", "org"), ("2.5.4.3", "Jane"))  # fmt: skip
    assert dn.parse("/DC=org/DC=example/O=People/CN=Jane Endorser") == dn.components(JANE)


@pytest.mark.parametrize(
    ("text", "subject"),
    [
        ("/DC=org/DC=example/CN=host\\/www.example.org", HOST),  # -nameopt compat (OpenSSL 3)
        ("/DC=org/DC=example/CN=host/www.example.org", HOST),  # OpenSSL 1.x, SXV
        ("/CN=a/b=c", name((CN, "a/b=c"))),  # "b" is no attribute type
        ("/CN=a/", name((CN, "a/"))),
        ("/CN=Jane+UID=jd", name(((CN, "Jane"), (UID, "jd")))),  # OpenSSL 3 multi-valued
        ("/CN=Jane/UID=jd", name(((CN, "Jane"), (UID, "jd")))),  # OpenSSL 1.x multi-valued
        ("/O=A\\+B/CN=x", name((ORG, "A+B"), (CN, "x"))),  # OpenSSL 3 escapes '+'
        ("/O=A+B Corp/CN=x", name((ORG, "A+B Corp"), (CN, "x"))),  # 1.x does not
        ("/CN=M\\xC3\\xBCller", name((CN, "Müller"))),
        ("/CN=M\\xc3\\xbcller", name((CN, "Müller"))),
        ("/CN=Müller", name((CN, "Müller"))),  # written by hand
        ("/CN=\\x00B\\x00\\xE9", name((CN, "Bé"))),  # BMPString
        ("/CN=\\x00\\x00\\x00B\\x00\\x00\\x00\\xE9", name((CN, "Bé"))),  # UniversalString
        ("/CN=caf\\xE9", name((CN, "café"))),  # Latin-1 T61String
        ("/CN=a\\\\b", name((CN, "a\\\\b"))),  # OpenSSL never escapes a backslash
        ("/CN=back\\slash", name((CN, "back\\slash"))),
        ("/CN=a\\\\/b", name((CN, "a\\/b"))),  # a backslash, then an escaped '/'
        ("/CN=\\xZZ", name((CN, "\\xZZ"))),  # not a hex escape
        ("/CN=x=y", name((CN, "x=y"))),
        ("/title=", name((NameOID.TITLE, ""))),
    ],
)
def test_parse_reads_what_openssl_prints(text, subject):
    assert dn.parse(text) == dn.components(subject)
    assert dn.same(text, subject)


@pytest.mark.parametrize(
    "text",
    [
        "/DC=org/E=x@example.org", "/DC=org/Email=x@example.org",
        "/DC=org/emailAddress=x@example.org", "/dc=org/EMAILADDRESS=x@example.org",
        "/DomainComponent=org/e=x@example.org", "/0.9.2342.19200300.100.1.25=org/"
        "1.2.840.113549.1.9.1=x@example.org", "/ DC =org/E=x@example.org",
    ],
)  # fmt: skip
def test_attribute_type_aliases_and_case(text):
    assert dn.same(text, name((DC, "org"), (EMAIL, "x@example.org")))


@pytest.mark.parametrize(
    "text",
    [
        "/cn=Jane", "/Cn=Jane", "/commonName=Jane", "/COMMONNAME=Jane", "/2.5.4.3=Jane",
    ],
)  # fmt: skip
def test_common_name_spellings(text):
    assert dn.parse(text) == (("2.5.4.3", "Jane"),)


@pytest.mark.parametrize(
    "text",
    [
        "/CN=jane", "/CN=Jane ", "/CN= Jane", "/CN=Jane/CN=Jane", "/O=Jane", "/UID=Jane",
        "/CN=Jane+CN=x", "/2.5.4.4=Jane",
    ],
)  # fmt: skip
def test_values_and_types_compare_exactly(text):
    assert not dn.same(text, name((CN, "Jane")))


def test_order_matters():
    assert not dn.same("/CN=Jane Endorser/O=People/DC=example/DC=org", JANE)
    assert not dn.same("/DC=org/DC=example/CN=Jane Endorser", JANE)


def test_unescaped_slash_cannot_split_one_value_into_two():
    """A CA-issued CN "Jane/CN=Evil" is not the endorser "/CN=Jane/CN=Evil" (two CNs)."""
    one_cn = name((DC, "org"), (CN, "Jane/CN=Evil"))
    two_cns = name((DC, "org"), (CN, "Jane"), (CN, "Evil"))
    assert dn.same("/DC=org/CN=Jane/CN=Evil", two_cns)
    assert not dn.same("/DC=org/CN=Jane/CN=Evil", one_cn)
    assert dn.same("/DC=org/CN=Jane\\/CN=Evil", one_cn)
    assert not dn.same("/DC=org/CN=Jane\\/CN=Evil", two_cns)


@pytest.mark.parametrize(
    "text",
    ["", "CN=x", "DC=org/CN=x", " /CN=x", "/", "//CN=x", "/=x", "/CN", "/XX=1",
     "/foo/CN=x", "/1.=x", "/.1=x", "/1..2=x", "/²=x", "/+CN=x"],
)  # fmt: skip
def test_garbage(text):
    with pytest.raises(ValueError, match="not a slash-form DN"):
        dn.parse(text)
    assert dn.same(text, JANE) is False
    with pytest.raises(ValueError):
        dn.normalise(text)


def test_normalise():
    assert dn.normalise("/dc=org/E=a@example.org/cn=host\\/x+uid=jd") == (
        "/DC=org/emailAddress=a@example.org/CN=host/x/UID=jd")  # fmt: skip
    assert (
        dn.normalise("/CN=Müller") == "/CN=M\\xC3\\xBCller" == dn.normalise("/CN=M\\xc3\\xbcller")
    )
    assert dn.normalise("/1.2.3.4=x") == "/1.2.3.4=x"


# --- properties ------------------------------------------------------------------------

_TYPES = [CN, DC, ORG, NameOID.ORGANIZATIONAL_UNIT_NAME, UID, EMAIL, NameOID.LOCALITY_NAME,
          NameOID.SERIAL_NUMBER, NameOID.TITLE, NameOID.GIVEN_NAME, NameOID.SURNAME]  # fmt: skip
# No '/', '+' or '\\' (those have their own tests: their unescaped forms are ambiguous),
# and no NUL: "\x00" in a value is read as the padding of a BMPString.
_VALUE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/+\\\x00"), min_size=1,
    max_size=12)  # fmt: skip
_ATTRIBUTE = st.tuples(st.sampled_from(_TYPES), _VALUE).map(lambda p: x509.NameAttribute(*p))
_NAMES = st.lists(
    st.lists(_ATTRIBUTE, min_size=1, max_size=2, unique=True), min_size=1, max_size=6
).map(lambda rdns: x509.Name([x509.RelativeDistinguishedName(r) for r in rdns]))


@given(_NAMES)
def test_slash_round_trips(subject):
    text = dn.slash(subject)
    assert text.isascii() and text.isprintable()
    assert dn.same(text, subject)
    assert dn.normalise(text) == text


@given(_NAMES, _NAMES)
def test_same_distinguishes_names(a, b):
    assert dn.same(dn.slash(a), b) == (dn.components(a) == dn.components(b))


# --- against the openssl command line ------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return devpki.make_ca()


def certificate(issuer, subject):
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .sign(issuer.key, hashes.SHA256())
    )  # fmt: skip


def openssl_names(cert):
    """(subject, issuer) as ``openssl x509 -noout -subject -issuer -nameopt compat`` prints them."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command line")
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-issuer", "-nameopt", "compat"],
        input=cert.public_bytes(serialization.Encoding.PEM), capture_output=True, check=True,
    )  # fmt: skip
    subject, issuer = result.stdout.decode("ascii").splitlines()
    return subject.removeprefix("subject="), issuer.removeprefix("issuer=")


@pytest.mark.openssl
def test_openssl_subject_with_a_slash_in_a_value(ca):
    subject = name((DC, "org"), (DC, "example"), (ORG, "Hosts"), (CN, "host/www.example.org"))
    cert = certificate(ca, subject)
    text, issuer = openssl_names(cert)
    assert "host\\/www.example.org" in text  # OpenSSL 3 escapes it; 1.x would not
    assert dn.same(text, cert.subject) and dn.same(issuer, cert.issuer)
    assert issuer == dn.slash(ca.cert.subject) == devpki.CA_DN
    assert not dn.same(text, ca.cert.subject)


@pytest.mark.openssl
def test_openssl_awkward_subject(ca):
    subject = name(
        (DC, "org"), ((CN, "Jane"), (UID, "jd")), (ORG, "A+B, C=D"), (CN, "Müller"),
        (CN, "Bé", _ASN1Type.BMPString), (CN, "Bé", _ASN1Type.UniversalString),
        (CN, "tab\there"), (CN, "a\\\\b"), (EMAIL, "jane@example.org"),
    )  # fmt: skip
    cert = certificate(ca, subject)
    text, _ = openssl_names(cert)
    assert "CN=Jane+UID=jd" in text and "A\\+B" in text and "M\\xC3\\xBCller" in text
    assert dn.same(text, cert.subject)
    assert dn.parse(text) == dn.parse(dn.slash(cert.subject))


@pytest.mark.openssl
def test_short_names_match_openssl(ca):
    oids = [getattr(NameOID, attr) for attr in dir(NameOID) if not attr.startswith("_")]
    values = {NameOID.COUNTRY_NAME: "DE", NameOID.JURISDICTION_COUNTRY_NAME: "DE"}
    for oid in oids:
        subject = name((oid, values.get(oid, "1234567890")))
        cert = certificate(ca, subject)
        text, _ = openssl_names(cert)
        assert dn.slash(cert.subject) == text, oid
        assert dn.same(text, cert.subject), oid

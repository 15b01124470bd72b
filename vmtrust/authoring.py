"""Endorser side: create lists, describe images, edit, bump and sign.

The workflow of hepixvmitrust's ``vmilisttool`` and of vmcaster, as pure
functions over list documents (dicts); the CLI adds file handling.  Before
signing, :func:`check_signable` refuses what a subscriber would refuse later
(a structurally invalid list, a certificate unfit for signing, an endorser
entry that does not name the certificate), because an endorser finds out far
sooner here than from a site's error report.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vmtrust import dn, egiprofile, fileio, imagelist, smime, verify, version
from vmtrust.errors import InputError, SigningError
from vmtrust.imagelist import format_date

__all__ = [
    "CHUNK",
    "MAX_CREDENTIAL_BYTES",
    "add_image",
    "bump",
    "check_signable",
    "describe_image",
    "hash_stream",
    "load_credentials",
    "new_list",
    "remove_image",
    "sign_document",
]

CHUNK = 1024 * 1024


def new_list(
    *,
    title: str,
    description: str,
    source: str,
    uri: str,
    endorser_dn: str,
    endorser_ca: str,
    creator: str = "",
    email: str = "",
    identifier: str | None = None,
    vo: str | None = None,
    lifetime: timedelta = timedelta(days=28),
    now: datetime | None = None,
    first_version: str = "1",
) -> dict[str, Any]:
    """A new, empty list document with the given endorser."""
    now = now or datetime.now(UTC)
    fields: dict[str, Any] = {
        "dc:date:created": format_date(now),
        "dc:date:expires": format_date(now + lifetime),
        "dc:description": description,
        "dc:identifier": identifier or str(uuid.uuid4()),
        "dc:source": source,
        "dc:title": title,
        "hv:endorser": {
            "hv:x509": {
                "dc:creator": creator,
                "hv:ca": endorser_ca,
                "hv:dn": endorser_dn,
                "hv:email": email,
            }
        },
        "hv:images": [],
        "hv:uri": uri,
        "hv:version": first_version,
    }
    if vo:
        fields["ad:vo"] = vo
    return {"hv:imagelist": dict(sorted(fields.items()))}


def hash_stream(stream: BinaryIO) -> tuple[int, str]:
    """Size and SHA-512 of a stream, read in chunks (images are gigabytes)."""
    digest = hashlib.sha512()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def describe_image(
    path: Path,
    *,
    uri: str,
    title: str,
    description: str = "",
    os: str = "Linux",
    osversion: str,
    arch: str = "x86_64",
    hypervisor: str = "KVM",
    image_version: str = "1",
    comments: str = "",
    image_format: str | None = None,
    osname: str | None = None,
    identifier: str | None = None,
    extra: dict[str, Any] | None = None,
    egi: bool = False,
    group: str | None = None,
    mpuri: str | None = None,
) -> dict[str, Any]:
    """An ``{"hv:image": …}`` entry with size and SHA-512 computed from the file.

    With ``egi`` (the AppDB/EGI profile, :mod:`vmtrust.egiprofile`) the format
    and distribution are required, the format is written as EGI's readers
    need it and ``ad:group`` is set; they are checked before the file is read,
    which may take minutes.
    """
    ad: dict[str, Any] = {}
    if group is not None:
        ad["ad:group"] = _text("--group", group)
    if mpuri is not None:
        ad["ad:mpuri"] = _text("--mpuri", mpuri, blanks=False)
    if egi:
        missing = [
            f"{key} ({option})"
            for key, option, value in (
                ("hv:format", "--format", image_format),
                ("sl:osname", "--osname", osname),
            )
            if not (value or "").strip()
        ]
        if missing:
            raise SigningError(
                f"image description: the EGI profile needs {' and '.join(missing)}: "
                "atrope refuses an image without them"
            )
        try:
            image_format = egiprofile.normalise_format(image_format or "")
        except ValueError as exc:
            raise SigningError(f"image description: {exc}") from None
        ad.setdefault("ad:group", egiprofile.DEFAULT_GROUP)
    try:
        with open(path, "rb") as stream:
            size, sha512 = hash_stream(stream)
    except OSError as exc:
        raise InputError(f"image file {path}: {exc.strerror or exc}") from None
    image: dict[str, Any] = {
        "dc:description": description,
        "dc:identifier": identifier or str(uuid.uuid4()),
        "dc:title": title,
        "hv:hypervisor": hypervisor,
        "hv:size": size,
        "hv:uri": uri,
        "hv:version": image_version,
        "sl:arch": arch,
        "sl:checksum:sha512": sha512,
        "sl:comments": comments,
        "sl:os": os,
        "sl:osversion": osversion,
    }
    if image_format:
        image["hv:format"] = image_format
    if osname:
        image["sl:osname"] = osname
    image.update(ad)
    image.update(extra or {})
    entry = {"hv:image": dict(sorted(image.items()))}
    # Validate through the same rules a subscriber applies, with a placeholder list.
    probe = new_list(
        title="probe",
        description="",
        source="",
        uri="https://probe/",
        endorser_dn="/CN=probe",
        endorser_ca="/CN=probe",
    )
    probe["hv:imagelist"]["hv:images"] = [entry]
    imagelist.validate(probe)
    return entry


def _text(option: str, value: str, *, blanks: bool = True) -> str:
    """An option's value for EGI's readers: printable text on one line (vmcatcher puts
    it into a handler's environment, atrope into a Glance property), not blank."""
    if not value.strip() or not value.isprintable() or (not blanks and " " in value):
        what = "one printable line" if blanks else "printable, without blanks"
        raise SigningError(f"image description: {option} {value!r} must be {what}")
    return value


def _fields(document: dict[str, Any]) -> dict[str, Any]:
    fields = imagelist.list_fields(document)
    if fields is None or not isinstance(fields.get("hv:images"), list):
        raise SigningError("image list: not a list document with hv:images")
    return fields


def add_image(
    document: dict[str, Any], entry: dict[str, Any], *, now: datetime | None = None
) -> tuple[dict[str, Any], bool]:
    """Add (or replace, by ``dc:identifier``) an image; return the new document and
    whether an existing entry was replaced.

    In an EGI list (one with ``ad:vo``) every image is completed with what
    EGI's readers require and can be derived from the list, and the result is
    refused if an image still lacks something: atrope refuses a whole list
    for one incomplete image.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("hv:image"), dict):
        raise SigningError('image description: not an object of the form {"hv:image": {...}}')
    result = copy.deepcopy(document)
    images = _fields(result)["hv:images"]
    identifier = entry["hv:image"].get("dc:identifier")
    replaced = False
    for index, existing in enumerate(images):
        if (
            isinstance(existing, dict)
            and isinstance(existing.get("hv:image"), dict)
            and (existing["hv:image"].get("dc:identifier") == identifier)
        ):
            images[index] = copy.deepcopy(entry)
            replaced = True
            break
    else:
        images.append(copy.deepcopy(entry))
    imagelist.validate(result)
    if egiprofile.is_egi(_fields(result)):
        _complete_egi(result, added=identifier, now=now or datetime.now(UTC))
    return result, replaced


def _complete_egi(document: dict[str, Any], *, added: Any, now: datetime) -> None:
    """Complete every image of an EGI list in place; refuse what stays unreadable."""
    fields = _fields(document)
    found = []
    for index, entry in enumerate(_image_objects(fields)):
        image = egiprofile.complete(fields, entry["hv:image"])
        entry["hv:image"] = image
        added_now = now if image.get("dc:identifier") == added else None
        found += [f"hv:images[{index}].{p}" for p in egiprofile.problems(image, now=added_now)]
    if found:
        raise SigningError(
            f"list {fields.get('dc:identifier')} has ad:vo, so EGI's tools read it, and they "
            f"would refuse it: {'; '.join(found)}"
        )
    imagelist.validate(document)


def remove_image(document: dict[str, Any], identifier: str) -> dict[str, Any]:
    result = copy.deepcopy(document)
    fields = _fields(result)
    kept = [
        e
        for e in fields["hv:images"]
        if not (
            isinstance(e, dict)
            and isinstance(e.get("hv:image"), dict)
            and e["hv:image"].get("dc:identifier") == identifier
        )
    ]
    if len(kept) == len(fields["hv:images"]):
        raise SigningError(f"image list: no image with dc:identifier {identifier}")
    fields["hv:images"] = kept
    return result


def bump(
    document: dict[str, Any],
    *,
    new_version: str | None = None,
    lifetime: timedelta = timedelta(days=28),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Next version of the list: version up, created now, expires now + lifetime."""
    now = now or datetime.now(UTC)
    result = copy.deepcopy(document)
    fields = _fields(result)
    current = str(fields.get("hv:version", "0"))
    target = new_version or version.bump(current)
    if version.compare(target, current) <= 0:
        raise SigningError(f"image list: new version {target} is not newer than {current}")
    old_expires = fields.get("dc:date:expires")
    fields["hv:version"] = target
    fields["dc:date:created"] = format_date(now)
    fields["dc:date:expires"] = format_date(now + lifetime)
    if egiprofile.is_egi(fields):
        # An image whose expiry is the list's lives as long as the list: it moves with it.
        # The rest is completed as add-image does, but nothing is refused: a renewal must
        # not wait for fields only the endorser can give (add-image names them).
        for entry in _image_objects(fields):
            if entry["hv:image"].get("dc:date:expires") in (None, old_expires):
                entry["hv:image"]["dc:date:expires"] = fields["dc:date:expires"]
            entry["hv:image"] = egiprofile.complete(fields, entry["hv:image"])
    return result


def _image_objects(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``{"hv:image": {...}}`` wrappers of a list, skipping malformed entries."""
    return [
        e
        for e in fields["hv:images"]
        if isinstance(e, dict) and isinstance(e.get("hv:image"), dict)
    ]


# --- signing ---------------------------------------------------------------------


#: A PEM certificate or key is a few KB; ``--key /dev/zero`` must not fill the memory.
MAX_CREDENTIAL_BYTES = 1024 * 1024


def load_credentials(
    cert_path: Path, key_path: Path, password: bytes | None = None
) -> tuple[x509.Certificate, Any]:
    """Read a PEM certificate and its private key (grid ``usercert.pem``/``userkey.pem``)."""
    cert_bytes = fileio.read_bytes(cert_path, what="certificate", limit=MAX_CREDENTIAL_BYTES)
    key_bytes = fileio.read_bytes(key_path, what="private key", limit=MAX_CREDENTIAL_BYTES)
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        raise SigningError(f"certificate {cert_path}: not a PEM X.509 certificate") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=password)
    except TypeError:
        raise SigningError(
            f"private key {key_path}: is encrypted; give its passphrase "
            "(--passphrase-file or VMTRUST_KEY_PASSPHRASE)"
            if password is None
            else f"private key {key_path}: is not encrypted"
        ) from None
    except ValueError:
        raise SigningError(
            f"private key {key_path}: cannot be read (wrong passphrase or not a PEM key)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError(f"private key {key_path}: only RSA and EC keys can sign S/MIME")
    return cert, key


def check_signable(
    document: dict[str, Any], cert: x509.Certificate, key: Any, now: datetime | None = None
) -> imagelist.ImageList:
    """Refuse to sign what no subscriber would accept; return the validated list."""
    now = now or datetime.now(UTC)
    lst = imagelist.validate(document)
    subject = dn.slash(cert.subject)
    public = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != mine:
        raise SigningError(f"certificate {subject}: the private key does not belong to it")
    usage = verify.key_usage_problem(cert)
    if usage is not None:
        raise SigningError(f"certificate {subject}: {usage}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SigningError(
            f"certificate {subject}: not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    if not any(dn.same(e.dn, cert.subject) and dn.same(e.ca, cert.issuer) for e in lst.endorsers):
        named = "; ".join(f"{e.dn} issued by {e.ca}" for e in lst.endorsers)
        raise SigningError(
            f"list {lst.identifier}: hv:endorser names {named}, but the certificate is "
            f"{subject} issued by {dn.slash(cert.issuer)}"
        )
    if lst.expires <= now:
        raise SigningError(
            f"list {lst.identifier}: already expired at {format_date(lst.expires)} "
            "(run 'vmtrust list bump' first)"
        )
    return lst


def sign_document(
    document: dict[str, Any],
    cert: x509.Certificate,
    key: Any,
    *,
    digest: str = "sha256",
    chain: list[x509.Certificate] | None = None,
    now: datetime | None = None,
) -> bytes:
    """Check and sign; return the S/MIME bytes."""
    check_signable(document, cert, key, now)
    return smime.sign(imagelist.dumps(document), cert, key, digest=digest, extra_certificates=chain)

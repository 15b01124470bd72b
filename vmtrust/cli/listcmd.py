"""``vmtrust list …``: verify, show, sign, and the endorser's authoring verbs."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from vmtrust import cms, dn, fileio, imagelist, jsonsafe, smime
from vmtrust.cli import render
from vmtrust.conf import make_conf
from vmtrust.errors import (
    ConfigError,
    InputError,
    InvalidListStructure,
    ListFormatError,
    ListTooLarge,
    SigningError,
    VmtrustError,
)
from vmtrust.imagelist import Endorser
from vmtrust.truststore import TrustStore
from vmtrust.verify import Policy, verify_signed_list

__all__ = [
    "MAX_LIFETIME_DAYS",
    "MIN_LIFETIME_DAYS",
    "PASSPHRASE_ENV",
    "cmd_add_image",
    "cmd_bump",
    "cmd_new",
    "cmd_remove_image",
    "cmd_show",
    "cmd_sign",
    "cmd_verify",
    "register",
]

PASSPHRASE_ENV = "VMTRUST_KEY_PASSPHRASE"
#: The range [endorser] lifetime_days accepts; a date past year 9999 cannot be written.
MIN_LIFETIME_DAYS, MAX_LIFETIME_DAYS = 1, 3650


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "list",
        help="image lists: verify, show, sign, create, edit",
        description="Work with HEPiX image lists.",
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser(
        "verify",
        help="verify a signed list against the site's trust directory",
        description="Verify a signed image list: S/MIME signature, signer chain to a CA in "
        "the trust directory with CRLs and namespaces, endorser DN, dates and version. "
        "Exit 0 and a summary when trusted; otherwise one line naming the failed rule.",
    )
    p.add_argument("signed_file", metavar="SIGNED_FILE", help="signed list (- for stdin)")
    p.add_argument("--ca-dir", help="IGTF trust directory (default: [trust] ca_dir)")
    p.add_argument(
        "--endorser-dn",
        action="append",
        default=[],
        metavar="DN",
        help="allowed endorser subject; repeat with --endorser-ca for each endorser",
    )
    p.add_argument(
        "--endorser-ca",
        action="append",
        default=[],
        metavar="CA_DN",
        help="issuer of the matching --endorser-dn",
    )
    p.add_argument("--identifier", help="expected dc:identifier of the list")
    p.add_argument(
        "--min-version", metavar="V", help="last accepted hv:version; an older list is a rollback"
    )
    p.add_argument(
        "--allow-sha1",
        action="store_true",
        default=None,
        help="accept SHA-1 signatures (old AppDB lists)",
    )
    p.add_argument(
        "--no-require-crls",
        dest="require_crls",
        action="store_false",
        default=None,
        help="do not require a CRL for every CA (present ones still count)",
    )
    p.add_argument("--json", action="store_true", help="print the verified list as JSON")
    p.set_defaults(handler=cmd_verify)

    p = verbs.add_parser(
        "show",
        help="show a list (signed or plain) without verifying it",
        description="Print a list for humans, or as JSON with --json. The "
        "signature is NOT checked: use 'vmtrust list verify' for that.",
    )
    p.add_argument("file", metavar="FILE", help="signed or plain list (- for stdin)")
    p.add_argument("--json", action="store_true", help="print the list document as JSON")
    p.set_defaults(handler=cmd_show)

    p = verbs.add_parser(
        "sign",
        help="sign a list as its endorser (S/MIME, like openssl)",
        description="Sign a list with the endorser certificate. Refuses a "
        "certificate without digitalSignature key usage and a list whose "
        "hv:dn/hv:ca do not name the certificate.",
    )
    p.add_argument("list_json", metavar="LIST_JSON", help="the list to sign")
    _credential_args(p)
    p.add_argument(
        "--digest",
        choices=["sha256", "sha512"],
        help="signature digest (default: [endorser] digest)",
    )
    p.add_argument(
        "--chain", metavar="FILE", help="PEM file of intermediate CA certificates to embed"
    )
    p.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(handler=cmd_sign)

    p = verbs.add_parser(
        "new",
        help="create an empty list for an endorser",
        description="Create a new, empty, unsigned list. The endorser is "
        "taken from --cert or given with --endorser-dn/--endorser-ca.",
    )
    p.add_argument("--title", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--source", default="", help="dc:source (free text, e.g. the site URL)")
    p.add_argument("--uri", required=True, help="URL where the signed list will be published")
    p.add_argument("--cert", help="endorser certificate to take hv:dn and hv:ca from")
    p.add_argument("--endorser-dn", help="hv:dn (if no --cert)")
    p.add_argument("--endorser-ca", help="hv:ca (if no --cert)")
    p.add_argument("--creator", default="", help="dc:creator, the endorser's name")
    p.add_argument("--email", default="", help="hv:email of the endorser")
    p.add_argument("--identifier", help="dc:identifier (default: a new UUID)")
    p.add_argument(
        "--vo",
        help="ad:vo, the VO the list serves; makes it an EGI list: 'list add-image' and "
        "'list bump' write what atrope and cloudkeeper require of each image "
        "(docs/authoring.md)",
    )
    p.add_argument("--lifetime-days", type=int, help="days until dc:date:expires")
    p.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(handler=cmd_new)

    p = verbs.add_parser(
        "add-image",
        help="add or replace an image in a list",
        description="Add the image described in IMAGE_JSON (from 'vmtrust "
        "image describe') to the list, replacing an image with the same "
        "dc:identifier. Edits LIST_JSON in place unless --out is given.",
    )
    p.add_argument("list_json", metavar="LIST_JSON")
    p.add_argument("image_json", metavar="IMAGE_JSON")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(handler=cmd_add_image)

    p = verbs.add_parser(
        "remove-image",
        help="remove an image (revocation) from a list",
        description="Remove the image with this dc:identifier; subscribers "
        "retire it when they accept the next version of the list.",
    )
    p.add_argument("list_json", metavar="LIST_JSON")
    p.add_argument("identifier", metavar="IDENTIFIER")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(handler=cmd_remove_image)

    p = verbs.add_parser(
        "bump",
        help="new version: version up, created now, new expiry",
        description="Prepare the next version of a list: hv:version is "
        "increased (last number + 1 unless --version), dc:date:created is now "
        "and dc:date:expires is now + the lifetime.",
    )
    p.add_argument("list_json", metavar="LIST_JSON")
    p.add_argument("--version", dest="new_version", metavar="V", help="explicit new version")
    p.add_argument("--lifetime-days", type=int, help="days until dc:date:expires")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(handler=cmd_bump)


def _credential_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", help="endorser certificate, PEM (default: [endorser] cert)")
    p.add_argument("--key", help="its private key, PEM (default: [endorser] key)")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"file holding the key passphrase (or set {PASSPHRASE_ENV}; "
        "asked on a terminal otherwise)",
    )


# --- helpers ---------------------------------------------------------------------------


def _read_document(path: str, limit: int = jsonsafe.DEFAULT_MAX_BYTES) -> tuple[Any, bytes]:
    """A list document from a plain or signed file (the signature is not checked here)."""
    data = fileio.read_bytes(path, what="list", limit=limit, too_large=ListTooLarge)
    content = data
    if smime.is_smime(data):
        content = smime.strip_text_headers(smime.split(data).content)
    return jsonsafe.loads(content, what=f"list {path}", max_bytes=limit), data


def _edit_target(args: argparse.Namespace) -> str:
    return args.out or args.list_json


def _write_document(path: str, document: dict[str, Any]) -> None:
    fileio.write_output(path, imagelist.dumps(document))


def _lifetime(args: argparse.Namespace) -> timedelta:
    days = args.lifetime_days
    if days is None:
        days = make_conf(args.config_file).endorser.lifetime_days
    if not MIN_LIFETIME_DAYS <= days <= MAX_LIFETIME_DAYS:
        raise ConfigError(
            f"--lifetime-days {days}: must be between {MIN_LIFETIME_DAYS} and {MAX_LIFETIME_DAYS}"
        )
    return timedelta(days=days)


# --- verbs -------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    conf = make_conf(args.config_file, groups=("trust",))
    if len(args.endorser_dn) != len(args.endorser_ca):
        raise ConfigError("give --endorser-dn and --endorser-ca in pairs, one CA per DN")
    endorsers = []
    for subject, issuer in zip(args.endorser_dn, args.endorser_ca, strict=True):
        for value, flag in ((subject, "--endorser-dn"), (issuer, "--endorser-ca")):
            try:
                dn.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{flag}: {exc}") from None
        endorsers.append(Endorser(dn=subject, ca=issuer))
    ca_dir = Path(args.ca_dir or conf.trust.ca_dir).expanduser()
    policy = Policy(
        trust=TrustStore(
            ca_dir,
            require_crls=conf.trust.require_crls
            if args.require_crls is None
            else args.require_crls,
            require_namespaces=conf.trust.require_namespaces,
        ),
        endorsers=tuple(endorsers),
        identifier=args.identifier,
        min_version=args.min_version,
        allow_sha1=bool(args.allow_sha1 or conf.trust.allow_sha1),
        clock_skew=timedelta(seconds=conf.trust.clock_skew),
        max_bytes=conf.trust.max_list_bytes,
    )
    data = fileio.read_bytes(
        args.signed_file,
        what="signed list",
        limit=conf.trust.max_list_bytes,
        too_large=ListTooLarge,
    )
    verified = verify_signed_list(data, policy)
    if args.json:
        json.dump(verified.summary(), sys.stdout, indent=2)
        print()
    else:
        lst = verified.imagelist
        print(
            render.clean(
                f"OK: list {lst.identifier} ({lst.title}) version {lst.version}, "
                f"{len(lst.images)} image{'s' if len(lst.images) != 1 else ''}, "
                f"expires {imagelist.format_date(lst.expires)}"
            )
        )
        print(f"    signed by {render.clean(verified.endorser.dn)}")
        print(f"    issued by {render.clean(verified.endorser.ca)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    document, data = _read_document(args.file)
    if args.json:
        json.dump(document, sys.stdout, indent=4)
        print()
        return 0
    fields = imagelist.list_fields(document)
    try:
        imagelist.validate(document)
        problems = []
    except InvalidListStructure as exc:
        if fields is None:  # nothing of a list to show
            raise
        problems = exc.problems
    assert fields is not None  # validate() refuses a document without list fields
    render.show_list(fields, signature=_signature(data, fields), problems=problems)
    if problems:
        raise ListFormatError(
            f"list {args.file}: not a valid image list ({len(problems)} "
            f"problem{'s' if len(problems) > 1 else ''}, each printed above)"
        )
    return 0


def _signature(data: bytes, fields: dict[str, Any]) -> list[str]:
    """What ``list show`` can say of a signature without the site's CAs, one line each:
    whether it matches the content, and whether the list names its signer."""
    if not smime.is_smime(data):
        return ["none (plain JSON list)"]
    message = smime.split(data)
    try:
        signer = cms.verify_detached(message.signature, message.content, allow_sha1=True).signer
    except VmtrustError as exc:
        return [f"INVALID: {exc}"]
    lines = [
        f"matches the content, by {dn.slash(signer.subject)} "
        "(signer NOT checked against any CA: use 'vmtrust list verify')"
    ]
    named = [e for e in imagelist.endorser_objects(fields) if isinstance(e, dict)]
    if not any(
        isinstance(e.get("hv:dn"), str)
        and isinstance(e.get("hv:ca"), str)
        and dn.names(e["hv:dn"], e["hv:ca"], signer)
        for e in named
    ):
        lines.append(
            f"DIFFERS from hv:dn/hv:ca: the signer is {dn.slash(signer.subject)} issued by "
            f"{dn.slash(signer.issuer)} ('vmtrust list verify' refuses the list)"
        )
    return lines


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if args.passphrase_file:
        raw = fileio.read_bytes(args.passphrase_file, what="passphrase file", limit=4096)
        return raw.rstrip(b"\r\n")
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV].encode()
    return None


def cmd_sign(args: argparse.Namespace) -> int:
    from vmtrust import authoring  # the endorser's side: not loaded for list verify

    conf = make_conf(args.config_file)
    cert_path = Path(args.cert or conf.endorser.cert).expanduser()
    key_path = Path(args.key or conf.endorser.key).expanduser()
    document, _ = _read_document(args.list_json)
    password = _passphrase(args)
    try:
        cert, key = authoring.load_credentials(cert_path, key_path, password)
    except SigningError as exc:
        if password is not None or "encrypted" not in str(exc) or not sys.stdin.isatty():
            raise
        password = getpass.getpass(f"Passphrase for {key_path}: ").encode()
        cert, key = authoring.load_credentials(cert_path, key_path, password)
    chain = []
    if args.chain:
        pem = fileio.read_bytes(args.chain, what="chain file", limit=1024 * 1024)
        try:
            chain = x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise InputError(f"chain file {args.chain}: not PEM certificates") from None
    signed = authoring.sign_document(
        document, cert, key, digest=args.digest or conf.endorser.digest, chain=chain
    )
    fileio.write_output(args.out, signed)
    if args.out:
        print(f"signed list written to {args.out}", file=sys.stderr)
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    from vmtrust import authoring  # the endorser's side: not loaded for list verify

    if args.cert:
        pem = fileio.read_bytes(args.cert, what="certificate", limit=1024 * 1024)
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise InputError(f"certificate {args.cert}: not a PEM X.509 certificate") from None
        subject, issuer = dn.slash(cert.subject), dn.slash(cert.issuer)
    elif args.endorser_dn and args.endorser_ca:
        subject, issuer = args.endorser_dn, args.endorser_ca
    else:
        raise ConfigError("give --cert, or both --endorser-dn and --endorser-ca")
    if args.vo is not None and (not args.vo or any(ch.isspace() for ch in args.vo)):
        raise ConfigError(f"--vo {args.vo!r}: a VO name has no blanks (e.g. vo.example.org)")
    document = authoring.new_list(
        title=args.title,
        description=args.description,
        source=args.source,
        uri=args.uri,
        endorser_dn=subject,
        endorser_ca=issuer,
        creator=args.creator,
        email=args.email,
        identifier=args.identifier,
        vo=args.vo,
        lifetime=_lifetime(args),
    )
    imagelist.validate(document)
    _write_document(args.out, document)
    return 0


def cmd_add_image(args: argparse.Namespace) -> int:
    from vmtrust import authoring  # the endorser's side: not loaded for list verify

    document, _ = _read_document(args.list_json)
    entry = jsonsafe.loads(
        fileio.read_bytes(args.image_json, what="image description", limit=1024 * 1024),
        what=f"image description {args.image_json}",
    )
    result, replaced = authoring.add_image(document, entry)
    _write_document(_edit_target(args), result)
    ident = entry["hv:image"].get("dc:identifier")
    print(render.clean(f"{'replaced' if replaced else 'added'} image {ident}"), file=sys.stderr)
    return 0


def cmd_remove_image(args: argparse.Namespace) -> int:
    from vmtrust import authoring  # the endorser's side: not loaded for list verify

    document, _ = _read_document(args.list_json)
    _write_document(_edit_target(args), authoring.remove_image(document, args.identifier))
    print(render.clean(f"removed image {args.identifier}"), file=sys.stderr)
    return 0


def cmd_bump(args: argparse.Namespace) -> int:
    from vmtrust import authoring  # the endorser's side: not loaded for list verify

    document, _ = _read_document(args.list_json)
    result = authoring.bump(document, new_version=args.new_version, lifetime=_lifetime(args))
    imagelist.validate(result)
    _write_document(_edit_target(args), result)
    fields = imagelist.list_fields(result) or {}
    print(
        render.clean(
            f"version {fields.get('hv:version')}, expires {fields.get('dc:date:expires')}"
        ),
        file=sys.stderr,
    )
    return 0

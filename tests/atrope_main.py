"""atrope's own list reading, run by ``.venv-atrope``'s Python for the tests.

atrope 2.0.0 (the release on PyPI) is imported unchanged; this script only
configures it for a throw-away directory and prints, as one JSON object, what
atrope made of a list:

``parse LIST_JSON WORKDIR``
    ``HepixImageList`` on the document: the fields atrope read from the list,
    its endorser and each ``HepixImage``, or atrope's refusal.
``fetch URL CA_PATH DN CA WORKDIR``
    atrope's whole reading of a published list: ``HepixImageListSource.fetch``
    (HTTP download, ``openssl smime -verify -CApath``, parsing, the endorser
    and expiry checks), ``CacheManager.sync`` (each image downloaded, its
    SHA-512 checked), then ``DispatcherManager.dispatch_list`` with atrope's
    Glance dispatcher, whose glanceclient is replaced by a recorder of the
    images it would create and the bytes it would upload.

Each image also gets ``expired_2_1``: the per-image expiry rule of atrope
2.1.0 (EGI-Federation/atrope ``HepixImage.__init__``, not in the PyPI
release), which reads a missing ``dc:date:expires`` as 2000-01-01 without a
time zone and compares it with an aware "now".
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys

import atrope.cache
import atrope.dispatcher.glance
import atrope.dispatcher.manager
import atrope.image
import atrope.image_list.hepix
import dateutil.parser
import dateutil.tz
from oslo_config import cfg

CONF = cfg.CONF


def configure(workdir: str, ca_path: str | None = None) -> None:
    """atrope's options for a private directory (no /etc/atrope, no /etc/grid-security)."""
    CONF([], project="atrope", default_config_files=[])
    if ca_path is None:
        ca_path = os.path.join(workdir, "no-cas")
        os.makedirs(ca_path, exist_ok=True)
    CONF.set_override("ca_path", ca_path)
    CONF.set_override("state_path", workdir)
    CONF.set_override("download_ca_file", os.path.join(workdir, "ca-bundle.pem"))
    CONF.set_override("path", os.path.join(workdir, "cache"), group="cache")


def expired_2_1(image_dict: dict) -> bool | str:
    """atrope 2.1.0's reading of an image's expiry: True/False, or the error it raises."""
    expires = dateutil.parser.parse(image_dict.get("dc:date:expires", "2000-01-01 00:00"))
    try:
        return expires < datetime.datetime.now(dateutil.tz.tzlocal())
    except TypeError as exc:
        return f"TypeError: {exc}"


def image_view(image: atrope.image.HepixImage) -> dict:
    view = {attr: getattr(image, attr) for attr in image.field_map.values()}
    view["expired_2_1"] = expired_2_1(image.appliance_attributes)
    view["verified"] = image.verified
    return view


def list_view(lst: atrope.image_list.hepix.HepixImageList) -> dict:
    return {
        "uuid": lst.uuid,
        "name": lst.name,
        "version": lst.version,
        "uri": lst.uri,
        "vo": lst.vo,
        "created": lst.created.isoformat(),
        "expires": lst.expires.isoformat(),
        "endorser": {"dn": lst.endorser.dn, "ca": lst.endorser.ca, "name": lst.endorser.name},
        "images": [image_view(i) for i in lst.get_images()],
    }


def refusal(exc: Exception) -> dict:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def parse(path: str, workdir: str) -> dict:
    configure(workdir)
    with open(path, "rb") as stream:
        document = json.load(stream)
    try:
        lst = atrope.image_list.hepix.HepixImageList(document)
    except Exception as exc:  # what atrope raises is the answer
        return refusal(exc)
    return {"ok": True, "list": list_view(lst)}


class _Created:
    def __init__(self, number: int) -> None:
        self.id = f"image-{number}"
        self.status = "queued"


class _Images:
    """The part of glanceclient's ``images`` manager atrope's dispatcher calls."""

    def __init__(self) -> None:
        self.created: list[dict] = []

    def list(self, **kwargs: object) -> list:
        return []

    def create(self, **metadata: object) -> _Created:
        self.created.append({"metadata": metadata})
        return _Created(len(self.created))

    def upload(self, image_id: str, stream) -> None:
        data = stream.read()
        self.created[int(image_id.split("-")[1]) - 1]["uploaded_sha512"] = hashlib.sha512(
            data
        ).hexdigest()


class _Members:
    def create(self, *args: object) -> None:
        pass

    def update(self, *args: object) -> None:
        pass


class _Glance:
    def __init__(self) -> None:
        self.images = _Images()
        self.image_members = _Members()


def fetch(url: str, ca_path: str, dn: str, ca: str, workdir: str) -> dict:
    configure(workdir, ca_path)
    source = atrope.image_list.hepix.HepixImageListSource(
        "vmtrust", url=url, endorser={"dn": dn, "ca": ca}
    )
    try:
        source.fetch()
    except Exception as exc:
        return refusal(exc)
    result = {
        "ok": True,
        "verified": source.verified,
        "trusted": source.trusted,
        "expired": source.expired,
        "error": None if source.error is None else str(source.error),
    }
    atrope.cache.CacheManager().sync({source.name: source})
    glance = _Glance()
    dispatcher = object.__new__(atrope.dispatcher.glance.Dispatcher)
    dispatcher.client = glance  # the only thing its __init__ does is make clients
    manager = object.__new__(atrope.dispatcher.manager.DispatcherManager)
    manager.dispatchers = [dispatcher]
    manager.dispatch_list(source)
    result["list"] = list_view(source.image_list)
    result["glance"] = glance.images.created
    return result


def main(argv: list[str]) -> int:
    mode, *args = argv
    result = {"parse": parse, "fetch": fetch}[mode](*args)
    json.dump(result, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

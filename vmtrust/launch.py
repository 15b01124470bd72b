"""Find the current trusted image of a VO and launch worker nodes from it.

The Python API pilot frameworks import (small on purpose)::

    import openstack
    from vmtrust import context, launch
    from vmtrust.record import load_public_key

    conn = openstack.connect(cloud="mysite")
    image = launch.find_trusted_image(
        conn, vo="cms", keys=[load_public_key("/etc/vmtrust/seal.key.pub")],
        owners=["<service project id>"],
    )
    site = context.load_site("site.yaml")
    flavor_id, flavour = launch.find_flavour(conn, "wn.large")  # sizes for machine features
    user_data = context.build(site, context.load_vo("cms.yaml", site), flavour=flavour)
    servers = launch.launch(conn, image, flavor=flavor_id, user_data=user_data, count=4)
    for server in servers:
        print(server.id, server.status, server.fault)

The image is chosen in Glance by its trust properties (server-side filters on
``vmtrust_state`` and ``vmtrust_vo``), and every candidate's seal is checked
here, client-side, with the site's public key: the same rule as the nova
filter (:func:`vmtrust.glanceprops.judge`).  Among trusted candidates of the
VO the newest image version wins, then the newest list version (:func:`newest`,
which :mod:`vmtrust.launch_ec2` shares).  The cloud is reached through
openstacksdk.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import clouds, glanceprops, version
from vmtrust.context.profiles import Flavour
from vmtrust.errors import LaunchError, NoTrustedImage
from vmtrust.record import TrustRecord
from vmtrust.trust import Verdict

__all__ = [
    "Image",
    "Server",
    "TrustedImage",
    "find_flavour",
    "find_trusted_image",
    "launch",
    "newest",
]

#: A candidate image as its cloud lists it (a Glance image, an AMI).
Image = TypeVar("Image")


@dataclass(frozen=True)
class TrustedImage:
    id: str
    name: str
    identifier: str  #: dc:identifier in the endorser's list
    version: str
    vo: str
    expires: str

    @classmethod
    def of(cls, image_id: str, name: str, record: TrustRecord) -> TrustedImage:
        """The image ``image_id`` as its verified ``record`` describes it."""
        return cls(
            image_id, name, record.image_identifier, record.image_version, record.vo, record.expires
        )


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str  #: ACTIVE, ERROR, or the last status seen when waiting stopped
    fault: str = ""  #: nova's fault message when status is ERROR


def _call(conn: Any, method: str, service: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
    return clouds.request(conn, service, method, url, ok, error=LaunchError, **kw)


def find_trusted_image(
    conn: Any,
    vo: str,
    keys: Iterable[Ed25519PublicKey],
    owners: Iterable[str],
    *,
    identifier: str | None = None,
    now: datetime | None = None,
) -> TrustedImage:
    """The newest image of ``vo`` (optionally of one image ``identifier``) that is trusted."""
    keys, owners = list(keys), list(owners)
    now = now or datetime.now(UTC)
    query: dict[str, object] = {
        glanceprops.STATE: "trusted",
        glanceprops.PREFIX + "vo": vo,
        "limit": 1000,
    }
    if identifier:
        query[glanceprops.PREFIX + "image_identifier"] = identifier
    params: dict[str, object] | None = query  # the first page's; "next" carries them on
    judged = []
    url: str | None = "/images"
    while url:
        body = _call(conn, "GET", "image", url, (200,), params=params).json()
        for image in body.get("images", []):
            judged.append(
                (image, image.get("id"), glanceprops.judge(image, keys, now, owners=owners))
            )
        url, params = (body.get("next") or "").removeprefix("/v2") or None, None
    image, record = newest(judged, vo=vo, identifier=identifier, where="in Glance")
    return TrustedImage.of(image["id"], image.get("name", ""), record)


def newest(
    judged: Iterable[tuple[Image, Any, Verdict]],
    *,
    vo: str,
    identifier: str | None,
    where: str,
    kind: str = "candidate",
) -> tuple[Image, TrustRecord]:
    """Of the trusted images of ``vo`` (and ``identifier``), the newest, with its record.

    ``judged`` holds each candidate image, its id and its verdict.  The newest
    has the newest image version and, between equal ones, the newest list
    version, both in vmcatcher's order (:mod:`vmtrust.version`: list 10 is newer
    than list 9).  None at all is :class:`NoTrustedImage`, naming the first
    candidate refused and why.
    """
    candidates: list[tuple[Image, TrustRecord]] = []
    refused: list[str] = []
    for image, image_id, verdict in judged:
        record = verdict.record
        if not verdict.trusted or record is None:
            refused.append(f"{image_id}: {verdict.reason}")
        elif record.vo == vo and identifier in (None, record.image_identifier):
            candidates.append((image, record))
    if not candidates:
        what = f"image {identifier} of VO {vo}" if identifier else f"image of VO {vo}"
        detail = f" ({len(refused)} {kind}(s) refused, first: {refused[0]})" if refused else ""
        raise NoTrustedImage(f"no trusted {what} {where}{detail}")
    return max(
        candidates,
        key=lambda c: (
            version.version_key(c[1].image_version),
            version.version_key(c[1].list_version),
        ),
    )


def _whole(value: Any) -> int:
    """A flavour size as nova gives it (``swap`` is ``""`` when there is none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def find_flavour(conn: Any, flavor: str) -> tuple[str, Flavour]:
    """The id of flavour ``flavor`` (a name or an id) and its sizes, for machine features.

    The scratch space is the ephemeral disk, or the root disk when there is none.
    """
    reply = _call(conn, "GET", "compute", "/flavors/detail", (200,))
    for item in reply.json().get("flavors", []):
        if flavor in (item.get("id"), item.get("name")):
            scratch = _whole(item.get("OS-FLV-EXT-DATA:ephemeral")) or _whole(item.get("disk"))
            return str(item["id"]), Flavour(
                vcpus=_whole(item.get("vcpus")) or None,
                ram_mb=_whole(item.get("ram")) or None,
                swap_mb=_whole(item.get("swap")),
                scratch_gb=scratch or None,
            )
    raise LaunchError(f"flavour {flavor}: not found")


def launch(
    conn: Any,
    image: TrustedImage,
    *,
    flavor: str,
    user_data: bytes,
    count: int = 1,
    name: str = "vmtrust-wn",
    networks: str | list[dict[str, str]] = "auto",
    key_name: str | None = None,
    wait: bool = True,
    timeout: float = 600.0,
    poll: float = 2.0,
) -> list[Server]:
    """Create ``count`` servers from ``image``; with ``wait``, until each is ACTIVE or ERROR."""
    if count < 1:
        raise LaunchError(f"count {count}: must be at least 1")
    server: dict[str, Any] = {
        "name": name,
        "imageRef": image.id,
        "flavorRef": find_flavour(conn, flavor)[0],
        "min_count": count,
        "max_count": count,
        "user_data": base64.b64encode(user_data).decode("ascii"),
        "networks": networks,
        "return_reservation_id": True,  # one id for the whole batch, listed below
    }
    if key_name:
        server["key_name"] = key_name
    headers = {"OpenStack-API-Version": "compute 2.37"}
    reply = _call(
        conn, "POST", "compute", "/servers", (202,), json={"server": server},
        headers=headers,
    )  # fmt: skip
    reservation = reply.json().get("reservation_id")
    listing = _call(conn, "GET", "compute", "/servers/detail", (200,),
                    params={"reservation_id": reservation}, headers=headers)  # fmt: skip
    ids = [item["id"] for item in listing.json().get("servers", [])]
    if not wait:
        return [Server(i, name, "BUILD") for i in ids]
    deadline = time.monotonic() + timeout
    done: dict[str, Server] = {}
    while True:
        for server_id in ids:
            if server_id in done:
                continue
            item = _call(conn, "GET", "compute", f"/servers/{server_id}", (200,),
                         headers=headers).json()["server"]  # fmt: skip
            if item["status"] in ("ACTIVE", "ERROR"):
                fault = (item.get("fault") or {}).get("message", "")
                done[server_id] = Server(server_id, item.get("name", name), item["status"], fault)
        if len(done) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(poll)
    return [done.get(i, Server(i, name, "BUILD", f"not ACTIVE after {timeout:g} s")) for i in ids]

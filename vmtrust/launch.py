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
filter (:func:`vmtrust.glanceprops.judge`).  Among trusted candidates the
newest image version wins (vmcatcher's version order).  The cloud is reached
through openstacksdk; an EC2 flavour of the same two functions can follow the
same shape (find by tags, launch with ``UserData``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cmp_to_key
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import glanceprops, version
from vmtrust.context.profiles import Flavour
from vmtrust.errors import LaunchError, NoTrustedImage


@dataclass(frozen=True)
class TrustedImage:
    id: str
    name: str
    identifier: str  #: dc:identifier in the endorser's list
    version: str
    vo: str
    expires: str


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str  #: ACTIVE, ERROR, or the last status seen when waiting stopped
    fault: str = ""  #: nova's fault message when status is ERROR


def _call(conn: Any, method: str, service: str, url: str, ok: tuple[int, ...], **kw: Any) -> Any:
    from keystoneauth1 import exceptions as ks_exc

    adapter = getattr(conn, service)
    try:
        reply = adapter.request(url, method, raise_exc=False, **kw)
    except ks_exc.ClientException as exc:
        raise LaunchError(f"{service} {method} {url}: {' '.join(str(exc).split())[:200]}") from None
    if reply.status_code not in ok:
        text = " ".join(reply.text.split())[:200]
        raise LaunchError(f"{service} {method} {url}: HTTP {reply.status_code} {text}")
    return reply


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
    params = {glanceprops.STATE: "trusted", glanceprops.PREFIX + "vo": vo, "limit": 1000}
    if identifier:
        params[glanceprops.PREFIX + "image_identifier"] = identifier
    candidates: list[tuple[dict, Any]] = []
    refused: list[str] = []
    url: str | None = "/images"
    while url:
        body = _call(conn, "GET", "image", url, (200,), params=params).json()
        for image in body.get("images", []):
            verdict = glanceprops.judge(image, keys, now, owners=owners)
            if verdict.trusted and verdict.record is not None:
                candidates.append((image, verdict.record))
            else:
                refused.append(f"{image.get('id')}: {verdict.reason}")
        url, params = (body.get("next") or "").removeprefix("/v2") or None, None
    if not candidates:
        what = f"image {identifier} of VO {vo}" if identifier else f"image of VO {vo}"
        detail = f" ({len(refused)} candidate(s) refused, first: {refused[0]})" if refused else ""
        raise NoTrustedImage(f"no trusted {what} in Glance{detail}")

    def order(a: tuple[dict, Any], b: tuple[dict, Any]) -> int:
        return version.compare(a[1].image_version, b[1].image_version) or (
            (a[1].list_version > b[1].list_version) - (a[1].list_version < b[1].list_version)
        )

    image, record = max(candidates, key=cmp_to_key(order))
    return TrustedImage(
        id=image["id"],
        name=image.get("name", ""),
        identifier=record.image_identifier,
        version=record.image_version,
        vo=record.vo,
        expires=record.expires,
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

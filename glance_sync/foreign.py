"""The image-sync tools a site switches from, and how to find their images in Glance.

Each tool marks the images it uploaded in its own way (read from their sources;
see docs/migration.md):

* **atrope** (EGI's sync; 2.0.0 on PyPI, the EGI fork 2.1.0): the tag ``atrope``
  (2.1.0's ``[glance] tag``; EGI's catch-all uses ``atrope-catchall``), the list
  entry's ``dc:identifier`` as ``appdb_id``, the sha512 of the file it took from
  the list as ``sha512`` (2.0.0) or ``image_hash = sha512:<hex>`` (2.1.0), its
  source's name as ``image_list``, and its bookkeeping ``vo`` and ``project``;
* **cloudkeeper-os 0.9** (cloudkeeper's Glance backend): no tag, but the
  entry's ``dc:identifier`` as ``APPLIANCE_ID`` and the list's as
  ``APPLIANCE_IMAGE_LIST_ID``, the other appliance fields as ``APPLIANCE_*``;
  ``APPLIANCE_STATUS = EOL`` marks a copy it replaced and deletes on its next
  clean-up.  Its images are owned by the VO's project, not a service project.

A :class:`Tool` answers the questions adoption asks: which Glance listings find
the tool's images, which list entry an image is, what the tool says it
uploaded, and what of the tool's own marks to take off an image vmtrust adopts
(so the tool, if it ever runs again, no longer finds it and cannot delete it).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from glance_sync.plan import Desired

__all__ = [
    "CK_ID",
    "CK_LIST",
    "CK_STATUS",
    "TOOLS",
    "Atrope",
    "CloudkeeperOS",
    "Image",
    "Tool",
    "make_tool",
]

Image = dict[str, Any]


@dataclass(frozen=True)
class Tool(ABC):
    name: str

    @abstractmethod
    def queries(self, list_identifiers: Iterable[str]) -> list[dict[str, str]]:
        """Glance listing filters that find the tool's images (besides visibility)."""

    @abstractmethod
    def identifier(self, image: Image) -> str | None:
        """The list entry's ``dc:identifier`` the image was made from, if the tool says."""

    def belongs(self, image: Image, want: Desired) -> bool:
        """Whether the image can be the tool's copy of ``want`` (beyond the identifier)."""
        return True

    def claimed_sha512(self, image: Image) -> str | None:
        """The sha512 of the file the tool took from the list, as it recorded it."""
        return None

    def superseded(self, image: Image) -> bool:
        """A copy the tool itself replaced and will remove: never adopted."""
        return False

    @abstractmethod
    def marks(self, image: Image) -> tuple[set[str], set[str]]:
        """(tags, properties) of the tool's own that an adopted image loses."""

    def describe(self, image: Image) -> str:
        """How the operator recognises the image: id, name and the tool's own names."""
        return f"{self.name} image {image.get('id')} ({image.get('name') or 'no name'})"


@dataclass(frozen=True)
class Atrope(Tool):
    name: str = "atrope"
    tag: str = "atrope"

    def queries(self, list_identifiers: Iterable[str]) -> list[dict[str, str]]:
        return [{"tag": self.tag}]

    def identifier(self, image: Image) -> str | None:
        value = image.get("appdb_id")
        return value if isinstance(value, str) and value else None

    def claimed_sha512(self, image: Image) -> str | None:
        value = image.get("image_hash")  # 2.1.0
        if isinstance(value, str) and value.startswith("sha512:"):
            return value.removeprefix("sha512:").lower()
        value = image.get("sha512")  # 2.0.0
        return value.lower() if isinstance(value, str) and value else None

    def marks(self, image: Image) -> tuple[set[str], set[str]]:
        # appdb_id, image_list and image_hash stay: vmtrust writes them too (docs/glance.md)
        return {self.tag}, {"sha512", "vo", "project"}

    def describe(self, image: Image) -> str:
        return (
            f"{super().describe(image)}, appdb_id {image.get('appdb_id') or '-'}, "
            f"image_list {image.get('image_list') or '-'}"
        )


#: cloudkeeper-os 0.9: ``APPLIANCE_<FIELD>`` for every appliance field but these two
CK_ID, CK_LIST, CK_STATUS = "APPLIANCE_ID", "APPLIANCE_IMAGE_LIST_ID", "APPLIANCE_STATUS"


@dataclass(frozen=True)
class CloudkeeperOS(Tool):
    name: str = "cloudkeeper-os"

    def queries(self, list_identifiers: Iterable[str]) -> list[dict[str, str]]:
        # Glance filters on any property; one listing per list the pass verified
        return [{CK_LIST: identifier} for identifier in sorted(set(list_identifiers))]

    def identifier(self, image: Image) -> str | None:
        value = image.get(CK_ID)
        return value if isinstance(value, str) and value else None

    def belongs(self, image: Image, want: Desired) -> bool:
        return image.get(CK_LIST) == want.imagelist.identifier

    def claimed_sha512(self, image: Image) -> str | None:
        # cloudkeeper core passes the hv:image entry as the appliance's attributes
        try:
            attributes = json.loads(image.get("APPLIANCE_ATTRIBUTES") or "{}")
        except ValueError:
            return None
        value = attributes.get("sl:checksum:sha512") if isinstance(attributes, dict) else None
        return value.lower() if isinstance(value, str) and value else None

    def superseded(self, image: Image) -> bool:
        return image.get(CK_STATUS) == "EOL"

    def marks(self, image: Image) -> tuple[set[str], set[str]]:
        # APPLIANCE_ATTRIBUTES stays: vmtrust writes it (cloud-info-provider reads it)
        return set(), {k for k in image if k.startswith("APPLIANCE_")} - {"APPLIANCE_ATTRIBUTES"}

    def describe(self, image: Image) -> str:
        return (
            f"{super().describe(image)}, {CK_ID} {image.get(CK_ID) or '-'}, "
            f"{CK_LIST} {image.get(CK_LIST) or '-'}"
        )


TOOLS = ("atrope", "cloudkeeper-os")


def make_tool(name: str, tag: str | None = None) -> Tool:
    if name == "atrope":
        return Atrope(tag=tag or "atrope")
    if name == "cloudkeeper-os":
        return CloudkeeperOS()
    raise ValueError(f"unknown tool {name!r}")

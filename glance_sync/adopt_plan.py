"""Adoption's decisions: which of another tool's Glance images become vmtrust's, and how.

Pure (no I/O), like :mod:`glance_sync.plan`: :func:`plan_adoption` takes the
approved images of the lists that verified, what the store holds, and the other
tool's images as Glance lists them, and says for each image (the rules are in
:mod:`glance_sync.adopt`'s docstring and docs/migration.md):

* :class:`InPlace` — adopt it, keeping its id;
* :class:`RetireCopy` — retire it once vmtrust holds the list's version (a copy
  the pass uploads again, a second copy, or one vmtrust already supersedes);
* :class:`Refused` — a copy in another project: one line with the fix, and the
  image is not uploaded either;
* :class:`LeftAlone` — not adoption's business; listed, never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from glance_sync.foreign import Image, Tool
from glance_sync.plan import Desired, Held
from glance_sync.unpack import normalise_format

__all__ = [
    "AdoptionPlan",
    "InPlace",
    "LeftAlone",
    "Refused",
    "RetireCopy",
    "current_versions",
    "held_identifiers",
    "plan_adoption",
]


@dataclass(frozen=True)
class InPlace:
    want: Desired
    image: Image
    disk_format: str  #: of the bytes Glance holds (the list's)


@dataclass(frozen=True)
class RetireCopy:
    """Retire the tool's copy once vmtrust holds ``identifier`` at the list's version."""

    identifier: str
    image: Image
    reason: str
    reupload: bool  #: the copy's bytes are not adoptable: the pass uploads the list's


@dataclass(frozen=True)
class Refused:
    want: Desired
    image: Image
    reason: str


@dataclass(frozen=True)
class LeftAlone:
    image: Image
    reason: str


@dataclass
class AdoptionPlan:
    in_place: list[InPlace] = field(default_factory=list)
    retire: list[RetireCopy] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    left: list[LeftAlone] = field(default_factory=list)

    def describe(
        self, tool: Tool, retire_mode: str, changes: Callable[[InPlace], list[str]] = lambda _: []
    ) -> list[str]:
        """One line per decision; ``changes`` names what users will notice of an adoption."""
        lines = []
        for item in self.in_place:
            d = item.want
            noticed = "".join(f"; {change}" for change in changes(item))
            lines.append(
                f"adopt    {d.identifier} {d.image.version} ({d.image.title}): "
                f"{tool.describe(item.image)} keeps its id{noticed}"
            )
        for copy in self.retire:
            what = f"{tool.describe(copy.image)}: {copy.reason}"
            if copy.reupload:
                lines.append(
                    f"re-upload {copy.identifier}: {what}; the copy is retired ({retire_mode}) "
                    "once the new one is active"
                )
            else:
                lines.append(f"retire   {what} ({retire_mode})")
        for refused in self.refused:
            lines.append(f"refuse   {refused.want.identifier}: {refused.reason}")
        for alone in self.left:
            lines.append(
                f"leave    {tool.describe(alone.image)}: {alone.reason}; left alone (to remove "
                f"it: openstack image delete {alone.image.get('id')})"
            )
        return lines


def plan_adoption(
    wanted: dict[str, Desired],
    held: list[Held],
    found: list[Image],
    *,
    tool: Tool,
    project: str,
    stored_format: Callable[[str], str],
    elsewhere: Mapping[str, str] | None = None,
) -> AdoptionPlan:
    """Decide, for every image of the tool, what adoption does with it (no I/O).

    ``elsewhere`` maps the projects of the sync's other targets (``[sync] targets``)
    to their names: a copy such a project owns is that target's to adopt, not a copy
    this one must refuse (atrope shares its images with VO projects, and one of
    them may be another target's project in the same Glance).
    """
    elsewhere = elsewhere or {}
    plan = AdoptionPlan()
    current = current_versions(wanted, held)
    # vmtrust's own copy of an image, at whatever version, is updated as usual: a copy in
    # another project then adds no second image, and is only listed
    holding = held_identifiers(held)
    copies: dict[str, list[Image]] = {}
    for image in sorted(found, key=lambda i: (str(i.get("created_at")), str(i.get("id")))):
        identifier = tool.identifier(image)
        want = wanted.get(identifier) if identifier else None
        why_not = _not_a_copy(image, identifier, want, tool, project, elsewhere)
        if why_not is not None:
            plan.left.append(LeftAlone(image, why_not))
        elif identifier is not None:  # always: _not_a_copy refuses an image without one
            copies.setdefault(identifier, []).append(image)
    for identifier, images in sorted(copies.items()):
        want = wanted[identifier]
        own = [i for i in images if i.get("owner") == project]
        others = [i for i in images if i.get("owner") != project]
        if identifier in current:
            reason = f"vmtrust already holds {identifier} {want.image.version}"
            plan.retire += [RetireCopy(identifier, i, reason, False) for i in own]
        elif not own and identifier not in holding:
            plan.refused += [Refused(want, i, _refusal(tool, i, project)) for i in others]
            continue
        else:
            problems = [(i, _not_in_place(i, want, tool, stored_format)) for i in own]
            adoptable = [i for i, problem in problems if problem is None]
            if adoptable:
                fmt = normalise_format(want.image.format)[1]
                plan.in_place.append(InPlace(want, adoptable[0], fmt))
                plan.retire += [
                    RetireCopy(identifier, i, f"a second copy of {identifier}", False)
                    for i in own
                    if i is not adoptable[0]
                ]
            else:
                plan.retire += [RetireCopy(identifier, i, str(p), True) for i, p in problems]
        plan.left += [
            LeftAlone(i, f"a copy of {identifier} owned by project {i.get('owner')}, which the "
                      "sync cannot retire: remove it with that project's credentials")
            for i in others
        ]  # fmt: skip
    return plan


def _not_a_copy(
    image: Image,
    identifier: str | None,
    want: Desired | None,
    tool: Tool,
    project: str,
    elsewhere: Mapping[str, str],
) -> str | None:
    """Why the image is none of adoption's business, or None when it is a copy of ``want``."""
    owner = str(image.get("owner"))
    if owner != project and owner in elsewhere:
        return f"owned by project {owner}, target {elsewhere[owner]}'s: adopted there, not here"
    if image.get("owner") != project and image.get("visibility") == "community":
        # any project may publish a community image with the tool's marks: such an
        # image must not stop the sync from adopting or uploading the real one
        return f"a community image of project {image.get('owner')}: anyone can publish one"
    if identifier is None:
        return f"{tool.name} recorded no image identifier"
    if tool.superseded(image):
        return f"{tool.name} marked it as replaced"
    if want is None or not tool.belongs(image, want):
        return "no list that verified in this pass approves it in vmtrust"
    return None


def held_identifiers(held: list[Held]) -> set[str]:
    """Identifiers of which vmtrust holds a trusted version, whichever it is."""
    return {h.record.image_identifier for h in held if h.record and h.seal_ok and not h.retired}


def current_versions(wanted: dict[str, Desired], held: list[Held]) -> set[str]:
    """Identifiers vmtrust already holds trusted at the version the list has."""
    return {
        h.record.image_identifier
        for h in held
        if h.record is not None
        and h.seal_ok
        and not h.retired
        and h.record.image_identifier in wanted
        and h.record.source_sha512 == wanted[h.record.image_identifier].image.sha512
        and h.record.image_version == wanted[h.record.image_identifier].image.version
    }


def _refusal(tool: Tool, image: Image, project: str) -> str:
    owner, image_id = image.get("owner"), image.get("id")
    return (
        f"{tool.describe(image)} is owned by project {owner}, not by the sync's project "
        f"{project}: not adopted, and not copied (VOs would see two images). Either run the "
        f"sync as project {owner} ([store_glance] project_id = {owner}, with credentials "
        f"holding the role vmtrust_service there), or have a cloud admin move the image "
        f"('openstack image set --project {project} {image_id}', its id stays), then adopt again"
    )


def _not_in_place(
    image: Image, want: Desired, tool: Tool, stored_format: Callable[[str], str]
) -> str | None:
    """Why the copy cannot become vmtrust's as it is, or None when it can."""
    entry = want.image
    if image.get("status") != "active":
        return f"its Glance status is {image.get('status')}"
    algo = image.get("os_hash_algo")
    if algo != "sha512":
        return f"Glance hashed it with {algo}, which cannot be compared with the list's sha512"
    if image.get("os_hash_value") != entry.sha512 or image.get("size") != entry.size:
        claimed = tool.claimed_sha512(image)
        if claimed == entry.sha512:
            return f"Glance holds other bytes than the list's file ({tool.name} converted it)"
        if claimed:
            return (
                f"{tool.name} uploaded another file (sha512 {claimed[:16]}…) than the list "
                f"has now (version {entry.version}, sha512 {entry.sha512[:16]}…)"
            )
        return "Glance holds other bytes than the list's file"
    compression, fmt = normalise_format(entry.format)
    if compression is not None or fmt in ("ova", "tar"):
        return (
            f"the list's file is {entry.format}: Glance holds it as published, vmtrust "
            "stores the disk inside"
        )
    if stored_format(fmt) != fmt:
        return f"the site stores {stored_format(fmt)} ([store_glance] disk_formats), not {fmt}"
    if image.get("disk_format") != fmt:
        return (
            f"Glance labels it {image.get('disk_format')}, the list declares {fmt} "
            "(hv:format): the label cannot change on an active image"
        )
    if image.get("container_format") != "bare":
        return f"container_format is {image.get('container_format')}, vmtrust stores bare disks"
    return None

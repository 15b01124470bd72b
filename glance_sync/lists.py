"""The list half of a pass: every subscription's list fetched at once, each verified as it arrives.

A dead or dripping endorser costs its own subscription at most ``list_deadline``
(:mod:`glance_sync.fetch`) and, fetched beside the others (``parallel_lists``),
delays no other: :meth:`ListPhase.verified` yields each list as soon as it
verified, and the service starts that list's downloads at once.

Each subscription is a boundary: whatever goes wrong with it — an HTTP
refusal, a bad signature, a library exception nobody foresaw — is one line
naming it, recorded in the state for ``vmtrust status``, and its images stay
as they are.  Rollback protection and identifier pinning use the newest list
the state *or* the store's sealed records know
(:func:`~glance_sync.plan.last_accepted`), so an emptied state directory does
not open the door to an older list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime

import requests

from glance_sync.fetch import fetch_list
from glance_sync.oci.registry import Registry
from glance_sync.oci.source import OciListing, list_registry
from glance_sync.plan import Desired, Held, KnownList, last_accepted
from glance_sync.report import ImageFailure, Report, rule_of, unexpected
from glance_sync.settings import SyncSettings
from glance_sync.state import StateDB
from vmtrust.errors import StateError, VmtrustError
from vmtrust.imagelist import Endorser, ImageList
from vmtrust.policy import Subscription
from vmtrust.verify import Policy, verify_signed_list

__all__ = ["ListPhase", "Verified", "desired", "image_failure", "state_failed"]

LOG = logging.getLogger("vmtrust.sync")


def image_failure(desired: Desired) -> ImageFailure:
    """The failure record of an image of a list (its reason is the report's line)."""
    image = desired.image
    return ImageFailure(desired.subscription, image.identifier, image.version, image.title, "")


@dataclass
class Verified:
    """A subscription whose list verified (or whose registry was listed) in this pass."""

    subscription: Subscription
    imagelist: ImageList
    endorser: Endorser
    known: frozenset[str]  #: identifiers known at first acceptance (new_images: refuse)
    wanted: dict[str, Desired] = field(default_factory=dict)  #: approved, unexpired images
    basis: str = "hepix"
    endorsers: dict[str, Endorser] = field(default_factory=dict)  #: per image, where it differs
    digests: dict[str, str] = field(default_factory=dict)  #: OCI layer digest per image
    #: identifiers whose current version was refused: the store keeps what it holds
    keep: frozenset[str] = frozenset()

    @property
    def listed(self) -> frozenset[str]:
        return frozenset(image.identifier for image in self.imagelist.images)


def state_failed(exc: StateError, report: Report) -> None:
    """A state database failure: one line per pass, however often it happens."""
    report.fail_once(f"{exc} (the pass goes on; the state is written again once this is fixed)")


class ListPhase:
    def __init__(self, settings: SyncSettings, state: StateDB, session: requests.Session) -> None:
        self.s = settings
        self.state = state
        self.session = session
        #: subscription → its registry client, for OCI subscriptions (set for each pass)
        self.registries: dict[str, Registry] = {}

    def known(self, sub: Subscription, held: list[Held], report: Report) -> KnownList:
        """The newest list accepted for ``sub``, from the state and the sealed records."""
        try:
            st = self.state.get(sub.name)
            remembered = KnownList(st.list_identifier, st.list_version, st.list_expires)
        except StateError as exc:
            state_failed(exc, report)
            remembered = KnownList()
        return last_accepted(sub.name, remembered, held)

    def _fetch(self, sub: Subscription, now: datetime) -> bytes | OciListing:
        """A signed list's bytes, or what a registry holds for a registry-listed subscription."""
        if sub.lists_registry:
            return list_registry(sub, self.registries[sub.name], self.s.registry_deadline, now)
        return fetch_list(sub, self.session, self.s.http, self.s.max_list_bytes)

    def _fetch_all(
        self, subscriptions: tuple[Subscription, ...], now: datetime
    ) -> Iterator[tuple[Subscription, bytes | OciListing | BaseException]]:
        """Each subscription's list (or why not) as it arrives."""
        if not subscriptions:
            return
        workers = min(self.s.parallel_lists, len(subscriptions))
        with ThreadPoolExecutor(workers, thread_name_prefix="vmtrust-list") as pool:
            futures = {pool.submit(self._fetch, sub, now): sub for sub in subscriptions}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except Exception as exc:
                    yield futures[future], exc

    def verified(
        self,
        subscriptions: tuple[Subscription, ...],
        held: list[Held],
        report: Report,
        now: datetime,
    ) -> Iterator[Verified]:
        """Every subscription whose list verified, as soon as it did; the others reported."""
        for sub, data in self._fetch_all(subscriptions, now):
            what = f"subscription {sub.name}"
            try:
                if isinstance(data, BaseException):
                    raise data
                if isinstance(data, OciListing):
                    item = self._accept_listing(sub, data, held, report, now)
                else:
                    item = self._accept(sub, data, held, report, now)
            except VmtrustError as exc:
                self._failed(sub, f"{what}: {exc}", report, now, exc.rule)
                continue
            except Exception as exc:
                self._failed(sub, unexpected(what, exc), report, now, rule_of(exc))
                continue
            lst = item.imagelist
            report.note(
                "list-verified",
                f"{what}: list {lst.identifier} version {lst.version} verified",
                subscription=sub.name,
                version=lst.version,
            )
            yield item

    def _failed(
        self, sub: Subscription, line: str, report: Report, now: datetime, rule: str
    ) -> None:
        report.fail(line, rule=rule, kind="list-failed", subscription=sub.name)
        try:
            self.state.record_failure(
                sub.name, line.removeprefix(f"subscription {sub.name}: "), now
            )
        except StateError as exc:
            state_failed(exc, report)

    def _accept(
        self, sub: Subscription, data: bytes, held: list[Held], report: Report, now: datetime
    ) -> Verified:
        state = self.state.get(sub.name)
        known_list = self.known(sub, held, report)
        policy = Policy(
            trust=self.s.trust,
            endorsers=sub.endorsers,
            identifier=sub.identifier or known_list.identifier,
            min_version=known_list.version,
            min_created=state.list_created,
            allow_sha1=self.s.allow_sha1,
            clock_skew=self.s.clock_skew,
            max_bytes=self.s.max_list_bytes,
        )
        verified = verify_signed_list(data, policy, now)
        lst = verified.imagelist
        if (
            state.list_version == lst.version
            and state.list_sha512
            and state.list_sha512 != verified.sha512
        ):
            LOG.warning(
                "subscription %s: list version %s changed content without a new version",
                sub.name,
                lst.version,
            )
        known = self._known(sub, state.known_images, lst, held)
        self.state.record_success(
            sub.name,
            identifier=lst.identifier,
            version=lst.version,
            created=lst.created,
            expires=lst.expires,
            sha512=verified.sha512,
            known_images=known,
            now=now,
        )
        item = Verified(sub, lst, verified.endorser, known)
        item.wanted = self._wanted(item, now)
        return item

    @staticmethod
    def _known(
        sub: Subscription, known: frozenset[str] | None, lst: ImageList, held: list[Held]
    ) -> frozenset[str]:
        if known is not None:
            return known
        # First acceptance — or a lost state directory on a host whose store still
        # holds the subscription's images: then only those were approved, new ones wait.
        sealed = frozenset(
            h.record.image_identifier
            for h in held
            if h.record and h.seal_ok and h.record.subscription == sub.name
        )
        return sealed or frozenset(img.identifier for img in lst.images)

    def _accept_listing(
        self,
        sub: Subscription,
        listing: OciListing,
        held: list[Held],
        report: Report,
        now: datetime,
    ) -> Verified:
        """A registry listed by a cosign or registry subscription: its images, as a list's.

        Tags whose current manifest was refused are reported (images that failed)
        and kept as the store holds them.
        """
        lst = listing.imagelist
        known = self._known(sub, self.state.get(sub.name).known_images, lst, held)
        self.state.record_success(
            sub.name,
            identifier=lst.identifier,
            version=lst.version,
            created=lst.created,
            expires=lst.expires,
            sha512="",
            known_images=known,
            now=now,
        )
        keep = frozenset(identifier for identifier, *_ in listing.refused)
        item = Verified(
            sub, lst, listing.endorser, known, basis=sub.trust, endorsers=listing.endorsers,
            digests=listing.digests, keep=keep,
        )  # fmt: skip
        item.wanted = self._wanted(item, now)
        for identifier, version, title, reason in listing.refused:
            report.fail(
                f"image {identifier}: {reason}; not trusted (what the store holds is kept)",
                ImageFailure(sub.name, identifier, version, title, ""),
            )
        return item

    def _wanted(self, item: Verified, now: datetime) -> dict[str, Desired]:
        """The images of one verified list the site approved and that have not expired."""
        wanted: dict[str, Desired] = {}
        lst = item.imagelist
        for image in lst.images:
            approval = item.subscription.approval(image, lst, item.known)
            if approval is None:
                LOG.info(
                    "subscription %s: image %s (%s) is not approved",
                    item.subscription.name,
                    image.identifier,
                    image.title,
                )
                continue
            if image.expires is not None and image.expires <= now:
                LOG.info("image %s expired at %s", image.identifier, image.expires)
                continue
            wanted[image.identifier] = Desired(
                subscription=item.subscription.name,
                approval=approval,
                image=image,
                imagelist=lst,
                endorser=item.endorsers.get(image.identifier, item.endorser),
                vo=item.subscription.vo or lst.vo or "",
                basis=item.basis,
                digest=item.digests.get(image.identifier, ""),
            )
        return wanted


def desired(lists: list[Verified], report: Report) -> dict[str, Desired]:
    """Every verified list's wanted images, less those several subscriptions list."""
    result: dict[str, Desired] = {}
    owners: dict[str, list[Verified]] = {}
    for item in lists:
        result.update(item.wanted)
        for identifier in item.listed:
            owners.setdefault(identifier, []).append(item)
    for identifier, items in sorted(owners.items()):
        if len(items) > 1:
            result.pop(identifier, None)
            names = sorted(i.subscription.name for i in items)
            approved = [i.wanted[identifier] for i in items if identifier in i.wanted]
            report.fail(
                f"image {identifier}: listed by several subscriptions "
                f"({', '.join(names)}); not trusted until the site resolves it",
                *map(image_failure, approved),
            )
    return result

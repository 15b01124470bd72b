"""Benchmark: ``vmtrust audit`` of 1,000 servers over 20 images, against nova's own list.

Runs in ``.venv-nova`` with nova's in-process functional stack (API,
conductor, scheduler with TrustedImageFilter, a fake-driver compute,
Placement, in-memory databases) and the real Glance 33 the tests use
(``tests/glance_server.py``).  Set-up, not measured:

* ``vmtrust-sync`` (in-process) stores 20 trusted images in Glance from a
  signed list on a loopback web server;
* one server per image is booted on the worker flavour through nova's API and
  the filter; each is then cloned in nova's cell database (the instance record
  with its flavour, system metadata and network cache, and its instance
  mapping: what a boot leaves behind) until there are 1,000 servers, in two
  projects.  Booting all 1,000 through the in-process stack takes about 2 s a
  server on the 2-core machine (half an hour); the listing nova's API does is the
  same either way: its own database, view builder and paging;
* the sync then retires 2 of the images, so the audit has 100 findings.

Measured, interleaved, ``--rounds`` times each, on the same servers:

1. **baseline** — nova's own ``server list --all-projects``: openstacksdk's
   paged ``compute.servers(details=True, all_projects=True)``, the call
   ``openstack server list --all-projects --no-name-lookup`` makes (at
   openstacksdk's newest microversion, whose server view costs nova more);
2. **the audit's listing alone** — ``vmtrust.audit.servers()``: the same
   servers at the microversion the audit asks for (2.79), as plain JSON;
3. **audit** — ``vmtrust.audit.audit()``: that listing, the aggregate list, one
   Glance look-up per distinct image, the seal checks and findings.

Every HTTP request of the audit is counted (a response hook on the keystoneauth
session, by service); the target is at most ceil(1000 / page size) + 20 + a
small constant.  Reported for page sizes 1000 (nova's default ``[api]
max_limit``) and 100.

Usage: ``PYTHONPATH=. .venv-nova/bin/python benchmarks/audit.py [--servers 1000]
[--images 20] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import unittest
import uuid as uuid_module
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nova import monkey_patch  # noqa: E402

monkey_patch.patch()

from nova import objects  # noqa: E402

objects.register_all()

import openstack  # noqa: E402
from glance_ingest import site_config  # noqa: E402
from glance_server import ADMIN_ROLES, GlanceServer, available, token  # noqa: E402
from keystoneauth1 import session as ks_session  # noqa: E402
from keystoneauth1 import token_endpoint  # noqa: E402
from transfer import entry, web_server  # noqa: E402
from with_nova.test_filter_functional import WorkerCloudBase  # noqa: E402

from glance_sync import cli as sync_cli  # noqa: E402
from vmtrust import audit, authoring, devpki, imagelist, smime  # noqa: E402
from vmtrust.record import load_private_key  # noqa: E402

RETIRED = 2  #: images the sync retires before the audit
#: What a clone copies from a booted instance: its record as nova's API shows it.
CLONED_FIELDS = (
    "user_id", "image_ref", "kernel_id", "ramdisk_id", "host", "node", "launched_on",
    "vm_state", "power_state", "task_state", "memory_mb", "vcpus", "root_gb",
    "ephemeral_gb", "instance_type_id", "availability_zone", "launched_at", "flavor",
    "system_metadata", "root_device_name", "config_drive", "key_name", "locked",
    "compute_id", "os_type", "architecture", "vm_mode", "progress", "launch_index",
    "reservation_id", "cell_name", "auto_disk_config", "default_ephemeral_device",
    "default_swap_device", "access_ip_v4", "access_ip_v6",
)  # fmt: skip
CLONED_ATTRS = ["flavor", "system_metadata", "info_cache"]


class Site:
    """vmtrust-sync writing small trusted images into Glance for one project."""

    def __init__(self, work: Path, glance: GlanceServer, www: Path, base: str) -> None:
        self.work, self.glance, self.www, self.base = work, glance, www, base
        self.pki = devpki.DevPKI(work / "pki")
        self.project = "auditbench"
        self.conf = site_config(
            work, self.project, glance, self.pki.install(), f"{base}/wn.list", self.pki
        )
        self.public_key_file = self.conf.parent / "seal.key.pub"  # written by vmtrust keygen

    def sync(self, count: int) -> None:
        """Publish the first ``count`` images (the same list, a new version); sync once."""
        if not hasattr(self, "document"):
            self.document = authoring.new_list(
                title="wn", description="", source="", uri=f"{self.base}/wn.list",
                endorser_dn=self.pki.endorser.dn, endorser_ca=self.pki.endorser.ca_dn,
            )  # fmt: skip
            for n in range(count):
                data = f"worker node image {n}\n".encode() * 100
                (self.www / f"wn{n}.img").write_bytes(data)
                item = entry(f"wn{n}", f"{self.base}/wn{n}.img", len(data),
                             hashlib.sha512(data).hexdigest())  # fmt: skip
                # the fake compute is no KVM host: leave hypervisor_type out (as the tests do)
                item["hv:image"]["hv:hypervisor"] = "VirtualBox"
                self.document, _ = authoring.add_image(self.document, item)
        else:
            held = self.document["hv:imagelist"]["hv:images"]
            for item in held[count:]:
                identifier = item["hv:image"]["dc:identifier"]
                self.document = authoring.remove_image(self.document, identifier)
            self.document = authoring.bump(self.document)
        body = smime.sign(
            imagelist.dumps(self.document), self.pki.endorser.cert, self.pki.endorser.key
        )
        (self.www / "wn.list").write_bytes(body)
        rc = sync_cli.main(["--config-file", str(self.conf)])
        if rc != 0:
            raise RuntimeError(f"vmtrust-sync failed with status {rc}")


class AuditBench(WorkerCloudBase):
    """nova's stack with the filter and the real Glance; ``runTest`` measures."""

    compute_driver = "fake.FakeDriver"  # 1000 vCPUs, 800 GB: room for every server
    options: argparse.Namespace
    site: Site
    results: dict

    def setUp(self) -> None:
        self._glance_server = self.site.glance
        self._glance_tmp = self.site.work
        self._sync = SimpleNamespace(
            project=self.site.project, public_key_file=self.site.public_key_file
        )
        super().setUp()
        self.flags(instances=-1, cores=-1, ram=-1, group="quota")

    def _connection(self, counts: Counter):
        url = self._glance_server.url
        session = ks_session.Session(
            auth=token_endpoint.Token(url, token("cloud-admin", ADMIN_ROLES)),
            additional_headers={
                "X-Auth-User": "admin",
                "X-User-Id": "admin",
                "X-Auth-Project-Id": self.api.project_id,
                "X-Roles": "reader,member,admin",
            },
        )

        def count(response, *args, **kwargs):
            counts["image" if response.url.startswith(url) else "compute"] += 1

        session.session.hooks["response"].append(count)
        return openstack.connection.Connection(
            session=session,
            compute_endpoint_override=self.api_fixture.base_url,
            image_endpoint_override=url,
        )

    def _boot_all(self, images: list[str]) -> None:
        """One server per image through the API and the filter, then clones in the cell.

        A clone is what a boot leaves in nova's databases: the instance record (with its
        flavour, system metadata and network cache), its instance mapping and its
        request spec.
        """
        from nova import context as nova_context

        booted = [self._boot(image, self.worker_flavor)["id"] for image in images]
        projects = [self.api.project_id, "benchother"]
        ctxt = nova_context.get_admin_context()
        cell = self.cell_mappings["cell1"]
        specs = [objects.RequestSpec.get_by_instance_uuid(ctxt, uuid) for uuid in booted]
        with nova_context.target_cell(ctxt, cell) as cctxt:
            sources = [
                objects.Instance.get_by_uuid(cctxt, uuid, expected_attrs=CLONED_ATTRS)
                for uuid in booted
            ]
            for n in range(self.options.servers - len(booted)):
                source = sources[n % len(sources)]
                clone = objects.Instance(cctxt)
                for field in CLONED_FIELDS:
                    if field in source:
                        setattr(clone, field, getattr(source, field))
                clone.uuid = str(uuid_module.uuid4())
                clone.display_name = clone.hostname = f"wn-{n}"
                clone.project_id = projects[n % 2]
                clone.info_cache = objects.InstanceInfoCache(
                    network_info=source.info_cache.network_info
                )
                clone.create()
                objects.InstanceMapping(
                    ctxt, instance_uuid=clone.uuid, cell_mapping=cell,
                    project_id=clone.project_id, user_id=clone.user_id,
                ).create()  # fmt: skip
                source_spec = specs[n % len(specs)]
                spec = objects.RequestSpec(ctxt)
                for field in source_spec.fields:
                    if field != "id" and source_spec.obj_attr_is_set(field):
                        setattr(spec, field, getattr(source_spec, field))
                spec.instance_uuid, spec.project_id = clone.uuid, clone.project_id
                spec.create()

    def runTest(self) -> None:
        import logging

        logging.getLogger().setLevel(logging.WARNING)  # nova's INFO lines cost time too
        from glance_server import SERVICE_ROLES

        api = self._glance_server.api(self.site.project, SERVICE_ROLES)
        reply = api.get(f"{self._glance_server.url}/v2/images?vmtrust_state=trusted&limit=1000")
        images = sorted(i["id"] for i in reply.json()["images"])
        assert len(images) == self.options.images, images
        start = time.perf_counter()
        self._boot_all(images)
        boot = time.perf_counter() - start
        listed = self.admin_api.get_servers(search_opts={"all_tenants": "1", "limit": "5000"})
        states = Counter(s["status"] for s in listed)
        assert states == {"ACTIVE": self.options.servers}, states
        self.site.sync(self.options.images - RETIRED)  # the last ones are retired
        keys = [load_private_key(self.site.conf.parent / "seal.key").public_key()]
        owners = [self.site.project]
        self.results = {"boot": boot, "pages": {}}
        for page in (1000, 100):
            theirs, listing, ours, calls = [], [], [], Counter()
            for _ in range(self.options.rounds):
                conn = self._connection(Counter())
                t0 = time.perf_counter()
                servers = list(conn.compute.servers(details=True, all_projects=True, limit=page))
                theirs.append(time.perf_counter() - t0)
                assert len(servers) == self.options.servers, len(servers)
                conn = self._connection(Counter())
                t0 = time.perf_counter()
                assert len(list(audit.servers(conn, page))) == self.options.servers
                listing.append(time.perf_counter() - t0)
                calls = Counter()
                conn = self._connection(calls)
                t0 = time.perf_counter()
                report = audit.audit(conn, keys, owners, page_size=page)
                ours.append(time.perf_counter() - t0)
                assert report.servers == self.options.servers, report
                assert report.worker_servers == self.options.servers, report
                assert report.images == self.options.images, report
                expected = self.options.servers // self.options.images * RETIRED
                assert len(report.findings) == expected, len(report.findings)
            self.results["pages"][page] = (theirs, listing, ours, calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    why_not = available()
    if why_not:
        print(f"benchmark needs a Glance: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-audit-") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        glance = GlanceServer(work / "glance").start()
        try:
            with web_server(work / "www") as base:
                site = Site(work, glance, work / "www", base)
                site.sync(args.images)
                AuditBench.options, AuditBench.site = args, site
                case = AuditBench()
                result = unittest.TestResult()
                case.run(result)
            for _, trace in result.errors + result.failures:
                print(trace, file=sys.stderr)
            if not result.wasSuccessful():
                return 1
            results = case.results
        finally:
            glance.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; nova 34 in-process stack, Glance 33 (gunicorn, sqlite)"
    )
    print(
        f"set-up: {args.images} servers booted through the filter, cloned to {args.servers} "
        f"in nova's cell database in {results['boot']:.0f} s; {RETIRED} images then retired"
    )
    for page, (theirs, listing, ours, calls) in results["pages"].items():
        bound = math.ceil(args.servers / page) + args.images
        total = calls["compute"] + calls["image"]
        a, b, c = (statistics.median(x) for x in (theirs, listing, ours))
        print(
            f"page size {page}: nova's server list --all-projects {a:.2f} s; the audit's own "
            f"listing (microversion 2.79) {b:.2f} s; vmtrust audit {c:.2f} s; ratio audit / "
            f"server list {c / a:.2f}, audit / its listing {c / b:.2f} (medians of {args.rounds})"
        )
        print(
            f"  audit API calls {total} (nova {calls['compute']}, Glance {calls['image']}) "
            f"against ceil({args.servers}/{page}) + {args.images} = {bound}: constant "
            f"{total - bound:+d} (version discovery of both, the aggregate list, an empty last "
            "page when the last is full)"
        )
        for name, samples in (("server list", theirs), ("listing", listing), ("audit", ours)):
            print(f"  {name} samples: {', '.join(f'{t:.2f}' for t in samples)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

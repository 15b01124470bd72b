"""moto in server mode for the EC2 tests, and the botocore-boundary stubs for what moto lacks.

:class:`MotoServer` runs moto's own server (``python -m moto.server``) on a free
loopback port in a subprocess, stopped by its process id.  It is the real
component of the EC2 tests: snapshots and their blocks, AMIs, tags, launch
permissions, S3 objects and instances are kept and checked by moto.

moto 5.2 does not implement a few calls, and ignores the meaning of others
(see shared/reference/ec2.md).  :class:`MotoGaps` fills exactly those in, as
botocore event hooks on the client side, and nothing else:

* ``EnableImageDeprecation`` (HTTP 500 in moto): answered here; the time is
  recorded and shown as ``DeprecationTime`` in DescribeImages, as EC2 does;
* the Allowed AMIs calls (HTTP 500 in moto): answered here, what was sent is
  recorded for the test to check;
* ``RegisterImage`` ignores ``BlockDeviceMappings`` (moto makes its own 15 GiB
  snapshot) and ``TagSpecifications``: the mapping sent is recorded and shown in
  DescribeImages, and the tags are applied with moto's own ``CreateTags``;
* ``StartSnapshot`` reports ``BlockSize`` 512 while storing whatever is sent:
  the reply says 524288, as EBS does;
* DescribeImages and DescribeInstances ignore ``MaxResults``/``NextToken`` (one
  page): with ``page_size`` set, the reply is cut into pages with tokens, as EC2
  pages (DescribeInstances by instances, each page keeping their reservations);
* ``RunInstances`` ignores the AMI's block-device mapping: the root volume is an
  empty one of moto's, not one made from the AMI's root snapshot.  For an AMI
  registered through these stubs, the root volume of each new instance is
  recorded with the AMI's root snapshot, and DescribeVolumes shows that as the
  volume's ``SnapshotId``, as EC2 does.  A root volume the launch asks for itself
  (a block-device mapping of the root device) and a volume attached later are
  moto's own.

The recorded state lives in a JSON file, so a sync killed with ``kill -9`` in a
child process and the run after it see the same emulated cloud.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class Cloud:
    """An emulated account for one test: clients (with the gap stubs), the stubs, moto's URL."""

    clients: Any
    gaps: MotoGaps
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}/moto-api/data.json", timeout=2)
                return self
            except requests.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def session(gaps: MotoGaps | None = None) -> Any:
    """A boto3 session with test credentials (and the gap stubs, before any client exists)."""
    import boto3

    made = boto3.Session(region_name=REGION, **CREDENTIALS)
    if gaps is not None:
        gaps.attach(made)
    return made


class MotoGaps:
    """Client-side stubs for exactly what moto does not do; state shared through a file."""

    def __init__(self, url: str, state_file: Path, page_size: int = 0) -> None:
        self.url = url
        self.state_file = state_file
        self.page_size = page_size
        self._lock = threading.Lock()
        self._direct: Any = None
        self._loader: Any = None

    # --- the shared state --------------------------------------------------------------

    @contextlib.contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        with self._lock, open(self.state_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            data = json.loads(handle.read() or "{}")
            for key in ("deprecations", "mappings", "allowed", "root_volumes"):
                data.setdefault(key, {})
            yield data
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(data))

    def read(self) -> dict[str, Any]:
        with self.state() as data:
            return copy.deepcopy(data)

    def _moto(self) -> Any:
        """A client straight to moto without any hook (for CreateTags of TagSpecifications);
        it shares the service models already loaded, so it costs no memory to speak of."""
        if self._direct is None:
            import botocore.session

            plain = botocore.session.Session()
            if self._loader is not None:
                plain.register_component("data_loader", self._loader)
            self._direct = plain.create_client(
                "ec2", region_name=REGION, endpoint_url=self.url, **CREDENTIALS
            )
        return self._direct

    # --- hooks ---------------------------------------------------------------------------

    def attach(self, boto_session: Any) -> None:
        self._loader = boto_session._session.get_component("data_loader")
        events = boto_session.events
        events.register("before-call.ec2.EnableImageDeprecation", self._deprecate)
        for name in (
            "EnableAllowedImagesSettings",
            "DisableAllowedImagesSettings",
            "ReplaceImageCriteriaInAllowedImagesSettings",
            "GetAllowedImagesSettings",
        ):
            events.register(f"before-call.ec2.{name}", self._allowed)
        events.register("provide-client-params.ec2", self._keep_params)
        events.register("provide-client-params.ec2.DescribeInstances", self._whole_listing)
        events.register("after-call.ec2.RegisterImage", self._registered)
        events.register("after-call.ec2.DescribeImages", self._describe_images)
        events.register("after-call.ec2.DescribeInstances", self._describe_instances)
        events.register("after-call.ec2.RunInstances", self._run_instances)
        events.register("after-call.ec2.DescribeVolumes", self._describe_volumes)
        events.register("after-call.ebs.StartSnapshot", self._block_size)

    @staticmethod
    def _keep_params(params: dict, context: dict, **_: Any) -> None:
        context["moto_gaps_params"] = copy.deepcopy(params)

    def _whole_listing(self, params: dict, **_: Any) -> dict | None:
        """moto reads the stubs' page tokens as its own (and fails): it is asked for all."""
        if not self.page_size:
            return None
        return {k: v for k, v in params.items() if k not in ("MaxResults", "NextToken")}

    def _deprecate(self, context: dict, **_: Any) -> tuple:
        body = context["moto_gaps_params"]
        when = body["DeprecateAt"]
        if isinstance(when, datetime):
            when = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        with self.state() as data:
            data["deprecations"][body["ImageId"]] = when
        return _ok(), {"Return": True}

    def _allowed(self, model: Any, context: dict, **_: Any) -> tuple:
        body = context["moto_gaps_params"]
        with self.state() as data:
            allowed = data["allowed"]
            if model.name == "GetAllowedImagesSettings":
                return _ok(), {
                    "State": allowed.get("state", "disabled"),
                    "ImageCriteria": allowed.get("criteria", []),
                }
            if model.name == "EnableAllowedImagesSettings":
                allowed["state"] = body["AllowedImagesSettingsState"]
                return _ok(), {"AllowedImagesSettingsState": allowed["state"]}
            if model.name == "DisableAllowedImagesSettings":
                allowed["state"] = "disabled"
                return _ok(), {"AllowedImagesSettingsState": "disabled"}
            allowed["criteria"] = body["ImageCriteria"]
            return _ok(), {"ReturnValue": True}

    def _registered(self, parsed: dict, context: dict, **_: Any) -> None:
        params = context.get("moto_gaps_params", {})
        image_id = parsed.get("ImageId")
        if not image_id:
            return
        with self.state() as data:
            data["mappings"][image_id] = {
                "RootDeviceName": params.get("RootDeviceName"),
                "BlockDeviceMappings": params.get("BlockDeviceMappings", []),
            }
        for spec in params.get("TagSpecifications", []):
            if spec.get("ResourceType") == "image" and spec.get("Tags"):
                self._moto().create_tags(Resources=[image_id], Tags=spec["Tags"])

    def _describe_images(self, parsed: dict, context: dict, **_: Any) -> None:
        state = self.read()
        for image in parsed.get("Images", []):
            mapping = state["mappings"].get(image["ImageId"])
            if mapping:
                image.update(mapping)
            when = state["deprecations"].get(image["ImageId"])
            if when:
                image["DeprecationTime"] = when
        params = context.get("moto_gaps_params", {})
        if self.page_size and "Images" in parsed:
            start = int(params.get("NextToken") or 0)
            size = min(self.page_size, params.get("MaxResults") or self.page_size)
            images = parsed["Images"]
            parsed["Images"] = images[start : start + size]
            if start + size < len(images):
                parsed["NextToken"] = str(start + size)

    def _describe_instances(self, parsed: dict, context: dict, **_: Any) -> None:
        if not self.page_size or "Reservations" not in parsed:
            return
        params = context.get("moto_gaps_params", {})
        start = int(params.get("NextToken") or 0)
        size = min(self.page_size, params.get("MaxResults") or self.page_size)
        pairs = [(r, i) for r in parsed["Reservations"] for i in r.get("Instances", [])]
        page: list[dict] = []
        for reservation, instance in pairs[start : start + size]:
            if not page or page[-1]["ReservationId"] != reservation["ReservationId"]:
                page.append({**reservation, "Instances": []})
            page[-1]["Instances"].append(instance)
        parsed["Reservations"] = page
        if start + size < len(pairs):
            parsed["NextToken"] = str(start + size)

    def _run_instances(self, parsed: dict, context: dict, **_: Any) -> None:
        asked = context.get("moto_gaps_params", {}).get("BlockDeviceMappings", [])
        with self.state() as data:
            for instance in parsed.get("Instances", []):
                root_device = instance.get("RootDeviceName")
                if any(m.get("DeviceName") == root_device for m in asked):
                    continue  # a root the launch asked for: moto made that one itself
                mapping = data["mappings"].get(instance.get("ImageId"))
                root = [
                    m["Ebs"]["VolumeId"]
                    for m in instance.get("BlockDeviceMappings", [])
                    if m.get("DeviceName") == root_device and "Ebs" in m
                ]
                if mapping and root:
                    snapshots = [
                        m["Ebs"].get("SnapshotId", "")
                        for m in mapping["BlockDeviceMappings"]
                        if m.get("DeviceName") == mapping["RootDeviceName"] and "Ebs" in m
                    ]
                    data["root_volumes"][root[0]] = snapshots[0] if snapshots else ""

    def _describe_volumes(self, parsed: dict, **_: Any) -> None:
        made_from = self.read()["root_volumes"]
        for volume in parsed.get("Volumes", []):
            if volume.get("VolumeId") in made_from:
                volume["SnapshotId"] = made_from[volume["VolumeId"]]

    @staticmethod
    def _block_size(parsed: dict, **_: Any) -> None:
        if "BlockSize" in parsed:
            parsed["BlockSize"] = 512 * 1024


def _ok() -> Any:
    from botocore.awsrequest import AWSResponse

    return AWSResponse("", 200, {}, None)

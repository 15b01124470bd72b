"""What moto does not check, checked here: blocks, checksums and tag limits.

moto stores whatever PutSnapshotBlock sends, ignores the checksums, the block
size and CompleteSnapshot's count and aggregate, and does not limit tag keys
and values.  AWS checks all of them, so these tests check what vmtrust sends
against values the test computes itself, with botocore's ``Stubber`` at the
client boundary (the EBS client is the only thing stubbed; the code under test
runs as it does against AWS).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
import test_record
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from glance_sync.stores.ec2_upload import BLOCK, BlockWriter, blocks, volume_gib
from vmtrust import ec2record, trust
from vmtrust.errors import EC2Error, SealError
from vmtrust.record import seal
from vmtrust.trust import Stored

KEY = Ed25519PrivateKey.generate()
RECORD = dataclasses.replace(
    test_record.RECORD,
    expires="2026-12-29T00:00:00Z",
    store_id="ami-0123456789abcdef0/snap-0123456789abcdef0",
)
SAFE = re.compile(r"[\w .:/=+\-@]*")


# --- the record as tags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "plain value",
        "",
        "/DC=org/DC=example/CN=Jane Endorser",
        "Wörker (v2), final!",
        "aws:reserved",
        "AWS:Reserved",
        "b64:looks encoded",
        "x" * 700,
        "ü" * 300 + "\n",
    ],
)
def test_values_round_trip_within_ec2_and_aws_wide_limits(value):
    tags = ec2record.split("vmtrust:title", value)
    assert ec2record.join(tags, "vmtrust:title") == value
    for key, piece in tags.items():
        assert len(key) <= 127 and len(piece) <= 256
        assert SAFE.fullmatch(piece) and not piece.lower().startswith("aws:")


@given(st.text(max_size=2000))
def test_any_text_round_trips(value):
    tags = ec2record.split("vmtrust:f", value)
    assert ec2record.join(tags, "vmtrust:f") == value
    assert all(len(p) <= 256 and SAFE.fullmatch(p) for p in tags.values())


def test_safe_values_stay_readable_in_the_console():
    assert ec2record.split("vmtrust:vo", "vo.example.org") == {"vmtrust:vo": "vo.example.org"}


def test_record_and_seal_round_trip_through_tags():
    sealed = seal(RECORD, KEY)
    tags = ec2record.record_tags(RECORD, sealed)
    assert tags["vmtrust:managed"] == "true" and tags["vmtrust:state"] == "trusted"
    assert ec2record.read_record(tags) == (RECORD, sealed)
    ec2record.check_limits(tags, reserve=len(ec2record.BOOKKEEPING))


def test_missing_seal_or_field_and_broken_encoding_are_seal_errors():
    tags = ec2record.record_tags(RECORD, seal(RECORD, KEY))
    with pytest.raises(SealError, match="no seal"):
        ec2record.read_record({k: v for k, v in tags.items() if k != "vmtrust:seal"})
    with pytest.raises(SealError, match="missing sha512"):
        ec2record.read_record({k: v for k, v in tags.items() if k != "vmtrust:sha512"})
    with pytest.raises(SealError, match="not valid base64"):
        ec2record.read_record({**tags, "vmtrust:title": "b64:***"})


def test_an_added_continuation_changes_the_record_and_breaks_the_seal():
    sealed = seal(RECORD, KEY)
    tags = {**ec2record.record_tags(RECORD, sealed), "vmtrust:vo.1": "-evil"}
    record, got = ec2record.read_record(tags)
    assert record.vo == "vo.example.org-evil"
    read = lambda: (record, got)  # noqa: E731
    verdict = trust.check_binding(read, Stored(record.store_id), keys=[KEY.public_key()])
    assert not verdict.trusted and verdict.code == trust.Code.SEAL and verdict.record is None


def test_tag_limits_of_ec2():
    fifty = {f"k{n}": "v" for n in range(50)}
    ec2record.check_limits(fifty)
    with pytest.raises(EC2Error, match="needs 51 tags, EC2 allows 50"):
        ec2record.check_limits({**fifty, "one": "more"})
    with pytest.raises(EC2Error, match="needs 55 tags"):
        ec2record.check_limits(fifty, reserve=5)
    with pytest.raises(EC2Error, match="is 257 characters"):
        ec2record.check_limits({"k": "v" * 257})
    with pytest.raises(EC2Error, match="not allowed"):
        ec2record.check_limits({"k" * 128: "v"})
    with pytest.raises(EC2Error, match="not allowed"):
        ec2record.check_limits({"aws:key": "v"})


def test_continuation_keys_are_found_and_nothing_else():
    tags = {"vmtrust:title": "a", "vmtrust:title.1": "b", "vmtrust:title.x": "c", "vmtrust:t.1": ""}
    assert ec2record.continuation_keys(tags, "vmtrust:title") == ["vmtrust:title.1"]


def test_the_published_document_round_trips_and_refuses_anything_else():
    sealed = seal(RECORD, KEY)
    body = ec2record.document(RECORD, sealed)
    assert ec2record.read_document(body, "s3://b/k") == (RECORD, sealed)
    assert ec2record.digest(body) == ec2record.digest(ec2record.document(RECORD, sealed))
    for bad, why in [
        (b"not json", "published record s3://b/k"),
        (b'{"vmtrust_record": 2, "record": {}, "seal": "x"}', "not a vmtrust record document"),
        (b'{"vmtrust_record": 1, "record": {}}', "record or seal missing"),
        (b" " * 70_000, "larger than the limit"),
    ]:
        with pytest.raises(SealError, match=why):
            ec2record.read_document(bad, "s3://b/k")


def test_root_snapshot_is_the_root_devices():
    image = {
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [
            {"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": "snap-data"}},
            {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-root"}},
        ],
    }
    assert ec2record.root_snapshot(image) == "snap-root"
    assert ec2record.root_snapshot({"RootDeviceName": "/dev/xvda"}) == ""


# --- blocks and checksums -----------------------------------------------------------------------


def reassemble(found: list[tuple[int, bytes]], count: int) -> bytes:
    data = bytearray(count * BLOCK)
    for index, block in found:
        data[index * BLOCK : (index + 1) * BLOCK] = block
    return bytes(data)


PIECES = {
    "zero block": bytes(BLOCK),
    "zeros": bytes(1000),
    "data": b"d" * 700,
    "data block": b"e" * BLOCK,
}


@settings(deadline=None, max_examples=40)
@given(
    st.lists(st.sampled_from(sorted(PIECES)), max_size=8),
    st.lists(st.integers(1, 3 * BLOCK), min_size=1, max_size=5),
)
def test_blocks_are_whole_non_zero_blocks_at_their_index_however_the_bytes_arrive(names, cuts):
    data = b"".join(PIECES[name] for name in names)
    chunks, at, n = [], 0, 0
    while at < len(data):
        size = cuts[n % len(cuts)]
        chunks.append(data[at : at + size])
        at, n = at + size, n + 1
    found = list(blocks(chunks))
    count = -(-len(data) // BLOCK)
    assert all(len(block) == BLOCK and block != bytes(BLOCK) for _, block in found)
    assert [i for i, _ in found] == sorted({i for i, _ in found})
    assert reassemble(found, count) == data + bytes(count * BLOCK - len(data))


def test_volume_size_is_whole_gib():
    assert [volume_gib(n) for n in (0, 1, 1 << 30, (1 << 30) + 1)] == [1, 1, 1, 2]


def ebs_client():
    import boto3

    return boto3.Session(
        region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y"
    ).client("ebs")


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_every_put_carries_its_checksum_and_completion_the_linear_aggregate():
    from botocore.stub import ANY, Stubber

    first, third = b"1" * BLOCK, b"3" * 100 + bytes(BLOCK - 100)
    client = ebs_client()
    stubber = Stubber(client)
    tags = [{"Key": "vmtrust:managed", "Value": "true"}]
    stubber.add_response(
        "start_snapshot",
        {"SnapshotId": "snap-1", "BlockSize": BLOCK, "Status": "pending"},
        {"VolumeSize": 1, "Tags": tags, "Description": "d", "ClientToken": ANY, "Timeout": 60},
    )
    for index, block in ((0, first), (2, third)):
        stubber.add_response(
            "put_snapshot_block",
            {"Checksum": b64sha256(block), "ChecksumAlgorithm": "SHA256"},
            {
                "SnapshotId": "snap-1",
                "BlockIndex": index,
                "BlockData": block,
                "DataLength": BLOCK,
                "Checksum": b64sha256(block),
                "ChecksumAlgorithm": "SHA256",
            },
        )
    aggregate = base64.b64encode(
        hashlib.sha256(hashlib.sha256(first).digest() + hashlib.sha256(third).digest()).digest()
    ).decode()
    stubber.add_response(
        "complete_snapshot",
        {"Status": "pending"},
        {
            "SnapshotId": "snap-1",
            "ChangedBlocksCount": 2,
            "Checksum": aggregate,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumAggregationMethod": "LINEAR",
        },
    )
    writer = BlockWriter(client, "img", threads=1)
    with stubber:
        writer.start(2 * BLOCK + 100, tags, "d")
        for index, block in blocks([first, bytes(BLOCK), b"3" * 100]):
            writer.put(index, block)
        assert writer.complete() == 2
    stubber.assert_no_pending_responses()


def test_an_all_zero_image_completes_with_no_blocks_and_no_checksum():
    from botocore.stub import ANY, Stubber

    client = ebs_client()
    stubber = Stubber(client)
    stubber.add_response(
        "start_snapshot",
        {"SnapshotId": "snap-0", "BlockSize": BLOCK},
        {"VolumeSize": 1, "Tags": [], "Description": "d", "ClientToken": ANY, "Timeout": 60},
    )
    stubber.add_response(
        "complete_snapshot",
        {"Status": "pending"},
        {"SnapshotId": "snap-0", "ChangedBlocksCount": 0},
    )
    writer = BlockWriter(client, "img", threads=1)
    with stubber:
        writer.start(3 * BLOCK, [], "d")
        assert list(blocks([bytes(3 * BLOCK)])) == []
        assert writer.complete() == 0
    stubber.assert_no_pending_responses()


def test_a_block_size_other_than_512_kib_is_refused():
    from botocore.stub import ANY, Stubber

    client = ebs_client()
    stubber = Stubber(client)
    stubber.add_response(
        "start_snapshot",
        {"SnapshotId": "snap-x", "BlockSize": 512},
        {"VolumeSize": 1, "Tags": [], "Description": "d", "ClientToken": ANY, "Timeout": 60},
    )
    writer = BlockWriter(client, "img", threads=1)
    with (
        stubber,
        pytest.raises(EC2Error, match="512-byte blocks for snap-x, vmtrust writes 524288"),
    ):
        writer.start(1, [], "d")
    writer.abort()


def test_a_failed_put_fails_the_upload_and_stops_sending():
    from botocore.stub import ANY, Stubber

    client = ebs_client()
    stubber = Stubber(client)
    stubber.add_response(
        "start_snapshot",
        {"SnapshotId": "snap-f", "BlockSize": BLOCK},
        {"VolumeSize": 1, "Tags": [], "Description": "d", "ClientToken": ANY, "Timeout": 60},
    )
    stubber.add_client_error("put_snapshot_block", "ValidationException", "checksum mismatch", 400)
    writer = BlockWriter(client, "img", threads=1)
    with stubber, pytest.raises(EC2Error, match="block 0 of snap-f: EBS PutSnapshotBlock"):
        writer.start(4 * BLOCK, [], "d")
        writer.put(0, b"a" * BLOCK)
        writer.complete()
    writer.abort()


def test_timestamps_used_for_deprecation_are_whole_minutes_never_after_expiry():
    from glance_sync.stores.ec2_account import aws_time, deprecate_at, next_minute, parse_time

    when = deprecate_at("2026-12-29T10:11:59Z")
    assert when == datetime(2026, 12, 29, 10, 11, tzinfo=UTC)
    assert parse_time(aws_time(when)) == when and parse_time(None) is None
    now = datetime(2026, 12, 1, 8, 0, 30, 5, tzinfo=UTC)
    assert next_minute(now) == now.replace(minute=1, second=0, microsecond=0)
    assert next_minute(now) - now < timedelta(minutes=1)

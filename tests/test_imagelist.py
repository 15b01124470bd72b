"""Parsing, validation and writing of image lists (vmtrust.imagelist loads/validate/dumps).

Covers: the reference example of hepix-imagelist.md §1.6; every required list,
endorser and image field (missing, null, empty, wrong type) with the path in
the message; AppDB numbers-as-strings kept on a round trip; exact dates;
SHA-512 form and case; the endorser as object and as array; the legacy list
without ``hv:imagelist``; unknown keys and ``ad:*`` fields preserved; empty and
duplicate images; all problems collected; deep nesting anywhere in the list
structure refused.
"""

import copy
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import IMAGE_SHA512, image_entry, list_document
from hypothesis import given
from hypothesis import strategies as st

from vmtrust import imagelist
from vmtrust.errors import InvalidJSON, InvalidListStructure, ListTooLarge

REFERENCE_EXAMPLE = b"""
{"hv:imagelist": {
  "dc:identifier": "65ef8feb-86d4-42ea-9960-f79bcc5a11b4", "dc:title": "Example site images",
  "dc:description": "Images endorsed for vo.example.org", "dc:source": "https://images.example.org/",
  "dc:date:created": "2024-05-01T08:00:00Z", "dc:date:expires": "2024-05-29T08:00:00Z",
  "hv:version": "3", "hv:uri": "https://images.example.org/lists/site.list", "ad:vo": "vo.example.org",
  "hv:endorser": {"hv:x509": {"dc:creator": "Jane Endorser", "hv:email": "jane@example.org",
     "hv:dn": "/DC=org/DC=example/O=People/CN=Jane Endorser", "hv:ca": "/DC=org/DC=example/CN=Example Test CA"}},
  "hv:images": [{"hv:image": {
     "dc:identifier": "85bfb313-a852-444b-89e7-9cdf8c23dc91", "dc:title": "Example worker node",
     "dc:description": "Minimal worker node image", "hv:uri": "https://images.example.org/img/wn-3.qcow2",
     "hv:size": 20,
     "sl:checksum:sha512": "9f7cc3a2d34525d9b276ef0846c1e0d5fb9995ec02b9d97727cf7827632d3d2ccf2cd7ef99c22fe454b5b618de5305be6ef62c63c0a3e951c0a3443267a5fee8",
     "hv:format": "QCOW2", "hv:hypervisor": "KVM", "hv:version": "1.2", "sl:arch": "x86_64", "sl:os": "Linux",
     "sl:osname": "AlmaLinux", "sl:osversion": "9", "sl:comments": "", "hv:core_minimum": 1, "hv:ram_minimum": 2048}}]}}
"""  # noqa: E501

# fmt: off
LIST_FIELDS = ["dc:identifier", "dc:title", "dc:description", "dc:source", "dc:date:created",
               "dc:date:expires", "hv:version", "hv:uri", "hv:endorser", "hv:images"]
ENDORSER_FIELDS = ["hv:dn", "hv:ca", "hv:email", "dc:creator"]
IMAGE_FIELDS = ["dc:identifier", "dc:title", "dc:description", "hv:uri", "hv:size",
                "sl:checksum:sha512", "sl:arch", "sl:os", "sl:osversion", "sl:comments",
                "hv:hypervisor", "hv:version"]
BAD_UINTS = [-1, 1.5, 20.0, True, False, [], {}, "1" * 21, "", " 12", "12 ", "-1", "1.5", "+12",
             "0x10", "1e3", "١٢", "１２"]
BAD_DATES = ["2024-05-01T08:00:00.5Z", "2024-05-01T08:00:00+00:00", "2024-05-01T08:00:00",
             "2024-05-01t08:00:00z", "2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z",
             "2024-13-01T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01T23:59:60Z",
             "24-05-01T08:00:00Z", "2024-5-1T8:00:00Z", "٢٠٢٤-05-01T08:00:00Z",
             "2024-05-01 08:00:00Z", "2024-05-01T08:00:00Z\n", " 2024-05-01T08:00:00Z", "",
             20240501, None]
BAD_SHA512 = [IMAGE_SHA512[:-1], IMAGE_SHA512 + "0", IMAGE_SHA512[:-1] + "g", IMAGE_SHA512[:64],
              "sha512:" + IMAGE_SHA512, IMAGE_SHA512[:64] + " " + IMAGE_SHA512[65:], 12, None]
# fmt: on
#: AppDB sends every value as a string; ad:* extensions at list and image level.
APPDB_LIST = {"ad:vo": "fedcloud.egi.eu", "ad:swid": "1017", "ad:num_of_images": "1"}
APPDB_LIST["ad:publisher:name"] = "EGI AppDB"
APPDB_IMAGE = json.loads("""{
  "hv:size": "121243136", "hv:core_minimum": "1", "hv:ram_minimum": "512", "hv:format": "OVA",
  "ad:mpuri": "https://appdb.egi.eu/store/vo/image/85bfb313:484/",
  "ad:base_mpuri": "https://appdb.egi.eu/store/vm/image/aaa:6450:1469784811/",
  "ad:appid": "993", "ad:group": "General group", "ad:ram_recommended": "1024",
  "ad:core_recommended": "4", "ad:user:fullname": "Jane", "ad:user:guid": "g",
  "ad:user:uri": "https://appdb.egi.eu/store/person/jane", "sl:osname": "CentOS",
  "dc:date:expires": "2499-12-31T22:00:00Z"}""")


def problems(document):
    with pytest.raises(InvalidListStructure) as info:
        imagelist.validate(document)
    return info.value.problems


def fields(document):
    return document["hv:imagelist"]


def three_images(**overrides_for_last):
    return [image_entry("id-0"), image_entry("id-1"), image_entry("id-2", **overrides_for_last)]


def nested(levels, leaf=None):
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


def test_reference_example_parses():
    lst = imagelist.loads(REFERENCE_EXAMPLE)
    assert (lst.identifier, lst.version, lst.vo, lst.title, lst.source) == (
        "65ef8feb-86d4-42ea-9960-f79bcc5a11b4", "3", "vo.example.org", "Example site images",
        "https://images.example.org/")  # fmt: skip
    assert lst.created == datetime(2024, 5, 1, 8, tzinfo=UTC)
    assert lst.expires - lst.created == timedelta(days=28)
    assert lst.endorsers == (imagelist.Endorser(
        dn="/DC=org/DC=example/O=People/CN=Jane Endorser",
        ca="/DC=org/DC=example/CN=Example Test CA",
        creator="Jane Endorser", email="jane@example.org"),)  # fmt: skip
    image = lst.image("85bfb313-a852-444b-89e7-9cdf8c23dc91")
    assert image is not None and lst.image("nope") is None
    assert (image.size, image.format, image.osname) == (20, "QCOW2", "AlmaLinux")
    assert image.sha512 == IMAGE_SHA512  # the SHA-512 of b"example image bytes\n"
    assert (image.core_minimum, image.ram_minimum, image.comments) == (1, 2048, "")
    assert json.loads(imagelist.dumps(lst.raw)) == json.loads(REFERENCE_EXAMPLE)


@pytest.mark.parametrize("key", LIST_FIELDS)
def test_missing_list_field(key):
    document = list_document()
    del fields(document)[key]
    assert f"{key}: missing" in problems(document)


@pytest.mark.parametrize("key", ENDORSER_FIELDS)
def test_missing_endorser_field(key):
    document = list_document()
    del fields(document)["hv:endorser"]["hv:x509"][key]
    assert problems(document) == [f"hv:endorser.hv:x509.{key}: missing"]


@pytest.mark.parametrize("key", IMAGE_FIELDS)
def test_missing_image_field(key):
    document = list_document(images=three_images(**{key: None}))
    assert problems(document) == [f"hv:images[2].{key}: missing"]


@pytest.mark.parametrize(
    ("key", "attribute"),
    [("hv:format", "format"), ("sl:osname", "osname"), ("hv:core_minimum", "core_minimum"),
     ("hv:ram_minimum", "ram_minimum"), ("dc:date:expires", "expires"), ("ad:mpuri", "mpuri")],
)  # fmt: skip
def test_optional_image_field_may_be_absent(key, attribute):
    lst = imagelist.validate(list_document(images=[image_entry(**{key: None})]))
    assert getattr(lst.images[0], attribute) is None
    with_it = imagelist.validate(list_document(images=[image_entry(**{key: APPDB_IMAGE[key]})]))
    assert getattr(with_it.images[0], attribute) is not None


def test_null_and_empty_values():
    document = list_document()
    fields(document)["dc:title"] = None
    fields(document)["dc:identifier"] = "  "
    fields(document)["dc:description"] = ""  # may be empty (AppDB, HVT)
    fields(document)["hv:endorser"]["hv:x509"]["hv:dn"] = ""
    assert problems(document) == [
        "dc:identifier: is empty",
        "dc:title: is null",
        "hv:endorser.hv:x509.hv:dn: is empty",
    ]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("dc:title",), 5, "dc:title: not a string: 5"),
        (("ad:vo",), ["x"], 'ad:vo: not a string: ["x"]'),
        (("hv:uri",), "ftp://example.org/l", 'hv:uri: not an http, https or file URL: "ftp'),
        (("hv:uri",), "https://example.org/a b", "hv:uri: not an http, https or file URL"),
        (("hv:version",), True, "hv:version: not a version string: true"),
        (("hv:version",), 1.5, "hv:version: not a version string: 1.5"),
        (("hv:version",), " ", 'hv:version: not a version string: " "'),
        (("hv:images",), {}, "hv:images: not an array: {}"),
        (("hv:images",), ["x"], 'hv:images[0]: not an object of the form {"hv:image": {...}}'),
        (("hv:images",), [image_entry()["hv:image"]], "hv:images[0]: not an object of the form"),
        (("hv:endorser",), "x", "hv:endorser.hv:x509: missing or not an object"),
        (("hv:endorser",), [], "hv:endorser: is an empty array"),
        (("hv:endorser", "hv:x509"), None, "hv:endorser.hv:x509: missing or not an object"),
        (("hv:endorser", "hv:x509", "hv:ca"), 7, "hv:endorser.hv:x509.hv:ca: not a string: 7"),
    ],
)
def test_wrong_types(path, value, message):
    document = list_document()
    target = fields(document)
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = problems(document)
    assert len(found) == 1 and found[0].startswith(message), found


@pytest.mark.parametrize("document", [[], "x", None, {"hv:imagelist": []}])
def test_not_a_list_object(document):
    assert problems(document) == ["(top level): not a JSON object with hv:imagelist"]


def test_exact_message_for_a_bad_size():
    document = list_document(images=three_images(**{"hv:size": "12x"}))
    with pytest.raises(InvalidListStructure) as info:
        imagelist.loads(json.dumps(document).encode())
    assert info.value.problems == ['hv:images[2].hv:size: not a non-negative integer: "12x"']
    assert str(info.value) == (
        'invalid image list: hv:images[2].hv:size: not a non-negative integer: "12x"'
    )


@pytest.mark.parametrize("value", BAD_UINTS)
@pytest.mark.parametrize("key", ["hv:size", "hv:core_minimum", "hv:ram_minimum"])
def test_bad_unsigned_integers(key, value):
    document = list_document(images=[image_entry(**{key: value})])
    assert problems(document) == [
        f"hv:images[0].{key}: not a non-negative integer: {json.dumps(value)}"
    ]


def test_numbers_as_strings_are_accepted_and_kept():
    image = image_entry(**{"hv:size": "121243136", "hv:core_minimum": "4", "hv:ram_minimum": "512"})
    lst = imagelist.loads(imagelist.dumps(list_document(images=[image])))
    typed = lst.images[0]
    assert (typed.size, typed.core_minimum, typed.ram_minimum) == (121243136, 4, 512)
    written = json.loads(imagelist.dumps(lst.raw))["hv:imagelist"]["hv:images"][0]["hv:image"]
    kept = (written["hv:size"], written["hv:core_minimum"], written["hv:ram_minimum"])
    assert kept == ("121243136", "4", "512")
    zero = imagelist.validate(list_document(images=[image_entry(**{"hv:size": 0})]))
    assert zero.images[0].size == 0


@pytest.mark.parametrize("value", BAD_DATES)
def test_bad_dates(value):
    document = list_document(images=[image_entry(**{"dc:date:expires": value or 0})])
    fields(document)["dc:date:created"] = value
    found = problems(document)
    form = "not a date of the form YYYY-MM-DDTHH:MM:SSZ"
    assert f"dc:date:created: {form}: {json.dumps(value)}" in found
    assert f"hv:images[0].dc:date:expires: {form}: {json.dumps(value or 0)}" in found


def test_good_dates():
    document = list_document(images=[image_entry(**{"dc:date:expires": "2499-12-31T22:00:00Z"})])
    fields(document)["dc:date:created"] = "2024-02-29T23:59:59Z"
    lst = imagelist.validate(document)
    assert lst.created == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    assert lst.images[0].expires == datetime(2499, 12, 31, 22, tzinfo=UTC)
    assert imagelist.format_date(lst.created) == "2024-02-29T23:59:59Z"
    cest = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert imagelist.format_date(cest) == "2024-05-01T08:00:00Z"


@pytest.mark.parametrize("expires_after", [timedelta(0), timedelta(seconds=-1)])
def test_expires_must_be_after_created(expires_after):
    created = datetime(2024, 5, 1, 8, tzinfo=UTC)
    document = list_document(created=created, expires=created + expires_after)
    assert problems(document) == ["dc:date:expires: is not after dc:date:created"]
    assert imagelist.validate(
        list_document(created=created, expires=created + timedelta(seconds=1))
    )


@pytest.mark.parametrize("value", BAD_SHA512)
def test_bad_sha512(value):
    document = list_document(images=[image_entry()])
    fields(document)["hv:images"][0]["hv:image"]["sl:checksum:sha512"] = value
    assert problems(document) == [
        f"hv:images[0].sl:checksum:sha512: not 128 hexadecimal digits: {_shown(value)}"
    ]


def _shown(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def test_upper_case_sha512_is_normalised_in_the_typed_view_only():
    document = list_document(images=[image_entry(**{"sl:checksum:sha512": IMAGE_SHA512.upper()})])
    lst = imagelist.loads(imagelist.dumps(document))
    assert lst.images[0].sha512 == IMAGE_SHA512
    assert lst.images[0].raw["sl:checksum:sha512"] == IMAGE_SHA512.upper()
    assert IMAGE_SHA512.upper().encode() in imagelist.dumps(lst.raw)


def test_endorser_as_array():
    document = list_document()
    first = fields(document)["hv:endorser"]
    second = {"hv:x509": {**first["hv:x509"], "hv:dn": "/DC=org/DC=example/CN=Second"}}
    fields(document)["hv:endorser"] = [first, second]
    lst = imagelist.loads(imagelist.dumps(document))
    assert [e.dn for e in lst.endorsers] == [
        first["hv:x509"]["hv:dn"],
        "/DC=org/DC=example/CN=Second",
    ]
    assert isinstance(json.loads(imagelist.dumps(lst.raw))["hv:imagelist"]["hv:endorser"], list)
    del second["hv:x509"]["hv:ca"]
    fields(document)["hv:endorser"].append("junk")
    assert problems(document) == [
        "hv:endorser[1].hv:x509.hv:ca: missing",
        "hv:endorser[2].hv:x509: missing or not an object",
    ]


def test_legacy_list_without_wrapper():
    legacy = fields(list_document())
    lst = imagelist.loads(imagelist.dumps(legacy))
    assert lst.identifier == legacy["dc:identifier"] and len(lst.images) == 1
    assert json.loads(imagelist.dumps(lst.raw)) == legacy
    del legacy["hv:uri"]
    assert problems(legacy) == ["hv:uri: missing"]


def test_unknown_keys_survive_a_round_trip():
    document = list_document()
    document["x-top"] = {"kept": [1, 2.5, None, True]}
    fields(document)["x:list"] = {"nested": {"deeper": ["a", {"b": "ü"}]}}
    fields(document)["hv:endorser"]["x:wrapper"] = 1
    fields(document)["hv:endorser"]["hv:x509"]["x:endorser"] = ["e"]
    fields(document)["hv:images"][0]["x:entry"] = "entry"
    fields(document)["hv:images"][0]["hv:image"]["x:image"] = {"i": -3}
    original = copy.deepcopy(document)
    data = imagelist.dumps(document)
    lst = imagelist.loads(data)
    assert json.loads(imagelist.dumps(lst.raw)) == original
    assert imagelist.dumps(lst.raw) == data
    assert list(fields(json.loads(data))) == list(fields(original))  # key order kept


def test_appdb_fields():
    image = image_entry(**APPDB_IMAGE)
    document = list_document(images=[image])
    fields(document).update(APPDB_LIST)
    lst = imagelist.loads(imagelist.dumps(document))
    assert lst.vo == "fedcloud.egi.eu"
    assert lst.images[0].mpuri == "https://appdb.egi.eu/store/vo/image/85bfb313:484/"
    assert lst.images[0].expires == datetime(2499, 12, 31, 22, tzinfo=UTC)
    assert json.loads(imagelist.dumps(lst.raw)) == document
    image["hv:image"]["ad:mpuri"] = 484
    assert problems(document) == ["hv:images[0].ad:mpuri: not a string: 484"]


def test_empty_image_list_is_valid():
    assert imagelist.validate(list_document(images=[])).images == ()


def test_duplicate_image_identifiers():
    document = list_document(
        images=[image_entry("same"), image_entry("other"), image_entry("same")]
    )
    assert problems(document) == ["hv:images[2].dc:identifier: duplicate of hv:images[0]: same"]


def test_all_problems_are_collected():
    document = list_document(images=three_images(**{"hv:size": "12x", "sl:arch": None}))
    del fields(document)["dc:title"]
    fields(document)["dc:date:created"] = "yesterday"
    with pytest.raises(InvalidListStructure) as info:
        imagelist.validate(document)
    assert info.value.problems == [
        "dc:title: missing",
        'dc:date:created: not a date of the form YYYY-MM-DDTHH:MM:SSZ: "yesterday"',
        "hv:images[2].sl:arch: missing",
        'hv:images[2].hv:size: not a non-negative integer: "12x"',
    ]
    assert str(info.value) == "invalid image list: dc:title: missing (and 3 more problems)"
    del fields(document)["dc:date:created"]
    fields(document)["hv:images"] = []
    with pytest.raises(InvalidListStructure, match=r"missing \(and 1 more problem\)$"):
        imagelist.validate(document)


@pytest.mark.parametrize(
    ("place", "path"),
    [
        (lambda d: d, "(top level).x"),
        (lambda d: fields(d), "x"),
        (lambda d: fields(d)["hv:endorser"], "hv:endorser.x"),
        (lambda d: fields(d)["hv:endorser"]["hv:x509"], "hv:endorser.hv:x509.x"),
        (lambda d: fields(d)["hv:images"][0], "hv:images[0].x"),
        (lambda d: fields(d)["hv:images"][0]["hv:image"], "hv:images[0].x"),
    ],
)
def test_deep_nesting_under_unknown_keys(place, path):
    document = list_document()
    place(document)["x"] = nested(32)
    assert imagelist.validate(document)  # 32 levels below a key: the limit, accepted
    place(document)["x"] = nested(33)
    assert problems(document) == [f"{path}: nesting is too deep"]


def test_deep_value_in_a_known_field_is_reported_readably():
    document = list_document(images=[image_entry(**{"hv:size": nested(5000)})])
    assert problems(document) == ["hv:images[0].hv:size: not a non-negative integer: {...}"]


def test_dumps_format():
    document = list_document()
    fields(document)["dc:title"] = "Müller's images"
    data = imagelist.dumps(document)
    assert data.endswith(b"}\n") and b"\r" not in data
    assert b'\n    "hv:imagelist": {\n        "dc:identifier"' in data
    assert b"M\\u00fcller" in data
    assert json.loads(data) == document


def test_loads_refuses_bad_json_and_oversized_lists():
    data = imagelist.dumps(list_document())
    with pytest.raises(ListTooLarge, match="larger than the limit of 100 bytes"):
        imagelist.loads(data, max_bytes=100)
    with pytest.raises(InvalidJSON, match="image list: not valid JSON"):
        imagelist.loads(data[:-3])


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
def test_parse_date_agrees_with_strptime(moment):
    text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    expected = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert imagelist.parse_date(text) == expected


@pytest.mark.parametrize("text", ["2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
                                  "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z",
                                  "0000-01-01T00:00:00Z"])  # fmt: skip
def test_parse_date_refuses_impossible_dates(text):
    with pytest.raises(ValueError):
        imagelist.parse_date(text)


def test_deep_values_under_unknown_keys_are_reported_in_document_order():
    """The unknown keys are found with a set operation; the problems still come in the
    order the document has them, whatever the hash seed."""
    document = list_document()
    image = fields(document)["hv:images"][0]["hv:image"]
    for key in ("zz", "ad:deep", "b", "a"):
        image[key] = nested(33)
    image["ad:flat"] = [[1]]  # unknown and nested, but within the limit
    assert problems(document) == [
        f"hv:images[0].{key}: nesting is too deep" for key in ("zz", "ad:deep", "b", "a")
    ]


def test_parse_date_shares_parsed_dates_but_never_failures():
    text = "2026-05-01T08:00:00Z"
    assert imagelist.parse_date(text) is imagelist.parse_date("2026-05-01T08:00:00Z"[:])
    for _ in range(2):  # a refused date is refused every time, not remembered as valid
        with pytest.raises(ValueError):
            imagelist.parse_date("2026-02-30T08:00:00Z")

    class Text(str):
        pass

    assert imagelist.parse_date(Text(text)) == imagelist.parse_date(text)
    with pytest.raises(ValueError):
        imagelist.parse_date(b"2026-05-01T08:00:00Z")  # type: ignore[arg-type]

"""Hostile JSON is refused quickly with a clear message (vmtrust.jsonsafe, and imagelist.loads).

Covers: deep nesting (to the decoder's recursion limit and beyond, bare and
hidden under an unknown key of an otherwise valid list), size limits,
duplicate keys, invalid UTF-8, NaN/Infinity, numbers out of range, huge
integer literals, unpaired surrogates, the UTF-8 BOM, empty input, trailing
garbage, and the iterative ``depth`` helper.  Every refusal asserts the
exception type, a distinctive part of the message and a time bound.
"""

import json
import time

import pytest
from conftest import list_document

from vmtrust import imagelist, jsonsafe
from vmtrust.errors import InvalidJSON, InvalidListStructure, ListFormatError, ListTooLarge

TIME_LIMIT = 2.0  # seconds; every refusal here takes milliseconds


def refused(exc_type, fragment, call, *args, **kwargs):
    """Run ``call``, expect ``exc_type`` with ``fragment`` in its message, within TIME_LIMIT."""
    start = time.perf_counter()
    with pytest.raises(exc_type) as info:
        call(*args, **kwargs)
    elapsed = time.perf_counter() - start
    assert fragment in str(info.value), str(info.value)
    assert elapsed < TIME_LIMIT, f"took {elapsed:.2f}s"
    return str(info.value)


def with_unknown_key(raw_value: bytes) -> bytes:
    """A valid list whose list object carries ``"x-extra": <raw_value>``."""
    document = list_document()
    document["hv:imagelist"]["x-extra"] = "PLACEHOLDER"
    data = json.dumps(document).encode()
    return data.replace(b'"PLACEHOLDER"', raw_value)


# --- nesting ------------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"a":', b'[{"a":'])
def test_deep_nesting_is_refused(opener):
    message = refused(InvalidJSON, "nesting is too deep", jsonsafe.loads, opener * 100_000)
    assert message == "image list: nesting is too deep"


def test_balanced_deep_nesting_is_refused():
    data = b"[" * 50_000 + b"]" * 50_000
    refused(InvalidJSON, "nesting is too deep", jsonsafe.loads, data, what="cache index")


def test_ten_thousand_nested_objects_under_an_unknown_key():
    deep = b'{"k":' * 10_000 + b"null" + b"}" * 10_000
    message = refused(
        ListFormatError, "nesting is too deep", imagelist.loads, with_unknown_key(deep)
    )
    assert message.startswith(("image list: nesting", "invalid image list: x-extra: nesting"))


def test_moderate_nesting_under_an_unknown_key_is_caught_by_validation():
    # Shallow enough for the decoder, too deep for the list structure.
    deep = b"[" * 100 + b"]" * 100
    assert jsonsafe.depth(jsonsafe.loads(deep), limit=1000) == 100
    refused(InvalidListStructure, "x-extra: nesting is too deep", imagelist.loads,
            with_unknown_key(deep))  # fmt: skip


def test_depth_helper():
    assert jsonsafe.depth("x") == 0
    assert jsonsafe.depth([]) == 1
    assert jsonsafe.depth({"a": [1, {"b": []}], "c": 2}) == 4
    assert jsonsafe.depth(list_document()) == 5  # the HEPiX list structure itself
    value = None
    for _ in range(1_000_000):  # far beyond any recursion limit
        value = [value]
    start = time.perf_counter()
    assert jsonsafe.depth(value, limit=32) == 33  # stops as soon as the limit is passed
    assert time.perf_counter() - start < 0.1


# --- size ----------------------------------------------------------------------------


def test_more_bytes_than_the_limit():
    data = json.dumps({"pad": "x" * 2000}).encode()
    message = refused(ListTooLarge, "is larger than the limit of 1000 bytes", jsonsafe.loads,
                      data, max_bytes=1000)  # fmt: skip
    assert message == f"image list: {len(data)} bytes is larger than the limit of 1000 bytes"
    assert jsonsafe.loads(data, max_bytes=len(data)) == {"pad": "x" * 2000}
    refused(ListTooLarge, "larger than the limit", jsonsafe.loads, data, max_bytes=len(data) - 1)


def test_default_limit_refuses_before_decoding():
    data = b"[" + b"0," * (jsonsafe.DEFAULT_MAX_BYTES // 2) + b"0]"
    refused(ListTooLarge, f"limit of {jsonsafe.DEFAULT_MAX_BYTES} bytes", jsonsafe.loads, data)
    refused(ListTooLarge, "limit", imagelist.loads, data)


def test_megabytes_of_valid_json_decode_in_bounded_time():
    data = b"[" + b'{"a": [1, "two", null]},' * 200_000 + b"{}]"  # about 5 MB
    start = time.perf_counter()
    assert len(jsonsafe.loads(data)) == 200_001
    assert time.perf_counter() - start < TIME_LIMIT * 2


# --- duplicate keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b'{"hv:size": 1, "hv:size": 2}', '"hv:size"'),
        (b'{"a": {"b": 1, "c": 2, "b": 1}}', '"b"'),
        (b'[{"ok": 1}, {"dup": 1, "dup": 1}]', '"dup"'),
        (b'{"q\\"uote": 1, "q\\"uote": 2}', '"q\\"uote"'),
    ],
)
def test_duplicate_keys(data, key):
    message = refused(InvalidJSON, "duplicate key", jsonsafe.loads, data)
    assert message == f"image list: duplicate key {key}"


def test_duplicate_key_inside_a_list_document():
    data = imagelist.dumps(list_document()).replace(
        b'"hv:version": "1.2",', b'"hv:version": "1.2", "hv:version": "9",'
    )
    refused(InvalidJSON, 'duplicate key "hv:version"', imagelist.loads, data)


# --- encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b'{"a": "\xff"}', 7),  # never valid in UTF-8
        (b'{"a": "caf\xe9"}', 10),  # Latin-1
        (b'["\xc0\xaf"]', 2),  # overlong "/"
        (b'["\xed\xa0\x80"]', 2),  # a surrogate encoded in UTF-8
        (b'["ok", "\xe2\x82"]', 8),  # truncated sequence
        (b"\xff\xfe[\x00]\x00", 0),  # UTF-16 with BOM
    ],
)
def test_invalid_utf8_names_the_offset(data, offset):
    message = refused(InvalidJSON, f"invalid byte at offset {offset}", jsonsafe.loads, data)
    assert message == f"image list: not UTF-8 (invalid byte at offset {offset})"


def test_utf8_bom_is_accepted():
    assert jsonsafe.loads(b'\xef\xbb\xbf{"a": "\xc3\xbc"}') == {"a": "ü"}
    lst = imagelist.loads(b"\xef\xbb\xbf" + imagelist.dumps(list_document()))
    assert lst.version == "3"
    refused(InvalidJSON, "not valid JSON", jsonsafe.loads, b"\xef\xbb\xbf\xef\xbb\xbf{}")


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDFFF", b"x\\udc00y", b"\\ude00\\ud83d"])
def test_unpaired_surrogates_are_refused(escape):
    data = b'{"title": "' + escape + b'"}'
    refused(InvalidJSON, "unpaired surrogate", jsonsafe.loads, data)
    refused(InvalidJSON, "unpaired surrogate", jsonsafe.loads, b'{"' + escape + b'": 1}')


def test_escaped_pairs_and_escaped_backslashes_are_fine():
    assert jsonsafe.loads(b'["\\ud83d\\ude00"]') == ["\U0001f600"]
    assert jsonsafe.loads(b'["\\\\ud800"]') == ["\\ud800"]  # a backslash, then text


# --- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused(constant):
    data = b'{"hv:size": ' + constant + b"}"
    message = refused(InvalidJSON, "is not valid JSON", jsonsafe.loads, data)
    assert constant.decode() in message


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1.5e99999"])
def test_numbers_beyond_float_range_are_refused(literal):
    # Python would read them as +-inf and write them back as (invalid) Infinity.
    message = refused(InvalidJSON, "out of range", jsonsafe.loads, b"[" + literal + b"]")
    assert literal.decode() in message
    assert jsonsafe.loads(b"[1e300, -2.5E-10]") == [1e300, -2.5e-10]


def test_huge_integer_literal_is_refused():
    message = refused(InvalidJSON, "not valid JSON", jsonsafe.loads, b"[" + b"1" * 5000 + b"]")
    assert "digits" in message
    refused(InvalidJSON, "digits", imagelist.loads, with_unknown_key(b"1" * 5000))


# --- syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "Expecting value at line 1 column 1"),
        (b" \n\t ", "Expecting value at line 2 column 3"),
        (b"{} x", "Extra data at line 1 column 4"),
        (b'{"a": 1}{"b": 2}', "Extra data at line 1 column 9"),
        (b'{"a": 1,}', "Expecting property name enclosed in double quotes"),
        (b"{'a': 1}", "Expecting property name enclosed in double quotes"),
        (b'["a\x01"]', "Invalid control character"),
        (b'{"a": tru}', "Expecting value"),
    ],
)
def test_syntax_errors_name_the_position(data, fragment):
    message = refused(InvalidJSON, fragment, jsonsafe.loads, data, what="list x.json")
    assert message.startswith("list x.json: not valid JSON: ")


def test_error_classes():
    assert issubclass(InvalidJSON, ListFormatError) and issubclass(ListTooLarge, ListFormatError)
    assert InvalidJSON("x").exit_code == 37 and ListTooLarge("x").exit_code == 38

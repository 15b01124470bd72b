"""The split-numeric ``hv:version`` order (vmtrust.version) and ``bump``.

Covers every row of the comparator table in hepix-imagelist.md §3.3, AppDB's
date-like versions, the sign convention (``compare(a, b) == 1`` when ``a`` is
newer, the opposite of vmcatcher's ``split_numeric_sort``), the ordering laws
as hypothesis properties, agreement with an independent sort-key model of the
§3.3 rules, inputs that must not crash the rollback check (non-ASCII digits,
integers longer than Python's int/str limit), and ``bump``.
"""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmtrust.version import bump, compare, version_key

# --- strategies -----------------------------------------------------------------

_number = st.one_of(
    st.integers(0, 99).map(str),
    st.integers(0, 10**15).map(str),
    st.sampled_from(["0", "00", "007", "09", "10"]),
)
_word = st.one_of(
    st.sampled_from(["rc", "a", "b", "beta", "alpha", "RC", "final", "dev", "p"]),
    st.from_regex(r"[a-zA-Z]{1,3}", fullmatch=True),
)
_chunk = st.one_of(
    _number, _word, st.tuples(_word, _number).map("".join), st.tuples(_number, _word).map("".join)
)
_structured = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _chunk,
    st.lists(st.tuples(st.sampled_from("-,./"), _chunk), max_size=5),
)
#: Realistic versions: "1.2.10", "rc2", "2.0-beta3", "20150618211400", plus noise.
versions = st.one_of(_structured, st.text(alphabet="0123456789abcXY-,./", max_size=12))
#: Anything an endorser could put in hv:version, with non-ASCII digits made likely.
any_text = st.one_of(st.text(max_size=20), st.text(alphabet="019²³٣३１a.-", max_size=10))


# --- an independent model of §3.3 --------------------------------------------------
# Rules 1-5 as a sort key: Python compares tuples lexicographically and a tuple
# that is a prefix of another is smaller (rule 5 and the prefix part of rule 4).


def _run_key(run):
    return (1, int(run)) if re.fullmatch(r"[0-9]+", run) else (0, run)


def _token_key(token):
    if re.fullmatch(r"[0-9]+", token):
        return (1, int(token))  # rules 2 and 3: numeric tokens beat the rest
    return (0, tuple(_run_key(r) for r in re.findall(r"[0-9]+|[^0-9]+", token)))


def model_key(version):
    return tuple(_token_key(t) for t in re.split(r"([-,./])", version) if t)


def model_compare(a, b):
    ka, kb = model_key(a), model_key(b)
    return (ka > kb) - (ka < kb)


# --- the reference table ----------------------------------------------------------

REFERENCE_TABLE = [
    # (newer, older, rule) — every row of hepix-imagelist.md §3.3
    ("1.10", "1.9", "integers"),
    ("1.2.1", "1.2", "longer"),
    ("1.2", "1.2a", "numeric beats non-numeric"),
    ("rc10", "rc2", "digit runs as integers"),
    ("1.2", "1-2", "delimiters compare as strings"),
]

MORE_ORDERED_PAIRS = [
    ("20150618211400", "20150618211399"),  # AppDB date-like versions
    ("20160101000000", "20150618211400"),
    ("1/2", "1.2"),  # delimiter order: "/" > "." > "-" > ","
    ("1.2", "1-2"),
    ("1-2", "1,2"),
    ("1/2", "1,2"),
    ("2", "1"),
    ("10", "9"),
    ("0.0.2", "0.0.1"),
    ("1.0", "1.0rc1"),  # a release token beats an rc token
    ("1.0-2", "1.0-1"),
    ("2.0-beta3", "2.0-beta2"),
    ("beta", "alpha"),
    ("b", "B"),  # code points: lower case sorts after upper case
    ("a10b", "a9b"),
    ("a1b", "a1"),  # run-list prefix loses to the longer one
    ("1", ""),
    ("3", "2.9.9"),
    ("1" + "0" * 5000, "9" * 4999),  # more digits than int() accepts
]


@pytest.mark.parametrize(("newer", "older", "rule"), REFERENCE_TABLE)
def test_reference_table(newer, older, rule):
    assert compare(newer, older) == 1, rule
    assert compare(older, newer) == -1, rule


@pytest.mark.parametrize(("newer", "older"), MORE_ORDERED_PAIRS)
def test_ordered_pairs(newer, older):
    assert compare(newer, older) == 1
    assert compare(older, newer) == -1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.2", "1.2"),
        ("1.01", "1.1"),
        ("007", "7"),
        ("rc01", "rc1"),
        ("", ""),
        ("0" * 6000 + "5", "5"),
    ],
)
def test_equal_in_the_order(a, b):
    assert compare(a, b) == 0
    assert compare(b, a) == 0


def test_sign_is_the_conventional_one():
    """compare(newer, older) > 0, unlike vmcatcher's split_numeric_sort (-1 there)."""
    assert compare("2", "1") > 0
    assert sorted(["1.10", "1.9", "1.2"], key=version_key) == ["1.2", "1.9", "1.10"]


def test_equal_numeric_tokens_do_not_end_the_comparison():
    # vmcatcher returns "equal" at the first pair of numerically equal tokens
    # ("01.1" == "1.2"), which breaks transitivity; vmtrust goes on.
    assert compare("01.2", "1.1") == 1
    assert compare("01.1", "1.2") == -1


def test_appdb_versions_sort_chronologically():
    stamps = ["20150618211400", "20141231235959", "20150618211399", "20160101000000"]
    assert sorted(stamps, key=version_key) == sorted(stamps)


@pytest.mark.parametrize("digit", ["²", "٣", "३", "１"])
def test_only_ascii_digits_are_numeric(digit):
    """Unicode digits are plain characters (vmcatcher: [0-9]); no crash, no int()."""
    assert compare(digit, "1") == -1  # a numeric token beats a non-numeric one
    assert compare("1" + digit, "1") == -1  # "1²" is one non-numeric token: loses to "1"
    assert compare(digit, digit) == 0


def test_huge_numeric_tokens_compare_without_int():
    huge = "9" * 100_000
    assert compare(huge, huge[:-1]) == 1
    assert compare(f"1.{huge}", f"1.{huge}") == 0
    assert compare(f"rc{huge}", f"rc{huge[:-1]}") == 1


# --- ordering laws (hypothesis) -----------------------------------------------------


@given(versions)
def test_reflexive(a):
    assert compare(a, a) == 0


@given(versions, versions)
def test_antisymmetric(a, b):
    assert compare(a, b) == -compare(b, a)
    assert compare(a, b) in (-1, 0, 1)


@given(versions, versions, versions)
def test_transitive(a, b, c):
    if compare(a, b) >= 0 and compare(b, c) >= 0:
        assert compare(a, c) >= 0
    if compare(a, b) == 0 and compare(b, c) == 0:
        assert compare(a, c) == 0


@given(st.lists(versions, max_size=8))
def test_sorted_is_consistent_with_compare(items):
    ordered = sorted(items, key=version_key)
    for i, earlier in enumerate(ordered):
        for later in ordered[i + 1 :]:
            assert compare(earlier, later) <= 0
    by_model = sorted(items, key=model_key)
    assert all(compare(x, y) == 0 for x, y in zip(ordered, by_model, strict=True))


@given(versions, versions)
def test_agrees_with_the_model_of_the_reference_rules(a, b):
    assert compare(a, b) == model_compare(a, b)


@given(any_text, any_text)
def test_any_text_compares_without_error(a, b):
    """hv:version is endorser-controlled: the rollback check must never crash."""
    assert compare(a, b) == -compare(b, a)


# --- bump ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("3", "4"),
        ("1.2.9", "1.2.10"),
        ("rc1", "rc2"),
        ("0009", "0010"),
        ("abc", "abc.1"),
        ("", "1"),
        ("9", "10"),
        ("99", "100"),
        ("0099", "0100"),
        ("1.2-rc9", "1.2-rc10"),
        ("2.0-beta", "2.1-beta"),
        ("20150618211400", "20150618211401"),
        ("20150618211399", "20150618211400"),
        ("v1.0a", "v1.1a"),
        ("٣", "٣.1"),  # no ASCII digit to bump
    ],
)
def test_bump(before, after):
    assert bump(before) == after


def test_bump_beyond_the_int_limit():
    assert bump("9" * 5000) == "1" + "0" * 5000
    assert bump("1." + "0" * 5000) == "1." + "0" * 4999 + "1"


@given(versions)
def test_bump_is_newer(version):
    assert compare(bump(version), version) == 1


@given(any_text)
def test_bump_of_any_text_is_newer(version):
    assert compare(bump(version), version) == 1


@given(versions)
def test_bump_changes_only_the_last_digit_run(version):
    bumped = bump(version)
    runs = list(re.finditer(r"[0-9]+", version))
    if not runs:
        assert bumped == (f"{version}.1" if version else "1")
        return
    last = runs[-1]
    assert bumped.startswith(version[: last.start()])
    assert bumped.endswith(version[last.end() :])
    middle = bumped[last.start() : len(bumped) - (len(version) - last.end())]
    assert int(middle) == int(last.group()) + 1
    assert len(middle) >= len(last.group())

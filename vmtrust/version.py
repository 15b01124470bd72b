"""The split-numeric version order of ``hv:version``, as vmcatcher and vmcaster use it.

Endorsers publish versions such as ``1.10``, ``0.0.2``, ``20150618211400`` or
``rc2``.  Rollback protection needs the same order the reference subscriber
used, otherwise a site would refuse (or accept) lists that vmcatcher sites
accept (or refuse).  The rules, from vmcatcher's ``stringsort.py``:

1. split on ``-`` ``,`` ``.`` ``/`` keeping the delimiters as tokens;
2. two all-digit tokens compare as integers;
3. an all-digit token is greater than a non-numeric one;
4. two non-numeric tokens are split into digit / non-digit runs compared with
   the same rules, non-digit runs by code point;
5. when one sequence is a prefix of the other, the longer is greater.

Unlike vmcatcher's ``split_numeric_sort`` (which returns -1 when a > b) this
module returns the conventional sign: ``compare(a, b) > 0`` means a is newer.
"""

from __future__ import annotations

import functools
import re

_DELIMITED = re.compile(r"([-,./])")
_RUNS = re.compile(r"(\d+)")


def _tokens(version: str) -> list[str]:
    return [t for t in _DELIMITED.split(version) if t != ""]


def _compare_atoms(a: str, b: str) -> int:
    """Compare two runs that are each all-digit or all-non-digit."""
    a_num, b_num = a.isdigit(), b.isdigit()
    if a_num and b_num:
        return (int(a) > int(b)) - (int(a) < int(b))
    if a_num != b_num:
        return 1 if a_num else -1
    return (a > b) - (a < b)


def _compare_sequences(a: list[str], b: list[str], atom) -> int:
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        result = atom(x, y)
        if result:
            return result
    return (len(a) > len(b)) - (len(a) < len(b))


def _compare_tokens(a: str, b: str) -> int:
    a_num, b_num = a.isdigit(), b.isdigit()
    if a_num or b_num:
        return _compare_atoms(a, b)
    a_runs = [r for r in _RUNS.split(a) if r]
    b_runs = [r for r in _RUNS.split(b) if r]
    return _compare_sequences(a_runs, b_runs, _compare_atoms)


def compare(a: str, b: str) -> int:
    """Return 1 if ``a`` is newer than ``b``, -1 if older, 0 if equal in this order.

    Note that distinct strings can compare equal (``1.01`` and ``1.1``): the
    order is a total preorder, as in vmcatcher.
    """
    return _compare_sequences(_tokens(a), _tokens(b), _compare_tokens)


#: Use as ``sorted(versions, key=version_key)``.
version_key = functools.cmp_to_key(compare)


def bump(version: str) -> str:
    """Next version for an endorser: the last numeric run + 1, as vmcaster does.

    ``"3"`` → ``"4"``, ``"1.2.9"`` → ``"1.2.10"``, ``"rc1"`` → ``"rc2"``; a
    version with no digits gets ``".1"`` appended.  Leading zeros keep their
    width (``"0009"`` → ``"0010"``) so that date-like versions stay date-like.
    """
    matches = list(re.finditer(r"\d+", version))
    if not matches:
        return f"{version}.1" if version else "1"
    last = matches[-1]
    digits = last.group()
    bumped = str(int(digits) + 1).zfill(len(digits))
    return version[: last.start()] + bumped + version[last.end() :]

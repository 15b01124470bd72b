"""Helpers shared by the verification tests."""

from __future__ import annotations

import pytest

from vmtrust.verify import Policy, verify_signed_list


def verify(data, trust, **policy):
    return verify_signed_list(data, Policy(trust=trust, **policy))


def refused(exc, fragment, data, trust, **policy):
    with pytest.raises(exc) as info:
        verify(data, trust, **policy)
    assert fragment in str(info.value)
    return info.value

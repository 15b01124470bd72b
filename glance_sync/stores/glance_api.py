"""The small pieces of Glance's REST API every part of the Glance store shares.

The error every Glance failure becomes (one line naming the call and the
status), Glance's own explanation pulled out of an error reply, and the JSON
patch that changes only what differs.
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["PATCH_TYPE", "reason", "set_ops", "short"]

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def set_ops(image: dict[str, Any], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations that give ``image`` the ``wanted`` values (only the changes)."""
    ops = []
    for key, value in wanted.items():
        if image.get(key) == value:
            continue
        ops.append({"op": "replace" if key in image else "add", "path": f"/{key}", "value": value})
    return ops


def short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def reason(reply: Any) -> str:
    """Glance's explanation from an error reply, on one line."""
    text = ""
    try:
        body = reply.json()
        if isinstance(body, dict):
            inner = next(iter(body.values()), body) if len(body) == 1 else body
            text = str(inner.get("message") or inner.get("title") or "") if isinstance(
                inner, dict) else ""  # fmt: skip
    except ValueError:
        lines = [line.strip() for line in reply.text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return " ".join(text.split())[:200] or reply.reason or ""

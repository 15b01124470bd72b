"""The small pieces of Glance's REST API every part of the Glance store shares.

:class:`GlanceRest`: one request, or a listing page by page, through openstacksdk's
image adapter, every failure one :class:`GlanceError` line naming the call and
the status; Glance's own explanation pulled out of an error reply; and the JSON
patch that changes only what differs.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from typing import Any

from vmtrust.errors import GlanceError

__all__ = ["PAGE", "PATCH_TYPE", "GlanceRest", "reason", "set_ops", "short"]

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
PAGE = 1000  # Glance's default api_limit_max


class GlanceRest:
    """Plain REST calls to Glance through openstacksdk's image adapter, statuses checked."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self.calls = 0  #: Glance API requests made (the no-op benchmark counts them)

    def adapter(self, conn: Any = None) -> Any:
        """The image adapter of ``conn`` (default: the sync's connection).

        openstacksdk makes a connection's service proxy on first use, with endpoint
        discovery that rewrites the connection's shared configuration, and without a
        lock: two threads making it at once can send one of them to a wrong URL
        ("Unable to find a version discovery document at …/v2/").  Once made, the
        proxy is a keystoneauth adapter, which (like the token renewal behind it,
        locked in keystoneauth) serves many threads — openstacksdk's own
        ``project_cleanup`` makes its proxies first and then uses them from a thread
        pool.  So the look-up happens under this store's lock, once per connection.
        """
        with self._lock:
            self.calls += 1  # counted here too: ``+=`` is not atomic across threads
            return (conn or self.conn).image

    def call(self, method: str, url: str, ok: tuple[int, ...], conn: Any = None, **kw: Any) -> Any:
        """One request to Glance; any failure becomes one :class:`GlanceError` line."""
        from keystoneauth1 import exceptions as ks_exc

        # JSON errors carry Glance's explanation; its HTML pages hide it in markup.
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        try:
            adapter = self.adapter(conn)  # endpoint discovery happens here, once
            reply = adapter.request(url, method, raise_exc=False, headers=headers, **kw)
        except ks_exc.ConnectFailure as exc:
            text = short(exc)
            if "aborted" in text or "RemoteDisconnected" in text or "reset" in text:
                raise GlanceError(f"glance {method} {url}: connection lost ({text})") from None
            raise GlanceError(f"glance {method} {url}: cannot connect ({text})") from None
        except ks_exc.ConnectTimeout:
            raise GlanceError(f"glance {method} {url}: connection timed out") from None
        except ks_exc.RequestTimeout:
            raise GlanceError(f"glance {method} {url}: no answer in time") from None
        except ks_exc.DiscoveryFailure as exc:
            raise GlanceError(
                f"glance {method} {url}: cannot connect, or no Glance API there ({short(exc)})"
            ) from None
        except ks_exc.ClientException as exc:  # authentication, catalogue
            raise GlanceError(f"glance {method} {url}: {short(exc)}") from None
        if reply.status_code not in ok:
            raise GlanceError(
                f"glance {method} {url}: HTTP {reply.status_code} {reason(reply)}",
                reply.status_code,
            ) from None
        return reply

    def pages(self, params: dict[str, Any], conn: Any = None) -> Iterator[dict[str, Any]]:
        """Every image of a listing with ``params``, page by page."""
        url = "/images"
        query: dict[str, Any] | None = {**params, "limit": PAGE}  # then "next" carries it
        while url:
            body = self.call("GET", url, (200,), conn, params=query).json()
            yield from body.get("images", [])
            url, query = body.get("next", ""), None
            if url:
                url = url.removeprefix("/v2")


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

"""HTTP for lists and images: only http(s), checked redirects, a total deadline.

Everything the sync fetches comes from servers the site does not control, so
the transport itself must hold against them:

* **Only http and https**, with a host name that can be resolved as written
  (:func:`check_url`): a ``file:``, ``ftp:`` or malformed URL is one clear
  error, never a library exception.
* **Redirects are followed here, not by requests** (:func:`get`): each target
  is checked like the first URL, never from https down to http, at most
  ``max_redirects`` of them, and the subscription's credentials go only to
  the origin they were configured for.
* **A total deadline** (:class:`Deadline`) per list fetch and per image
  download, retries and resumes included.  Per-read timeouts cannot stop a
  server that sends one byte every few seconds; the deadline can: when the
  time is up a watchdog shuts down every socket the fetch opened (see
  :func:`make_session`), so whatever read is blocked returns at once and the
  caller reports the deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

from vmtrust import __version__
from vmtrust.errors import DeadlineExceeded, HttpError
from vmtrust.safetext import redact
from vmtrust.urls import url_problem

__all__ = [
    "USER_AGENT",
    "Deadline",
    "HttpSettings",
    "check_url",
    "follow",
    "get",
    "make_session",
    "short",
]

USER_AGENT = f"vmtrust/{__version__}"


@dataclass(frozen=True)
class HttpSettings:
    timeout: float = 30.0  #: seconds to connect and between bytes
    retries: int = 5  #: reconnections after a broken image transfer
    backoff: float = 1.0  #: first back-off in seconds, doubled each retry
    verify: bool | str = True  #: TLS: True, or a CA bundle / directory path
    max_redirects: int = 5  #: redirects followed per request
    list_retries: int = 2  #: new attempts after a list fetch failed transiently
    list_deadline: float = 60.0  #: seconds for a whole list fetch, retries included
    image_deadline: float = 300.0  #: seconds every image download gets, plus its size at…
    min_rate: int = 512 * 1024  #: …this many bytes per second

    def image_deadline_for(self, size: int) -> float:
        """The total time an image of ``size`` bytes may take to download."""
        return self.image_deadline + size / self.min_rate


# --- URLs ----------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` when the sync may fetch it (http or https, a usable host); else HttpError.

    The message names the URL without its user information.
    """
    problem = url_problem(url)
    if problem:
        raise HttpError(f"{redact(url)}: {problem}")
    return url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or ""), parts.port


def follow(current: str, location: str | None) -> str:
    """The URL a redirect from ``current`` to ``location`` leads to, if it may be followed."""
    if not location or not location.strip():
        raise HttpError(f"{redact(current)}: redirect without a Location")
    try:
        target = urljoin(current, location.strip())
    except ValueError as exc:
        raise HttpError(
            f"{redact(current)}: malformed redirect to {redact(location)!r} ({exc})"
        ) from None
    try:
        check_url(target)
    except HttpError as exc:
        raise HttpError(f"{redact(current)}: redirect refused: {exc}") from None
    if urlsplit(current).scheme == "https" and urlsplit(target).scheme == "http":
        raise HttpError(
            f"{redact(current)}: redirect from https to http ({redact(target)}) refused"
        )
    return target


# --- the deadline ------------------------------------------------------------------------

_current = threading.local()  #: the deadline of the request this thread is making


class Deadline:
    """A total time limit on one fetch: connecting, headers, body, retries.

    Make one per list fetch or image download and :meth:`close` it at the end.
    Requests made inside :meth:`active` through a session of
    :func:`make_session` hand their connections to it; when the time is up a
    watchdog thread shuts them down, which wakes any read blocked on them.  A
    connection belongs to the deadline of the request that uses it last: one
    another fetch reuses from the pool is no longer this deadline's to stop.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: dict[object, socket.socket] = {}  #: connection → our descriptor
        self._fired = False
        self._closed = False
        # hv:size may claim exabytes: never more than a timer can wait
        self._timer = threading.Timer(min(max(seconds, 0.0), threading.TIMEOUT_MAX), self._fire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def timeout(self, per_read: float) -> float:
        """The timeout for one connect or read: never beyond the deadline."""
        return max(0.01, min(per_read, self.remaining()))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Connections opened or reused by requests made inside belong to this deadline."""
        previous = getattr(_current, "deadline", None)
        _current.deadline = self
        try:
            yield
        finally:
            _current.deadline = previous

    def watch(self, connection: object, sock: socket.socket) -> None:
        # Our own descriptor of the same socket: shutting it down stops the connection
        # (also once TLS took the original over), and it can never name another file.
        try:
            own = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return
        with self._lock:
            if self._closed:
                own.close()
                return
            previous = self._watched.pop(connection, None)
            self._watched[connection] = own
            if self._fired:
                _shut(own)
        if previous is not None:
            previous.close()

    def release(self, connection: object) -> None:
        """``connection`` serves another fetch now: never stop it for this one."""
        with self._lock:
            own = self._watched.pop(connection, None)
        if own is not None:
            own.close()

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            for own in self._watched.values():
                _shut(own)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            watched, self._watched = self._watched, {}
        for own in watched.values():
            own.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """urllib3 connection mix-in: hand the connection to the current thread's deadline.

    ``_new_conn`` is where urllib3 makes the TCP socket, before any TLS
    handshake (a server can drip that too); ``request`` covers a connection
    reused from the pool, taking it from the deadline that used it before.
    """

    sock: Any
    _vmtrust_deadline: Deadline | None = None

    def _vmtrust_claim(self, sock: socket.socket | None) -> None:
        deadline = getattr(_current, "deadline", None)
        if self._vmtrust_deadline is not None and self._vmtrust_deadline is not deadline:
            self._vmtrust_deadline.release(self)
        self._vmtrust_deadline = deadline
        if deadline is not None and sock is not None:
            deadline.watch(self, sock)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]  # a mixin: HTTPConnection's
        self._vmtrust_claim(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._vmtrust_claim(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]  # HTTPConnection's


class _Connection(_Watched, HTTPConnection):
    pass


class _TLSConnection(_Watched, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is ProxyManager:  # SOCKS proxies bring connection classes of their own
            manager.pool_classes_by_scheme = _POOLS
        return manager


class _Session(requests.Session):
    def get_redirect_target(self, resp: requests.Response) -> None:
        """Never: :func:`get` follows redirects itself.

        requests parses a redirect's Location even when told not to follow it (for
        ``Response.next``), and a malformed one raises from there.
        """
        return None


def make_session() -> requests.Session:
    """A requests session whose sockets obey :class:`Deadline`; redirects are :func:`get`'s."""
    session = _Session()
    adapter = _Adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


# --- one GET ---------------------------------------------------------------------------------


def get(
    session: requests.Session,  # from make_session()
    url: str,
    *,
    settings: HttpSettings,
    deadline: Deadline,
    verify: bool | str,
    auth: tuple[str, str] | requests.auth.AuthBase | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> requests.Response:
    """A streamed GET of ``url``, redirects followed by the rules above.

    Raises HttpError for a refused URL or redirect, requests' exceptions for
    transport failures (the caller decides what to retry), and
    DeadlineExceeded when no time is left.  ``auth`` (a password, or a
    registry's bearer token) goes only to the origin of ``url``; ``params``
    only with the first request.
    """
    check_url(url)
    origin = _origin(url)
    for _ in range(settings.max_redirects + 1):
        if deadline.expired:
            raise DeadlineExceeded(f"{redact(url)}: deadline of {deadline.seconds:g} s passed")
        with deadline.active():
            response = session.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=deadline.timeout(settings.timeout),
                verify=verify,
                auth=auth if _origin(url) == origin else None,
                headers=headers,
                params=params,
            )
        params = None  # a redirect's Location is the whole next URL
        if not response.is_redirect:
            return response
        location = response.headers.get("Location")
        response.close()
        url = follow(url, location)
    raise HttpError(f"{redact(url)}: more than {settings.max_redirects} redirects")


_POOL_PREFIX = re.compile(r"^\W*\w*Pool\(host=[^)]*\): ")


def short(exc: BaseException) -> str:
    """The useful end of a requests/urllib3 message (they nest their causes)."""
    text = str(exc)
    for marker in ("Caused by ", "] "):
        if marker in text:
            text = text.split(marker)[-1]
    text = _POOL_PREFIX.sub("", text).strip("'\" ")
    if text.startswith(("('", '("')):  # the repr of an argument tuple: its first argument
        text = text[2:].split(text[1] + ", ", 1)[0]
    # the closing quotes and parentheses of the exceptions it was nested in
    while text[-1:] in ("'", '"') or (text[-1:] == ")" and text.count(")") > text.count("(")):
        text = text[:-1]
    return redact(text[:200])

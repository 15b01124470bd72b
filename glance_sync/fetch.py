"""Fetching signed lists: HTTP(S) with TLS verification, credentials, limits and a deadline.

Unlike vmcatcher (which accepted any server certificate), HTTPS servers are
verified — against the system CAs or the subscription's ``tls_ca`` — because a
signature cannot stop the replay of an older, unexpired list; an authenticated
channel can.  Credentials come from files or environment variables and are
never logged.  Transient failures (connection errors, timeouts, HTTP 5xx/429)
are retried ``list_retries`` times with exponential back-off; a definite
answer (404, 401, a refused redirect, a TLS failure) is not.  The whole fetch,
retries included, ends at ``list_deadline`` (:class:`~glance_sync.httpclient.Deadline`):
a dead or dripping endorser costs its own subscription that long, and the
sync fetches lists concurrently, so it delays no other.
"""

from __future__ import annotations

import time
from urllib.parse import unquote, urlparse

import requests

from glance_sync.httpclient import USER_AGENT, Deadline, HttpSettings, get, short
from vmtrust.errors import DeadlineExceeded, FetchError, HttpError
from vmtrust.policy import Subscription
from vmtrust.safetext import redact

__all__ = ["USER_AGENT", "FetchError", "fetch_list"]


class _Transient(Exception):
    pass


#: Transport failures worth another attempt.
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


def _read_limited(response: requests.Response, limit: int, url: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"{url}: larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(url: str, limit: int) -> bytes:
    """A ``file:`` subscription: the site's own list on its own disk."""
    path = unquote(urlparse(url).path)
    try:
        with open(path, "rb") as stream:
            data = stream.read(limit + 1)
    except OSError as exc:
        raise FetchError(f"{url}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FetchError(f"{url}: larger than the limit of {limit} bytes")
    return data


def fetch_list(
    subscription: Subscription, session: requests.Session, settings: HttpSettings, limit: int
) -> bytes:
    """The raw signed bytes of the subscription's list, or FetchError naming the problem."""
    url = subscription.url
    if url.startswith("file:"):
        return _read_file(url, limit)
    shown = redact(url)
    auth = subscription.credentials.basic_auth()
    verify: bool | str = subscription.tls_ca or settings.verify
    deadline = Deadline(settings.list_deadline)

    def attempt() -> bytes:
        try:
            with get(
                session,
                url,
                settings=settings,
                deadline=deadline,
                verify=verify,
                auth=auth,
                headers={"User-Agent": USER_AGENT},
            ) as response:
                status = response.status_code
                if status in (408, 429) or status >= 500:
                    raise _Transient(f"HTTP {status} {response.reason}")
                if status >= 400:
                    hint = " (check the subscription's credentials)" if status in (401, 403) else ""
                    raise FetchError(f"{shown}: HTTP {status} {response.reason}{hint}")
                data = _read_limited(response, limit, shown)
        except DeadlineExceeded as exc:
            raise _Transient(str(exc)) from None
        except HttpError as exc:
            raise FetchError(str(exc)) from None
        except requests.exceptions.SSLError as exc:
            if deadline.expired:  # the watchdog cut the handshake
                raise _Transient(short(exc)) from None
            raise FetchError(f"{shown}: TLS verification failed ({short(exc)})") from None
        except _TRANSIENT as exc:
            raise _Transient(short(exc)) from None
        except requests.RequestException as exc:
            raise FetchError(f"{shown}: {type(exc).__name__}: {short(exc)}") from None
        if deadline.expired:  # the watchdog may have cut a body that had no length
            raise _Transient("cut at the deadline")
        return data

    try:
        tries = 0
        while True:
            try:
                return attempt()
            except _Transient as exc:
                tries += 1
                delay = settings.backoff * 2 ** (tries - 1)
                if deadline.expired or (
                    tries <= settings.list_retries and delay >= deadline.remaining()
                ):
                    raise FetchError(
                        f"{shown}: no complete answer within the deadline of "
                        f"{settings.list_deadline:g} s ([sync] list_deadline; last: {exc})"
                    ) from None
                if tries > settings.list_retries:
                    raise FetchError(
                        f"{shown}: unreachable after {tries} attempt{'s' if tries > 1 else ''} "
                        f"({exc})"
                    ) from None
                time.sleep(delay)
    finally:
        deadline.close()

"""Fetching signed lists: HTTP(S) with TLS verification, credentials, limits and retries.

Unlike vmcatcher (which accepted any server certificate), HTTPS servers are
verified — against the system CAs or the subscription's ``tls_ca`` — because a
signature cannot stop the replay of an older, unexpired list; an authenticated
channel can.  Credentials come from files or environment variables and are
never logged.  Transient failures (connection errors, timeouts, HTTP 5xx/429)
are retried with exponential back-off (tenacity); a definite answer (404,
401) is not.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import requests
from tenacity import (
    RetryError,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from glance_sync.download import HttpSettings
from vmtrust import __version__
from vmtrust.errors import VmtrustError
from vmtrust.policy import Subscription

USER_AGENT = f"vmtrust/{__version__}"


class FetchError(VmtrustError):
    exit_code = 10
    rule = "fetch"


class _Transient(Exception):
    pass


def _read_limited(response: requests.Response, limit: int, url: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"{url}: larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch_list(
    subscription: Subscription, session: requests.Session, settings: HttpSettings, limit: int
) -> bytes:
    """The raw signed bytes of the subscription's list, or FetchError naming the problem."""
    url = subscription.url
    if url.startswith("file:"):
        path = unquote(urlparse(url).path)
        try:
            with open(path, "rb") as stream:
                data = stream.read(limit + 1)
        except OSError as exc:
            raise FetchError(f"{url}: {exc.strerror or exc}") from None
        if len(data) > limit:
            raise FetchError(f"{url}: larger than the limit of {limit} bytes")
        return data

    auth = subscription.credentials.basic_auth()
    verify: bool | str = subscription.tls_ca or settings.verify

    @retry(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(settings.retries + 1),
        wait=wait_exponential(multiplier=settings.backoff, max=60),
        reraise=False,
    )
    def attempt() -> bytes:
        try:
            with session.get(
                url,
                auth=auth,
                timeout=settings.timeout,
                verify=verify,
                stream=True,
                headers={"User-Agent": USER_AGENT},
            ) as response:
                if response.status_code in (408, 429) or response.status_code >= 500:
                    raise _Transient(f"HTTP {response.status_code} {response.reason}")
                if response.status_code >= 400:
                    hint = (
                        " (check the subscription's credentials)"
                        if (response.status_code in (401, 403))
                        else ""
                    )
                    raise FetchError(f"{url}: HTTP {response.status_code} {response.reason}{hint}")
                return _read_limited(response, limit, url)
        except requests.exceptions.SSLError as exc:
            raise FetchError(f"{url}: TLS verification failed ({_short(exc)})") from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise _Transient(_short(exc)) from None

    try:
        return attempt()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise FetchError(
            f"{url}: unreachable after {settings.retries + 1} attempts ({last})"
        ) from None


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Caused by ", "] "):
        if marker in text:
            text = text.split(marker)[-1]
    return text.strip("()'\" ")[:200]

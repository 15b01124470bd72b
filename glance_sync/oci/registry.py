"""A client of the OCI distribution API that holds against the registry it talks to.

One :class:`Registry` per OCI subscription and pass, shared by the listing (on
a list worker) and the downloads (on image workers).  Every request follows
:mod:`glance_sync.httpclient`'s rules — http(s) only, redirects checked and
followed by vmtrust (a blob may redirect to storage), a total deadline on the
sockets — and:

* **Authentication** as registries ask for it: the first request goes without
  credentials; a ``401`` names the scheme.  ``Basic`` gets the subscription's
  username and password; ``Bearer`` sends them to the token service named in
  the challenge — only when that service is on the registry's own host (a
  registry cannot collect the site's password by naming another realm) — and
  uses the token it returns, per repository scope.  Tokens and passwords go
  only to the registry's origin, never along a redirect to storage.
* **Transient failures** (connection refused or reset, timeouts, HTTP 5xx, 408,
  429) are retried ``list_retries`` times with back-off, within the deadline;
  a definite answer (401, 403, 404) is not.  404 is :class:`RegistryNotFound`, which
  callers tell apart: a repository that does not exist is a failure of the
  subscription (its images are kept), never "no images".
* **Bounded answers**: manifests 4 MiB, tag lists and API pages the list size
  limit, signature payloads 64 KiB; a manifest's or blob's bytes must hash to
  the digest they were asked for.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests

from glance_sync.httpclient import Deadline, HttpSettings, check_url, get, short
from glance_sync.oci.manifest import ACCEPT, MAX_MANIFEST, Descriptor, parse_index
from vmtrust import jsonsafe
from vmtrust.errors import (
    DeadlineExceeded,
    HttpError,
    ListFormatError,
    RegistryError,
    RegistryNotFound,
)
from vmtrust.ociref import is_digest, registry_base
from vmtrust.policy import Credentials

__all__ = ["MAX_PAGES", "MAX_TOKEN_ANSWER", "PAGE", "BearerToken", "Registry", "repository_scope"]

#: Tag lists and API pages asked for at once, and followed at most.
PAGE = 1000
MAX_PAGES = 1000
MAX_TOKEN_ANSWER = 64 * 1024
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
_LINK = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?")


class _Transient(Exception):
    pass


class BearerToken(requests.auth.AuthBase):
    """A registry token, sent as ``Authorization: Bearer``."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Bearer realm="…",service="…"`` → ("bearer", {realm, service})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def repository_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


class Registry:
    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials,
        verify: bool | str,
        session: requests.Session,
        settings: HttpSettings,
        max_bytes: int,
    ) -> None:
        self.base, self.host = registry_base(url)
        self.credentials = credentials
        self.verify = verify
        self.session = session
        self.settings = settings
        self.max_bytes = max_bytes  #: largest tag list or API page read
        self._lock = threading.Lock()
        self._auth: dict[str, Any] = {}  #: scope → what authorised it last
        self.requests = 0  #: HTTP requests made (tests and the benchmark read it)

    def deadline(self) -> Deadline:
        """A deadline for one exchange outside a listing (a manifest before a download)."""
        return Deadline(self.settings.list_deadline)

    # --- authentication ------------------------------------------------------------

    def authorise(self, scope: str, auth: Any) -> None:
        """Send ``auth`` with every request in ``scope`` from the first one on (an API that
        answers 401 without a challenge, like Harbor's)."""
        with self._lock:
            self._auth[scope] = auth

    def auth(self, scope: str) -> Any:
        """What authorises requests in ``scope`` now (None: anonymous so far)."""
        with self._lock:
            return self._auth.get(scope)

    def _basic(self) -> tuple[str, str] | None:
        return self.credentials.basic_auth()

    def _authorise(self, header: str, scope: str, deadline: Deadline) -> Any:
        scheme, params = _challenge(header)
        if scheme == "basic":
            basic = self._basic()
            if basic is None:
                raise RegistryError(
                    f"registry {self.base}: asks for credentials (give the subscription "
                    "credentials:)"
                )
            return basic
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryError(f"registry {self.base}: unsupported authentication {header[:80]!r}")
        return BearerToken(self._token(params, scope, deadline))

    def _token(self, params: dict[str, str], scope: str, deadline: Deadline) -> str:
        realm = params["realm"]
        try:
            check_url(realm)
        except HttpError as exc:
            raise RegistryError(f"registry {self.base}: token service refused: {exc}") from None
        # Harbor's realm is the registry's own /service/token; another port of the same
        # host is the same machine's.  Another host never gets the site's password.
        same_host = urlsplit(realm).hostname == urlsplit(self.base).hostname
        if urlsplit(self.base).scheme == "https" and urlsplit(realm).scheme != "https":
            raise RegistryError(f"registry {self.base}: token service {realm} is not https")
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        basic = self._basic() if same_host else None
        response = self._exchange(realm, deadline, auth=basic, params=query)
        with response:
            if response.status_code in (401, 403):
                raise RegistryError(
                    f"registry {self.base}: token service {realm}: HTTP {response.status_code} "
                    + (
                        "(check the subscription's credentials)"
                        if basic
                        else "(credentials go only to a token service on the registry's host)"
                    )
                )
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.base}: token service {realm}: HTTP {response.status_code}"
                )
            body = self.read_json(response, MAX_TOKEN_ANSWER, f"token service {realm}")
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or "\n" in token:
            raise RegistryError(f"registry {self.base}: token service {realm}: no token")
        return token

    # --- one request --------------------------------------------------------------------

    def _exchange(
        self,
        url: str,
        deadline: Deadline,
        *,
        auth: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """A GET with retries for transient failures, within ``deadline``."""
        tries = 0
        while True:
            try:
                self.requests += 1
                response = get(
                    self.session,
                    url,
                    settings=self.settings,
                    deadline=deadline,
                    verify=self.verify,
                    auth=auth,
                    headers=headers,
                    params=params,
                )
                if response.status_code in (408, 429) or response.status_code >= 500:
                    response.close()
                    raise _Transient(f"HTTP {response.status_code} {response.reason}")
                return response
            except DeadlineExceeded as exc:
                raise RegistryError(f"registry {self.base}: {exc}") from None
            except HttpError as exc:
                raise RegistryError(f"registry {self.base}: {exc}") from None
            except requests.exceptions.SSLError as exc:
                if deadline.expired:
                    raise RegistryError(f"registry {self.base}: deadline passed") from None
                raise RegistryError(
                    f"registry {self.base}: TLS verification failed ({short(exc)})"
                ) from None
            except (*_TRANSIENT, _Transient) as exc:
                why = short(exc) if not isinstance(exc, _Transient) else str(exc)
                tries += 1
                delay = self.settings.backoff * 2 ** (tries - 1)
                if tries > self.settings.list_retries or delay >= deadline.remaining():
                    raise RegistryError(
                        f"registry {self.base}: unreachable after {tries} attempt"
                        f"{'s' if tries > 1 else ''} ({why})"
                    ) from None
                time.sleep(delay)
            except requests.RequestException as exc:
                raise RegistryError(
                    f"registry {self.base}: {type(exc).__name__}: {short(exc)}"
                ) from None

    def request(
        self,
        path: str,
        deadline: Deadline,
        *,
        scope: str,
        accept: str | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """GET ``path`` on the registry, authenticating as it asks; a status < 400 or an error."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = {"Accept": accept} if accept else None
        auth = self.auth(scope)
        for attempt in range(2):
            response = self._exchange(url, deadline, auth=auth, headers=headers, params=params)
            header = response.headers.get("WWW-Authenticate", "")
            if response.status_code != 401 or attempt == 1 or not header:
                break
            response.close()
            auth = self._authorise(header, scope, deadline)
            with self._lock:
                self._auth[scope] = auth
        if response.status_code < 400:
            return response
        with response:
            status, reason = response.status_code, response.reason
            detail = self._error_code(response)
        where = f"registry {self.base}: {urlsplit(url).path}"
        if status == 404:
            raise RegistryNotFound(f"{where}: not found{detail}")
        if status in (401, 403):
            raise RegistryError(
                f"{where}: HTTP {status} {reason}{detail} (check the subscription's credentials)"
            )
        raise RegistryError(f"{where}: HTTP {status} {reason}{detail}")

    @staticmethod
    def _error_code(response: requests.Response) -> str:
        """`` (NAME_UNKNOWN)`` from the spec's error body, when there is one."""
        try:
            body = jsonsafe.loads(
                response.raw.read(16 * 1024 + 1), what="error", max_bytes=16 * 1024
            )
            code = body["errors"][0]["code"]
        except Exception:
            return ""
        return f" ({code})" if isinstance(code, str) and code.isupper() and len(code) < 40 else ""

    def read(self, response: requests.Response, limit: int, what: str) -> bytes:
        chunks, size = [], 0
        with response:
            try:
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise RegistryError(
                            f"registry {self.base}: {what}: more than {limit} bytes"
                        )
                    chunks.append(chunk)
            except (requests.RequestException, OSError) as exc:
                raise RegistryError(f"registry {self.base}: {what}: {short(exc)}") from None
        return b"".join(chunks)

    def read_json(self, response: requests.Response, limit: int, what: str) -> Any:
        try:
            return jsonsafe.loads(self.read(response, limit, what), what=what, max_bytes=limit)
        except ListFormatError as exc:
            raise RegistryError(f"registry {self.base}: {exc}") from None

    # --- the API ------------------------------------------------------------------------

    def pages(
        self,
        path: str,
        deadline: Deadline,
        *,
        scope: str,
        key: str | None,
        params: dict[str, str],
    ) -> Iterator[list[Any]]:
        """Each page's ``key`` list (the page itself when None), following
        ``Link: <…>; rel="next"`` on this origin only."""
        url: str | None = self.base + path
        for _ in range(MAX_PAGES):
            assert url is not None
            response = self.request(url, deadline, scope=scope, params=params)
            link = response.headers.get("Link", "")
            body = self.read_json(response, self.max_bytes, urlsplit(url).path)
            items = body if key is None else body.get(key) if isinstance(body, dict) else None
            if items is None:
                items = []
            if not isinstance(items, list):
                raise RegistryError(f"registry {self.base}: {path}: {key} is not a list")
            yield items
            match = _LINK.search(link)
            if not match:
                return
            url = urljoin(self.base + path, match.group(1))
            if urlsplit(url).netloc.lower() != self.host or not url.startswith(self.base):
                raise RegistryError(f"registry {self.base}: {path}: next page on another origin")
            params = {}
        raise RegistryError(f"registry {self.base}: {path}: more than {MAX_PAGES} pages")

    def tags(self, repository: str, deadline: Deadline) -> list[str]:
        """Every tag of ``repository`` (RegistryNotFound if the registry has no such repository)."""
        path = f"/v2/{repository}/tags/list"
        scope = repository_scope(repository)
        result: list[str] = []
        for page in self.pages(path, deadline, scope=scope, key="tags", params={"n": str(PAGE)}):
            result.extend(t for t in page if isinstance(t, str))
        return result

    def catalog(self, deadline: Deadline) -> list[str]:
        """Every repository the registry lists (``/v2/_catalog``)."""
        result: list[str] = []
        for page in self.pages(
            "/v2/_catalog", deadline, scope="registry:catalog:*", key="repositories",
            params={"n": str(PAGE)},
        ):  # fmt: skip
            result.extend(r for r in page if isinstance(r, str))
        return result

    def manifest(
        self, repository: str, reference: str, deadline: Deadline
    ) -> tuple[bytes, str, str]:
        """(bytes, digest, content type) of a manifest by tag or digest.

        The digest is the SHA-256 of the bytes as served; asked for by digest, the
        bytes must hash to it, and a ``Docker-Content-Digest`` header must agree.
        """
        path = f"/v2/{repository}/manifests/{quote(reference, safe=':')}"
        response = self.request(path, deadline, scope=repository_scope(repository), accept=ACCEPT)
        content_type = response.headers.get("Content-Type", "")
        served = response.headers.get("Docker-Content-Digest")
        data = self.read(response, MAX_MANIFEST, f"manifest {repository}:{reference}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if is_digest(reference) and digest != reference:
            raise RegistryError(
                f"registry {self.base}: manifest {repository}@{reference}: the bytes served "
                f"hash to {digest}; refused"
            )
        if served and served != digest:
            raise RegistryError(
                f"registry {self.base}: manifest {repository}:{reference}: "
                f"Docker-Content-Digest {served[:80]} differs from the bytes' {digest}"
            )
        return data, digest, content_type

    def blob_path(self, repository: str, digest: str) -> str:
        return f"/v2/{repository}/blobs/{digest}"

    def blob(self, repository: str, digest: str, limit: int, deadline: Deadline) -> bytes:
        """A small blob (a signature payload), checked against its digest."""
        response = self.request(
            self.blob_path(repository, digest), deadline, scope=repository_scope(repository)
        )
        data = self.read(response, limit, f"blob {digest}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"registry {self.base}: blob {digest}: bytes do not match it")
        return data

    def referrers(
        self, repository: str, digest: str, deadline: Deadline
    ) -> tuple[Descriptor, ...] | None:
        """The OCI 1.1 referrers of ``digest``; None where the registry has no such API."""
        path = f"/v2/{repository}/referrers/{digest}"
        try:
            response = self.request(
                path, deadline, scope=repository_scope(repository), accept=ACCEPT
            )
        except RegistryNotFound:
            return None
        if response.status_code != 200:
            response.close()
            return None
        data = self.read(response, MAX_MANIFEST, f"referrers of {digest}")
        return parse_index(data, f"referrers of {repository}@{digest}")

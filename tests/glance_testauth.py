"""Test-only paste filter for the Glance the test suite starts: a token names the identity.

``X-Auth-Token: test:<user>:<project>:<role,role,...>`` becomes the headers
keystonemiddleware would set (``X-Identity-Status: Confirmed``, ``X-User-Id``,
``X-Project-Id``, ``X-Roles``), which Glance's ``ContextMiddleware`` trusts.
So every request carries a real project and real roles, property protections
and policies apply as in production, and the sync reaches this Glance through
keystoneauth's ordinary ``admin_token`` plugin from a ``clouds.yaml`` — the
same code path a site's token or password would take.  Never use outside tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

_IDENTITY = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_USER_ID", "HTTP_X_PROJECT_ID", "HTTP_X_ROLES")


def filter_factory(global_conf: dict, **local_conf: str) -> Callable[[Any], Any]:
    def wrap(app: Any) -> Callable[..., Iterable[bytes]]:
        def middleware(environ: dict, start_response: Callable) -> Iterable[bytes]:
            for key in _IDENTITY:  # never trust identity headers from the client itself
                environ.pop(key, None)
            token = environ.get("HTTP_X_AUTH_TOKEN", "")
            parts = token.split(":", 3)
            if len(parts) == 4 and parts[0] == "test":
                _, user, project, roles = parts
                environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
                environ["HTTP_X_USER_ID"] = user
                environ["HTTP_X_PROJECT_ID"] = project
                environ["HTTP_X_ROLES"] = roles
            return app(environ, start_response)

        return middleware

    return wrap

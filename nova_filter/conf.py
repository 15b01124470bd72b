"""``[vmtrust]`` options in nova.conf, registered by the filter on nova's own CONF.

keystoneauth's auth, session and adapter options give the filter its own
credentials for the Glance look-up (nova's ``[glance]`` section has none, and
the user's token may not see another project's properties); the rest say
which images count as trusted.  ``oslo-config-generator --namespace
vmtrust.nova`` writes the documented snippet ``etc/nova/nova-vmtrust.conf.sample``.
"""

from __future__ import annotations

from oslo_config import cfg

from vmtrust.conf import keystoneauth_opts

__all__ = ["DEFAULT_TIMEOUT", "GROUP", "filter_opts", "list_opts", "register", "timeout_opt"]

GROUP = "vmtrust"

filter_opts = [
    cfg.ListOpt(
        "trusted_owners",
        default=[],
        help="Project ids whose images may be trusted: the project(s) vmtrust-sync writes "
        "into ([store_glance] project_id). Empty: no image is trusted on worker flavours.",
    ),
    cfg.ListOpt(
        "seal_public_keys",
        default=[],
        help="PEM files of the sites' Ed25519 seal public keys (the .pub that "
        "'vmtrust keygen' wrote next to [trust] seal_key).",
    ),
    cfg.IntOpt(
        "cache_ttl",
        default=60,
        min=0,
        help="Seconds a verified decision per image id is reused (never past the image's "
        "own expiry). It bounds how long a retired image can still be scheduled; 0 "
        "looks every request up in Glance.",
    ),
    cfg.IntOpt(
        "cache_size", default=1024, min=1, help="Image decisions kept in the cache at most."
    ),
    cfg.StrOpt(
        "moves",
        default="allow",
        choices=[
            ("allow", "migrate, evacuate, resize and unshelve pass; untrusted ones log a warning"),
            ("enforce", "moves are filtered like new servers"),
        ],
        help="Moves of existing worker servers. 'allow' keeps a host failure from stranding "
        "servers whose image was revoked after they launched; it applies only to servers that "
        "already were worker servers: a resize onto a worker flavour is filtered as a new "
        "server.",
    ),
    cfg.BoolOpt(
        "aggregate_trusted_only",
        default=False,
        help="Also treat a request as a worker-node one on hosts in an aggregate with "
        "metadata vmtrust_trusted_only=true (for sites that mark hosts, not flavours).",
    ),
    cfg.MultiStrOpt(
        "project_vo",
        default=[],
        help="PROJECT_ID:VO (repeat): the VO each project works for. With require_vo_match, "
        "a worker server boots only an image whose vmtrust_vo is its project's VO.",
    ),
    cfg.BoolOpt(
        "accept_registry_trust",
        default=False,
        help="Let images whose trust record says basis 'registry' (synced from an OCI "
        "registry with trust: registry: the registry's word only, no signature) boot on worker "
        "flavours. Off: only images endorsed by a signed HEPiX list or cosign signature do.",
    ),
    cfg.BoolOpt(
        "require_vo_match",
        default=False,
        help="Refuse worker-node images of another VO than the requesting project's "
        "(projects without a project_vo entry are refused).",
    ),
]


#: keystoneauth's own ``timeout`` has no default (wait for ever); the filter's must have one.
DEFAULT_TIMEOUT = 5.0

timeout_opt = cfg.FloatOpt(
    "timeout",
    default=DEFAULT_TIMEOUT,
    min=0.1,
    help="Seconds the filter waits for Glance per decision, in total: authentication, the "
    "image look-up and any retries together, and also the timeout of each HTTP request. A "
    "Glance that does not answer in time refuses the request (NoValidHost), it never holds "
    "the scheduler.",
)


def _client_opts() -> list[cfg.Opt]:
    """keystoneauth's options, with ``timeout`` given a default (keystoneauth has none)."""
    return [timeout_opt if opt.dest == "timeout" else opt for opt in keystoneauth_opts()]


def register(conf: cfg.ConfigOpts) -> None:
    """Register ``[vmtrust]`` on ``conf`` (idempotent)."""
    group = cfg.OptGroup(GROUP, title="vmtrust trusted-image filter")
    conf.register_group(group)
    conf.register_opts(filter_opts, group=group)
    conf.register_opts(_client_opts(), group=group)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point ``oslo.config.opts`` (namespace ``vmtrust.nova``)."""
    from keystoneauth1 import loading as ks_loading

    return [
        (
            GROUP,
            filter_opts + _client_opts() + ks_loading.get_auth_plugin_conf_options("password"),
        )
    ]

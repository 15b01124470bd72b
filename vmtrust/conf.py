"""Configuration options (oslo.config), registered per group.

``vmtrust.conf`` is read the way every OpenStack service reads its file, and
``oslo-config-generator --namespace vmtrust`` writes the documented sample
``etc/vmtrust/vmtrust.conf.sample`` from :func:`list_opts` (a test keeps the
sample current).  Command-line flags of ``vmtrust`` override these values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection

from oslo_config import cfg

from vmtrust import jsonsafe
from vmtrust.errors import ConfigError

__all__ = [
    "default_opts",
    "endorser_opts",
    "keystoneauth_opts",
    "list_opts",
    "make_conf",
    "store_ec2_opts",
    "store_glance_opts",
    "store_local_opts",
    "sync_opts",
    "trust_opts",
]

trust_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "ca_dir",
        default="/etc/grid-security/certificates",
        help="IGTF-style directory of trusted CAs: <hash>.0 certificates, <hash>.r0 CRLs "
        "(kept current by fetch-crl), <hash>.namespaces and <hash>.signing_policy.",
    ),
    cfg.BoolOpt(
        "require_crls",
        default=True,
        help="Refuse a signer when any CA of its chain has no valid CRL in ca_dir. When "
        "false, CRLs that exist are still checked.",
    ),
    cfg.BoolOpt(
        "require_namespaces",
        default=True,
        help="Refuse a signer whose issuing CA has no .namespaces or .signing_policy file. "
        "When false, namespace files that exist are still enforced.",
    ),
    cfg.BoolOpt(
        "allow_sha1",
        default=False,
        help="Accept list signatures made with a SHA-1 digest (old AppDB lists). SHA-1 is "
        "broken for collision resistance; enable only for a list you cannot get re-signed.",
    ),
    cfg.IntOpt(
        "clock_skew",
        default=300,
        min=0,
        max=86400,
        help="Seconds a list's dc:date:created may lie in the future, to absorb clock "
        "differences between endorser and site.",
    ),
    cfg.IntOpt(
        "max_list_bytes",
        default=jsonsafe.DEFAULT_MAX_BYTES,
        min=1024,
        help="Largest signed image list accepted, in bytes. A 1,000-image list is about 1.5 MB.",
    ),
]

endorser_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "cert",
        default="~/.globus/usercert.pem",
        help="Endorser certificate (PEM) used by 'vmtrust list sign'.",
    ),
    cfg.StrOpt(
        "key",
        default="~/.globus/userkey.pem",
        help="Private key (PEM) of the endorser certificate.",
    ),
    cfg.StrOpt(
        "digest",
        default="sha256",
        choices=[
            ("sha256", "SHA-256, what openssl smime -sign uses by default"),
            ("sha512", "SHA-512"),
        ],
        help="Digest of the S/MIME signature (micalg).",
    ),
    cfg.IntOpt(
        "lifetime_days",
        default=28,
        min=1,
        max=3650,
        help="Days from now to dc:date:expires when a list is created or bumped (the "
        "HEPiX recommendation is about a month).",
    ),
]

default_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/vmtrust",
        help="Directory of the sync's state: accepted list versions (rollback protection), "
        "last errors, and the lock that keeps two syncs from running at once.",
    ),
]

trust_opts.append(
    cfg.StrOpt(
        "seal_key",
        default="/etc/vmtrust/seal.key",
        help="The site's Ed25519 sync key (make it with 'vmtrust keygen --out PATH'); "
        "PATH.pub is the public half that the nova filter and 'vmtrust images' use.",
    )
)

sync_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "subscriptions_file",
        default="/etc/vmtrust/subscriptions.yaml",
        help="YAML file of subscriptions: list URL, allowed endorsers, VO, approval.",
    ),
    cfg.StrOpt(
        "store",
        default="local",
        help="Where trusted images are stored: local (a directory, the embedded default), "
        "glance (OpenStack Glance), ec2 (an EC2-compatible cloud), or a store an installed "
        "package adds (entry point group vmtrust.stores).",
    ),
    cfg.StrOpt(
        "retire",
        default="deactivate",
        choices=[
            ("deactivate", "keep the bytes, unusable"),
            ("hide", "keep the image, hidden from listings"),
            ("delete", "delete after retire_grace_hours"),
        ],
        help="What happens to an image that leaves the trusted set.",
    ),
    cfg.IntOpt(
        "retire_grace_hours",
        default=168,
        min=0,
        help="Hours a retired image is kept before deletion (retire = delete).",
    ),
    cfg.IntOpt(
        "parallel_downloads", default=2, min=1, max=16, help="Images downloaded at the same time."
    ),
    cfg.FloatOpt(
        "http_timeout",
        default=30.0,
        min=1.0,
        help="Seconds to connect, and to wait for the next bytes, per request.",
    ),
    cfg.IntOpt(
        "http_retries",
        default=5,
        min=0,
        max=50,
        help="Reconnections (with HTTP Range resume) after a broken image transfer.",
    ),
    cfg.FloatOpt(
        "http_backoff",
        default=1.0,
        min=0.0,
        help="First back-off in seconds between retries, doubled each time.",
    ),
    cfg.IntOpt(
        "interval", default=3600, min=60, help="Seconds between passes of 'vmtrust-sync --daemon'."
    ),
    cfg.IntOpt(
        "parallel_lists",
        default=4,
        min=1,
        max=32,
        help="Image lists fetched at the same time. A list's new images start downloading "
        "as soon as it verified, so a dead endorser delays no other.",
    ),
    cfg.IntOpt(
        "list_retries",
        default=2,
        min=0,
        max=10,
        help="New attempts after a list fetch failed transiently (connection refused or "
        "reset, timeout, HTTP 5xx/408/429), with http_backoff doubling in between.",
    ),
    cfg.FloatOpt(
        "list_deadline",
        default=60.0,
        min=1.0,
        help="Seconds a whole list fetch may take, redirects and retries included; then the "
        "subscription fails for this pass (its images stay as they are).",
    ),
    cfg.FloatOpt(
        "registry_deadline",
        default=300.0,
        min=1.0,
        help="Seconds the listing of an OCI registry by a cosign or registry subscription may "
        "take in all (tags, manifests, signatures, retries); then the subscription fails for "
        "this pass and its images stay as they are. Each request also has list_deadline.",
    ),
    cfg.FloatOpt(
        "image_deadline",
        default=300.0,
        min=1.0,
        help="Seconds every image download may take, resumes included, on top of its "
        "hv:size at min_rate. A server that drips the bytes is cut off then.",
    ),
    cfg.IntOpt(
        "min_rate",
        default=512,
        min=1,
        help="Slowest image download accepted, in KiB per second: an image of hv:size "
        "bytes gets image_deadline + hv:size / (min_rate KiB/s) seconds in all.",
    ),
    cfg.IntOpt(
        "max_redirects",
        default=5,
        min=0,
        max=20,
        help="HTTP redirects followed per request. Only to http or https, never from https "
        "to http, and credentials only to the origin they were configured for.",
    ),
    cfg.IntOpt(
        "max_image_size",
        default=64 * 1024**3,
        min=1,
        help="Largest image stored, in bytes, after decompression and format conversion "
        "(default 64 GiB). An image whose hv:size, unpacked bytes or converted disk would be "
        "larger is refused, as soon as that is known.",
    ),
    cfg.IntOpt(
        "max_expansion_ratio",
        default=20,
        min=1,
        help="A compressed image (hv:format ending in .gz, .bz2 or .xz) may unpack to at most "
        "this many times the bytes downloaded (hv:size, which the list's SHA-512 covers); "
        "more is refused as a decompression bomb. Raise it for sparse raw disks that "
        "compress better.",
    ),
    cfg.StrOpt(
        "metrics_address",
        default="",
        help="HOST:PORT where 'vmtrust-sync --daemon' serves its Prometheus metrics over HTTP "
        "(e.g. 127.0.0.1:9731; [::1]:9731 for IPv6). Empty: no metrics server. Anyone who "
        "can reach it reads subscription and image names: keep it on loopback or behind a "
        "firewall.",
    ),
    cfg.StrOpt(
        "metrics_textfile",
        default="",
        help="File each pass writes its Prometheus metrics to, in the text format "
        "node_exporter's textfile collector reads (e.g. "
        "/var/lib/prometheus/node-exporter/vmtrust.prom), replaced atomically. Empty: none.",
    ),
    cfg.StrOpt(
        "log_format",
        default="text",
        choices=[
            (
                "text",
                "lines for people: each event leads with event=, subscription=, image=, "
                "version= and rule= keys",
            ),
            ("json", "one JSON object per line, the same keys on every line"),
        ],
        help="Form of vmtrust-sync's log on standard error (--log-format overrides it).",
    ),
    cfg.StrOpt(
        "state_connection",
        default="",
        secret=True,
        help="SQLAlchemy URL of a PostgreSQL database for the sync's state "
        "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE), shared by several sync hosts "
        "(docs/federation.md). Empty: SQLite in [DEFAULT] state_dir. Its schema is upgraded "
        "when a sync starts, or by 'vmtrust-sync --upgrade-state'.",
    ),
]

coordination_opts = [
    cfg.StrOpt(
        "backend_url",
        default="",
        secret=True,
        help="tooz URL of the coordination service that shares the targets out over several "
        "'vmtrust-sync --worker' hosts, e.g. etcd3+http://etcd1:2379 (etcd 3, through its "
        "gRPC gateway). Empty: this host is the only worker and locks each target with a "
        "file in [DEFAULT] state_dir.",
    ),
    cfg.StrOpt(
        "member_id",
        default="",
        help="This worker's name among the workers (unique; default: the host name and "
        "process id).",
    ),
    cfg.IntOpt(
        "lease",
        default=30,
        min=5,
        max=3600,
        help="Seconds a worker that stopped answering keeps its membership and its target "
        "locks; after that the other workers take its targets over.",
    ),
]

sync_opts += [
    cfg.ListOpt(
        "targets",
        default=[],
        help="Several stores fed by one sync (docs/federation.md): the names of the targets, "
        "each configured in a section [target:NAME] with its store and that store's options. "
        "Each image version is downloaded once per pass for all of them. Empty: the one "
        "store of [sync] store is the only target, named default.",
    ),
    cfg.IntOpt(
        "fanout_buffer",
        default=32,
        min=1,
        max=1024,
        help="MiB of an image kept in memory for the targets it is streamed to at once; a "
        "target further behind reads from a spool file in <state_dir>/work instead, so a "
        "slow target never stalls the others.",
    ),
]

#: The options of a [target:NAME] section besides its store's own (``glance_sync.targets``).
target_opts = [
    cfg.StrOpt(
        "store",
        help="The store of this target: local, glance, ec2 or a plug-in. The section also "
        "takes that store's options (those of [store_local], [store_glance] or [store_ec2]); "
        "an option not given here is the one of that section.",
    ),
    cfg.ListOpt(
        "groups",
        default=[],
        help="Names of groups this target belongs to; a subscription's targets key may name "
        "a group instead of each target.",
    ),
    cfg.StrOpt(
        "retire",
        choices=["deactivate", "hide", "delete"],
        help="What happens to an image that leaves the trusted set in this target. Default: "
        "[sync] retire.",
    ),
]

store_local_opts: list[cfg.Opt] = [
    cfg.StrOpt("path", default="/var/lib/vmtrust/images", help="Directory of the local store."),
    cfg.StrOpt(
        "hook",
        default="",
        help="Program run after an image is stored (AvailablePostfix) or retired "
        "(ExpirePostfix) with vmcatcher's VMCATCHER_EVENT_* environment; no shell.",
    ),
    cfg.StrOpt(
        "disk_format",
        default="",
        help="Convert every image to this disk format with qemu-img (e.g. raw or qcow2); "
        "empty keeps each image in the format it was published in.",
    ),
]

store_glance_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "cloud",
        default="",
        help="Cloud name in clouds.yaml with the sync's credentials. Empty: the keystoneauth "
        "options of this section (auth_type, auth_url, ...) are used instead.",
    ),
    cfg.StrOpt(
        "clouds_file",
        default="",
        help="clouds.yaml to read; empty: openstacksdk's usual places "
        "(OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack, /etc/openstack).",
    ),
    cfg.StrOpt(
        "project_id",
        default="",
        help="The service project that owns every image vmtrust writes; only its images that "
        "carry vmtrust_managed are ever changed. Empty: the project of the credentials.",
    ),
    cfg.StrOpt(
        "visibility",
        default="shared",
        choices=[
            ("private", "the service project only"),
            ("shared", "the service project and the projects mapped to the image's VO"),
            ("community", "every project, not listed by default"),
            ("public", "every project (needs Glance's publicize_image right)"),
        ],
        help="Visibility of the images vmtrust creates.",
    ),
    cfg.MultiStrOpt(
        "vo_project",
        default=[],
        help="VO:PROJECT_ID[:CLOUD] (repeat per project): share images of this VO with this "
        "project (visibility = shared). With CLOUD, a clouds.yaml entry scoped to that "
        "project, the membership is also accepted, and checked on every pass, so the image "
        "shows in its listings (and cloud-info-provider publishes it). Without CLOUD the VO "
        "must accept each image itself: the sync warns at start and 'vmtrust status' lists "
        "the images and the command to run.",
    ),
    cfg.ListOpt(
        "disk_formats",
        default=[],
        help="Disk formats this cloud accepts, preferred first (e.g. qcow2,raw). An image in "
        "another format is converted to the first with qemu-img. Empty: keep each image's "
        "format.",
    ),
    cfg.StrOpt("name_prefix", default="", help="Prefix of the Glance image names (dc:title)."),
    cfg.BoolOpt(
        "hypervisor_type",
        default=True,
        help="Write nova's hypervisor_type from hv:hypervisor (kvm, qemu, xen, ...). nova's "
        "ImagePropertiesFilter then keeps the image off hosts of another hypervisor; turn it "
        "off where KVM hosts report qemu.",
    ),
    cfg.FloatOpt(
        "api_timeout",
        default=300.0,
        min=1.0,
        help="Seconds to wait for a Glance API answer (an upload's end included).",
    ),
    cfg.StrOpt(
        "check_cloud",
        default="",
        help="A clouds.yaml entry of an ordinary project member (without the vmtrust_service "
        "role), used only by 'vmtrust-sync --check' to confirm that Glance's property "
        "protections refuse vmtrust_* properties to members. Empty: the clouds of vo_project "
        "entries are used, if any.",
    ),
    cfg.IntOpt(
        "reconcile_passes",
        default=6,
        min=1,
        help="Between full reconciles a pass asks Glance only for the managed images updated "
        "since the last pass (kept in the state directory); a full reconcile, which lists "
        "every image and so also finds images deleted or unmarked behind vmtrust's back, runs "
        "at least every this many passes. 1: every pass lists every image.",
    ),
    cfg.FloatOpt(
        "reconcile_hours",
        default=6.0,
        min=0.0,
        help="A full reconcile also runs when the last one is this many hours old (whichever "
        "comes first with reconcile_passes). 0: by passes only.",
    ),
    cfg.IntOpt(
        "changes_margin",
        default=120,
        min=1,
        help="Seconds further back than the newest update already seen that each incremental "
        "listing reaches: covers clocks of several Glance API servers that differ and updates "
        "committed in the same second.",
    ),
]


store_ec2_opts: list[cfg.Opt] = [
    cfg.StrOpt(
        "region",
        default="",
        help="AWS region of the images (e.g. eu-west-1). Empty: the region of the AWS "
        "configuration (AWS_REGION, the profile).",
    ),
    cfg.StrOpt(
        "profile",
        default="",
        help="Named profile of the AWS configuration files with the sync's credentials (it may "
        "assume a role: role_arn, source_profile or credential_source). Empty: boto3's default "
        "chain (environment, default profile, the instance's role).",
    ),
    cfg.StrOpt(
        "endpoint_url",
        default="",
        help="One endpoint for EC2, EBS and S3 instead of AWS's (an emulator such as moto).",
    ),
    cfg.StrOpt(
        "account_id",
        default="",
        help="The site account that owns every AMI vmtrust writes (12 digits). Used by "
        "'vmtrust ec2 policy' and by VOs to find images; the sync itself works in the account "
        "of its credentials and only touches AMIs and snapshots tagged vmtrust:managed.",
    ),
    cfg.MultiStrOpt(
        "vo_account",
        default=[],
        help="VO:ACCOUNT_ID (repeat per account): give this AWS account launch permission on "
        "the images of this VO. Needs record_bucket.",
    ),
    cfg.StrOpt(
        "record_bucket",
        default="",
        help="S3 bucket of the site account where each AMI's trust record and seal are "
        "published as <record_prefix><ami-id>.json: VO accounts cannot read the tags of an AMI "
        "shared with them, and 'vmtrust launch' checks the seal from there.",
    ),
    cfg.StrOpt("record_prefix", default="vmtrust/records/", help="Key prefix in record_bucket."),
    cfg.StrOpt(
        "sync_role_arn",
        default="",
        help="ARN of the IAM role the sync runs as, for the policy documents of "
        "'vmtrust ec2 policy' (only this role may write images, vmtrust:* tags and EBS blocks).",
    ),
    cfg.StrOpt(
        "boot_mode",
        default="uefi-preferred",
        choices=[
            ("legacy-bios", "BIOS boot"),
            ("uefi", "UEFI boot"),
            ("uefi-preferred", "UEFI where the instance type has it, else BIOS"),
        ],
        help="Boot mode of the AMIs: the images must boot this way (EBS direct uploads do not "
        "change the guest).",
    ),
    cfg.BoolOpt(
        "ena_support",
        default=True,
        help="Mark AMIs as having the ENA network driver (needed on current instance types; the "
        "images must also have NVMe drivers, for which EC2 has no flag).",
    ),
    cfg.BoolOpt(
        "imds_v2",
        default=True,
        help="Instances of the AMIs require IMDSv2 (session tokens) for the metadata service.",
    ),
    cfg.StrOpt("root_device", default="/dev/xvda", help="Root device name of the AMIs."),
    cfg.StrOpt(
        "volume_type",
        default="gp3",
        choices=["gp3", "gp2", "io1", "io2", "standard"],
        help="EBS volume type of the root volume of instances launched from the AMIs.",
    ),
    cfg.StrOpt("name_prefix", default="", help="Prefix of the AMI names and Name tags."),
    cfg.IntOpt(
        "upload_threads",
        default=8,
        min=1,
        max=64,
        help="Parallel PutSnapshotBlock requests per image (about 5 MB/s each at 100 ms "
        "latency; memory: two 512 KiB blocks per thread).",
    ),
    cfg.IntOpt(
        "api_retries",
        default=7,
        min=0,
        max=20,
        help="Retries of a throttled or failed AWS request (botocore's standard mode, "
        "exponential back-off).",
    ),
    cfg.FloatOpt(
        "api_timeout", default=60.0, min=1.0, help="Seconds to connect and to wait for an answer."
    ),
]


def keystoneauth_opts() -> list[cfg.Opt]:
    """keystoneauth's auth, session and adapter options (as nova has for [glance]).

    Empty when keystoneauth is not installed (the [glance] extra); the filter's
    ``[vmtrust]`` section in nova.conf uses the same list.
    """
    try:
        from keystoneauth1 import loading as ks_loading
    except ImportError:  # the [glance] extra is not installed
        return []
    opts = [
        *ks_loading.get_auth_common_conf_options(),
        *ks_loading.get_session_conf_options(),
        *ks_loading.get_adapter_conf_options(include_deprecated=False),
    ]
    seen, unique = set(), []
    for opt in opts:
        if opt.dest not in seen:
            seen.add(opt.dest)
            unique.append(opt)
    return unique


def _own_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """vmtrust's groups and options, without keystoneauth's (an import of its own)."""
    return [
        ("DEFAULT", default_opts),
        ("trust", trust_opts),
        ("endorser", endorser_opts),
        ("sync", sync_opts),
        ("store_local", store_local_opts),
        ("store_glance", store_glance_opts),
        ("store_ec2", store_ec2_opts),
        ("coordination", coordination_opts),
        # documents the section of each [sync] targets name (registered per name when read)
        ("target:name", target_opts),
    ]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point ``oslo.config.opts`` for oslo-config-generator."""
    return [
        (group, opts + keystoneauth_opts() if group == "store_glance" else opts)
        for group, opts in _own_opts()
    ]


def _value_error(exc: Exception, group: str, opt: cfg.Opt, files: list[str]) -> ConfigError:
    """One line naming the file, the ``[group] option`` and the problem.

    oslo.config's own message embeds a ``LocationInfo(...)`` repr; only its
    reason (after "is not valid: ") and the file (``detail``) are kept.
    """
    text = " ".join(str(exc).split())
    reason = text.split(" is not valid: ", 1)[-1]
    detail = re.search(r"detail='([^']*)'", text)
    where = "configuration"
    if detail:
        source = detail.group(1)
        is_file = source in {os.path.abspath(f) for f in files}
        where = f"configuration file {source}" if is_file else f"configuration ({source})"
    return ConfigError(f"{where}: [{group}] {opt.name}: {reason}")


def make_conf(
    config_files: list[str] | None = None, *, groups: Collection[str] | None = None
) -> cfg.ConfigOpts:
    """Load configuration from ``config_files`` (or the standard places if None).

    Every oslo.config failure becomes a one-line :class:`ConfigError`; values
    are all read here, so a bad one is reported before any work starts.
    ``groups`` (e.g. ``("trust",)``) limits that to the sections a command reads,
    besides ``[DEFAULT]``: ``vmtrust list verify`` then neither imports keystoneauth
    for ``[store_glance]`` (issue 17, start-up) nor stops on a section it never uses.
    """
    if groups is None:
        chosen = list_opts()
    else:
        chosen = [
            (group, opts + keystoneauth_opts() if group == "store_glance" else opts)
            for group, opts in _own_opts()
            if group == "DEFAULT" or group in groups
        ]
    conf = cfg.ConfigOpts()
    for group, opts in chosen:
        conf.register_opts(opts, group=None if group == "DEFAULT" else group)
    files = config_files if config_files is not None else cfg.find_config_files("vmtrust")
    try:
        conf(args=[], project="vmtrust", default_config_files=files, validate_default_values=True)
    except cfg.ConfigFilesNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {', '.join(exc.config_files)}") from None
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(f"configuration file {exc.config_file}: {exc.msg}") from None
    except OSError as exc:  # a directory, an unreadable file
        raise ConfigError(
            f"configuration file {exc.filename or ', '.join(files)}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"configuration file {', '.join(files)}: not UTF-8 (byte at offset {exc.start})"
        ) from None
    except (cfg.Error, ValueError) as exc:
        raise ConfigError(f"configuration: {exc}") from None
    for group, opts in chosen:
        for opt in opts:
            try:
                getattr(conf if group == "DEFAULT" else getattr(conf, group), opt.dest)
            except (cfg.ConfigSourceValueError, ValueError) as exc:
                raise _value_error(exc, group, opt, files) from None
            except cfg.Error as exc:
                raise ConfigError(f"configuration: [{group}] {opt.name}: {exc}") from None
    return conf

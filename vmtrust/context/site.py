"""The site profile: what a site always injects into its worker nodes, read strictly.

Every value lands in a script, a ``KEY=value`` file or a systemd unit that runs
as root, so each is checked for its form here (URLs without shell characters,
repository and domain names, absolute paths, numbers), and every problem of the
file is reported at once, named by its key path.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmtrust.context.profiles import (
    _REPO,
    URL,
    CvmfsDomain,
    CvmfsSite,
    Features,
    Fields,
    JobOutputs,
    PackageSources,
    Scratch,
    SiteProfile,
    read_yaml,
)
from vmtrust.errors import Problems

__all__ = ["STANDARD_FEATURES", "load_site"]

_DOMAIN = re.compile(r"[a-z0-9][a-z0-9-]*(\.[a-z0-9-]+)*\.[a-z]{2,}\Z")
_FEATURE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
#: machine/job features vmtrust publishes itself (HSF-TN-2016-02)
STANDARD_FEATURES = frozenset(
    {"total_cpu", "hs06", "shutdowntime", "grace_secs", "jobslots", "allocated_cpu",
     "wall_limit_secs", "cpu_limit_secs", "max_rss_bytes", "max_swap_bytes",
     "scratch_limit_bytes", "jobstart_secs", "job_id"}
)  # fmt: skip
#: where a scratch disk may not be mounted: the system itself
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/root", "/run", "/sbin",
                "/sys", "/usr", "/var/lib", "/var/log", "/cvmfs")  # fmt: skip


def _proxy_list(text: str, *, special: bool = True) -> bool:
    """A CVMFS proxy list: URLs joined by '|' (load-balance) and ';' (fail-over)."""
    for group in text.split(";"):
        for proxy in group.split("|"):
            proxy = proxy.strip()
            if special and proxy in ("DIRECT", "auto"):
                continue
            if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(:\d+)?/?", proxy):
                return False
    return True


def _cvmfs(f: Fields) -> CvmfsSite:
    f.known("proxy", "install", "pac_urls", "fallback_proxy", "quota_mb", "cache_base",
            "client_profile", "repositories", "allowed_repositories", "domains")  # fmt: skip
    proxy = f.text("proxy", required=True).strip()
    if proxy and not _proxy_list(proxy):
        f.add("proxy", "not a CVMFS proxy list (URLs joined by '|' and ';', DIRECT, auto)")
    install = f.text("install", "repository")
    if install not in ("repository", "preinstalled"):
        f.add("install", "must be 'repository' (installed at boot) or 'preinstalled'")
    pac = f.texts("pac_urls")
    for url in pac:
        if url != "auto" and not URL.match(url):
            f.add("pac_urls", f"not an http(s) URL of a PAC file: {url!r}")
    if pac and "auto" not in re.split(r"[|;]", proxy):
        f.add("pac_urls", "the PAC files are read only when the proxy list contains 'auto'")
    fallback = f.text("fallback_proxy").strip()
    if fallback and not _proxy_list(fallback, special=False):
        f.add("fallback_proxy", "not a list of proxy URLs joined by '|' and ';'")
    profile = f.text("client_profile")
    if profile and profile != "single":
        f.add("client_profile", "only 'single' exists")
    cache = f.text("cache_base", "/var/lib/cvmfs")
    if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", cache) or "/../" in cache + "/":
        f.add("cache_base", "must be an absolute path of letters, digits, '.', '_' and '-'")
    repos = f.texts("repositories")
    for repo in repos:
        if not _REPO.match(repo):
            f.add("repositories", f"not a repository name: {repo!r}")
    allowed = f.texts("allowed_repositories")
    for pattern in allowed:
        if not re.fullmatch(r"[a-z0-9.*?-]+", pattern):
            f.add("allowed_repositories", f"not a repository name pattern: {pattern!r}")
    return CvmfsSite(
        proxy=proxy,
        install=install,
        pac_urls=pac,
        fallback_proxy=fallback,
        quota_mb=f.integer("quota_mb", 4000, 1000),
        cache_base=cache,
        client_profile=profile,
        repositories=repos,
        allowed=allowed or ("*",),
        domains=_domains(f),
    )


def _domains(f: Fields) -> tuple[CvmfsDomain, ...]:
    raw = f.data.get("domains") or {}
    if not isinstance(raw, dict):
        f.add("domains", "must map domains to {server_urls, keys}")
        return ()
    domains = []
    for name in sorted(raw, key=str):
        if not isinstance(name, str) or not _DOMAIN.match(name):
            f.add("domains", f"not a domain name: {name!r}")
            continue
        if not isinstance(raw[name], dict):
            f.add(f"domains.{name}", "must be a mapping with server_urls and keys")
            continue
        item = Fields(f.p, raw[name], f"{f.prefix}domains.{name}.")
        item.known("server_urls", "keys")
        urls = item.texts("server_urls")
        if not urls:
            item.add("server_urls", "at least one Stratum 1 URL is needed")
        for url in urls:
            if not URL.match(url) or ";" in url:
                item.add("server_urls", f"not an http(s) URL: {url!r}")
        keys = item.texts("keys")
        if not keys:
            item.add("keys", "at least one public key (PEM) is needed")
        for key in keys:
            if not key.strip().startswith("-----BEGIN PUBLIC KEY-----"):
                item.add("keys", "each key must be a PEM public key")
        domains.append(CvmfsDomain(name, urls, tuple(k.strip() + "\n" for k in keys)))
    return tuple(domains)


def _sources(f: Fields) -> PackageSources:
    proxy = f.text("proxy")
    if proxy and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(:\d+)?/?", proxy):
        f.add("proxy", "not a proxy URL such as http://squid.example.org:3128")
    mirror = f.section("cvmfs_mirror", "el", "debian", "gpg_key")
    el, debian = mirror.text("el"), mirror.text("debian")
    if el and not URL.match(el):
        mirror.add("el", "not the http(s) baseurl of a yum repository")
    words = debian.split()
    if debian and (
        len(words) < 3
        or not URL.match(words[0])
        or not all(re.fullmatch(r"[A-Za-z0-9._/-]+", w) for w in words[1:])
    ):
        mirror.add("debian", "must be 'URL SUITE COMPONENT...' as in an apt sources line")
    key = mirror.text("gpg_key")
    if (el or debian) and not key.strip().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        mirror.add("gpg_key", "the mirror's armored GPG public key is needed")
    return PackageSources(
        proxy=proxy.rstrip("/"),
        cvmfs_mirror_el=el,
        cvmfs_mirror_debian=" ".join(words),
        cvmfs_mirror_key=key.strip() + "\n" if key else "",
        epel=f.flag("epel", False),
    )


def _scratch(f: Fields) -> Scratch | None:
    if not f.data:
        return None
    device = f.text("device", required=True)
    if device and not re.fullmatch(r"ephemeral[0-9]|/dev/[A-Za-z0-9/_.-]+", device):
        f.add("device", "must be a cloud-init alias (ephemeral0) or a /dev/ path")
    mount = f.text("mount", required=True)
    if mount and (
        not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", mount)
        or "/../" in mount + "/"
        or any(mount == d or mount.startswith(d + "/") for d in _SYSTEM_DIRS)
    ):
        f.add("mount", f"must be an absolute path outside the system directories: {mount!r}")
    filesystem = f.text("filesystem", "ext4")
    if filesystem not in ("ext4", "xfs"):
        f.add("filesystem", "must be ext4 or xfs")
    return Scratch(device, mount, filesystem)


def _features(f: Fields) -> Features:
    hs06 = f.data.get("hs06_per_cpu")
    if hs06 is not None and (
        not isinstance(hs06, int | float) or isinstance(hs06, bool) or not 0 < hs06 < 1e6
    ):
        f.add("hs06_per_cpu", "must be a positive number")
        hs06 = None
    extra = f.data.get("extra") or {}
    pairs: list[tuple[str, str]] = []
    if not isinstance(extra, dict):
        f.add("extra", "must map feature names to values")
        extra = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not _FEATURE.match(name) or name in STANDARD_FEATURES:
            f.add("extra", f"not a name for a site feature: {name!r} (lower case, not standard)")
        elif (
            not isinstance(value, str | int | float)
            or isinstance(value, bool)
            or not str(value).isprintable()
        ):
            f.add(f"extra.{name}", "must be a number or a one-line string")
        else:
            pairs.append((name, str(value)))
    return Features(
        hs06_per_cpu=f"{hs06:g}" if hs06 is not None else "",
        jobslots=f.integer("jobslots", 1, 1),
        extra=tuple(pairs),
    )


def _joboutputs(f: Fields) -> JobOutputs:
    url = f.text("upload_url")
    if url and not URL.match(url):
        f.add("upload_url", "not an http(s) URL")
    heartbeat = f.integer("heartbeat_seconds", 300, 0)
    if 0 < heartbeat < 10:
        f.add("heartbeat_seconds", "must be 0 (none) or at least 10")
    return JobOutputs(url.rstrip("/"), heartbeat)


def load_site(path: Path) -> SiteProfile:
    data = read_yaml(path, "site profile")
    p = Problems(f"site profile {path}")
    f = Fields(p, data)
    f.known("site", "cvmfs", "package_sources", "scratch", "machine_features", "joboutputs",
            "syslog", "admin_ssh_keys", "ca_certificates", "lifetime", "pilot_user",
            "vo_may")  # fmt: skip
    cvmfs = None
    if data.get("cvmfs") is not None:
        if isinstance(data["cvmfs"], dict):
            cvmfs = _cvmfs(Fields(p, data["cvmfs"], "cvmfs."))
        else:
            f.add("cvmfs", "must be a mapping")
    lifetime = f.section("lifetime", "max_seconds", "grace_seconds")
    max_lifetime = lifetime.integer("max_seconds", 172800, 60)
    grace = lifetime.integer("grace_seconds", 600, 0)
    if grace >= max_lifetime:
        lifetime.add("grace_seconds", "must be less than max_seconds")
    vo_may = f.section("vo_may", "packages", "file_prefixes", "runcmd")
    prefixes = vo_may.texts("file_prefixes") if "file_prefixes" in vo_may.data else None
    for prefix in prefixes or ():
        if not prefix.startswith("/") or not prefix.endswith("/") or "/../" in prefix:
            vo_may.add("file_prefixes", f"must be absolute directories ending in '/': {prefix}")
    ca = f.texts("ca_certificates")
    if any("-----BEGIN CERTIFICATE-----" not in pem for pem in ca):
        f.add("ca_certificates", "each entry must be a PEM certificate")
    syslog = f.texts("syslog")
    for remote in syslog:
        if not re.fullmatch(r"@{1,2}[A-Za-z0-9.:\[\]-]+(:\d+)?", remote):
            f.add("syslog", f"not '@host:port' (UDP) or '@@host:port' (TCP): {remote!r}")
    pilot_user = f.text("pilot_user", "pilot")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", pilot_user) or pilot_user == "root":
        f.add("pilot_user", "not a valid unprivileged user name")
    site = SiteProfile(
        name=f.text("site", required=True),
        cvmfs=cvmfs,
        syslog=syslog,
        admin_ssh_keys=f.texts("admin_ssh_keys"),
        ca_certificates=ca,
        max_lifetime=max_lifetime,
        grace=grace,
        pilot_user=pilot_user,
        packages=vo_may.texts("packages"),
        file_prefixes=prefixes if prefixes is not None else ("/opt/", "/etc/vo/"),
        runcmd=vo_may.flag("runcmd", False),
        sources=_sources(f.section("package_sources", "proxy", "cvmfs_mirror", "epel")),
        scratch=_scratch(f.section("scratch", "device", "mount", "filesystem")),
        features=_features(f.section("machine_features", "hs06_per_cpu", "jobslots", "extra")),
        joboutputs=_joboutputs(f.section("joboutputs", "upload_url", "heartbeat_seconds")),
        source=str(path),
    )
    p.raise_if_any()
    return site

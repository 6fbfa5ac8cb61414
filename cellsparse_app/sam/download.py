"""Safe file download: allowlisted https hosts only, size cap, checksum, atomic rename, cancel.

Never an arbitrary fetch (samapi fetches any URL a client sends, which is server-side request
forgery). A URL is accepted only if:

* its scheme is ``https`` and it has no user name/password and no explicit port other than 443;
* its host is on the allowlist, exactly (no IP literals, no look-alike suffixes);
* the host does not resolve to a private, loopback, link-local or reserved address;
* every redirect leads again to an accepted URL (a redirect to any host off the allowlist is
  refused), at most ``max_redirects`` times.

The body is streamed into a temporary file beside the destination, counted against
``max_bytes`` (and the announced ``Content-Length``), hashed (SHA-256) on the way, compared with
the expected size and checksum, and only then renamed into place (``os.replace``, atomic). A
failed or cancelled download leaves nothing behind.

Tests serve files from ``http://127.0.0.1``; only :meth:`DownloadPolicy.local_testing` allows
that, never the default policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import ipaddress
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

#: Hosts serving official SAM/MobileSAM weights and the usual model hubs, plus their CDNs.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "dl.fbaipublicfiles.com",
    "raw.githubusercontent.com",
    "github.com",
    "objects.githubusercontent.com",
    "release-assets.githubusercontent.com",
    "media.githubusercontent.com",
    "huggingface.co",
    "cdn-lfs.huggingface.co",
    "cdn-lfs.hf.co",
    "cdn-lfs-us-1.hf.co",
    "cas-bridge.xethub.hf.co",
    "zenodo.org",
    "uk1s3.embassy.ebi.ac.uk",
)
#: Largest file accepted by default (SAM ViT-H is 2.56 GB).
DEFAULT_MAX_BYTES: int = 3 * 1024**3
CHUNK = 1 << 20

ProgressFn = Callable[[int, "int | None"], None]


class DownloadError(RuntimeError):
    """A download failed or was refused; the message says why."""


class DownloadCancelled(DownloadError):
    """The download was cancelled by the caller."""


@dataclasses.dataclass(frozen=True)
class DownloadPolicy:
    """What may be fetched.

    Attributes:
        allowed_hosts: exact host names that may be contacted (lower case).
        max_bytes: refuse files larger than this.
        timeout: seconds to wait for the server at connection and for each read.
        max_redirects: redirects followed at most.
        allow_local_http: TEST ONLY: also accept ``http://127.0.0.1`` (see :meth:`local_testing`).
    """

    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = 30.0
    max_redirects: int = 5
    allow_local_http: bool = False

    @classmethod
    def local_testing(cls, max_bytes: int = DEFAULT_MAX_BYTES) -> "DownloadPolicy":
        """A policy for tests that only allows ``http://127.0.0.1:<any port>``."""
        return cls(allowed_hosts=("127.0.0.1",), max_bytes=max_bytes, timeout=5.0,
                   allow_local_http=True)

    def check_url(self, url: str, *, resolve: bool = True) -> str:
        """Return ``url`` if this policy allows fetching it.

        Args:
            url: the URL.
            resolve: also check the addresses the host resolves to (needs DNS).

        Raises:
            DownloadError: naming the rule that refused the URL.
        """
        if not isinstance(url, str) or not url or len(url) > 2048:
            raise DownloadError(f"invalid URL {url!r}")
        if any(ord(ch) < 33 for ch in url):
            raise DownloadError(f"URL contains spaces or control characters: {url!r}")
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        local = self.allow_local_http and host == "127.0.0.1"
        if parts.scheme != "https" and not (local and parts.scheme == "http"):
            raise DownloadError(f"only https URLs are allowed, got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise DownloadError(f"URLs with credentials are not allowed: {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise DownloadError(f"invalid port in {url!r}") from exc
        if not local and port not in (None, 443):
            raise DownloadError(f"only the default https port is allowed, got {url!r}")
        if host not in self.allowed_hosts:
            raise DownloadError(
                f"host {host or '(none)'!r} is not on the download allowlist "
                f"({', '.join(self.allowed_hosts)})"
            )
        if not local:
            if _is_ip_literal(host):
                raise DownloadError(f"IP address hosts are not allowed: {url!r}")
            if resolve:
                _check_public(host)
        return url


def download(
    url: str,
    dest: str | Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    policy: DownloadPolicy = DownloadPolicy(),
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """Download ``url`` to ``dest`` safely (see the module docstring).

    Args:
        url: https URL on the policy's allowlist.
        dest: final path; its folder is created.
        expected_size: exact size in bytes, when known.
        expected_sha256: hex SHA-256, when known.
        policy: what may be fetched.
        progress: called as ``progress(bytes_done, bytes_total_or_None)`` after each chunk.
        should_stop: polled after each chunk; True cancels the download.

    Returns:
        The SHA-256 (hex) of the file written.

    Raises:
        DownloadError: refused URL or redirect, HTTP error, too large, truncated, wrong size or
            checksum. DownloadCancelled when ``should_stop()`` became true.
    """
    dest = Path(dest)
    policy.check_url(url)
    if expected_size is not None and expected_size > policy.max_bytes:
        raise DownloadError(
            f"{dest.name}: {expected_size} bytes exceeds the cap of {policy.max_bytes}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(_PolicyRedirects(policy))
    request = urllib.request.Request(url, headers={"User-Agent": "cellsparse-app"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(opener, request, out, dest.name, expected_size, policy, progress,
                             should_stop)
            out.flush()
            os.fsync(out.fileno())
        if expected_sha256 and digest != expected_sha256.lower():
            raise DownloadError(
                f"{dest.name}: checksum mismatch (expected sha256 {expected_sha256}, got {digest});"
                " the file was discarded"
            )
        os.replace(tmp, dest)
        logger.info("downloaded %s -> %s", url, dest)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def _stream(opener, request, out, name, expected_size, policy, progress, should_stop) -> str:
    """Copy the response body into ``out``; returns the SHA-256."""
    try:
        response = opener.open(request, timeout=policy.timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{name}: server answered HTTP {exc.code} for {request.full_url}") from exc
    except DownloadError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, DownloadError):
            raise reason from exc
        raise DownloadError(f"{name}: cannot reach {request.full_url} ({reason})") from exc
    with response:
        announced = response.headers.get("Content-Length")
        total = int(announced) if announced and announced.isdigit() else None
        if total is not None and total > policy.max_bytes:
            raise DownloadError(f"{name}: {total} bytes exceeds the cap of {policy.max_bytes}")
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(f"{name}: server announces {total} bytes, expected {expected_size}")
        total = total if total is not None else expected_size
        digest = hashlib.sha256()
        done = 0
        while True:
            if should_stop is not None and should_stop():
                raise DownloadCancelled(f"{name}: download cancelled")
            try:
                chunk = response.read(CHUNK)
            except (http.client.IncompleteRead, OSError) as exc:
                raise DownloadError(f"{name}: connection lost after {done} bytes ({exc})") from exc
            if not chunk:
                break
            done += len(chunk)
            if done > policy.max_bytes:
                raise DownloadError(f"{name}: more than the cap of {policy.max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done != total:
        raise DownloadError(f"{name}: truncated download ({done} of {total} bytes)")
    return digest.hexdigest()


class _PolicyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL the policy accepts."""

    def __init__(self, policy: DownloadPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.max_redirections = policy.max_redirects

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        try:
            self.policy.check_url(newurl)
        except DownloadError as exc:
            raise DownloadError(
                f"refused redirect from {req.full_url} to {newurl}: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _check_public(host: str) -> None:
    """Refuse hosts that resolve to internal addresses (DNS pointing inside the network)."""
    try:
        infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise DownloadError(f"cannot resolve {host!r} ({exc}); are you offline?") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise DownloadError(f"host {host!r} resolves to non-public address {address}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Safe downloads against a local HTTP server on 127.0.0.1 serving files made here."""

from __future__ import annotations

import pytest
from sam_test_server import PAYLOAD, SHA

from cellsparse_app.sam.download import (
    DownloadCancelled,
    DownloadError,
    DownloadPolicy,
    download,
)

LOCAL = DownloadPolicy.local_testing()


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_good_file_is_verified_and_renamed_into_place(server, tmp_path):
    seen = []
    digest = download(f"{server}/good.pt", tmp_path / "w.pt", expected_size=len(PAYLOAD),
                      expected_sha256=SHA, policy=LOCAL, progress=lambda d, t: seen.append((d, t)))
    assert digest == SHA
    assert (tmp_path / "w.pt").read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == ["w.pt"]  # no temporary file left behind
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_truncated_file_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="truncated|connection lost"):
        download(f"{server}/truncated.pt", tmp_path / "w.pt", policy=LOCAL)
    assert _leftovers(tmp_path) == []


def test_wrong_checksum_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server}/good.pt", tmp_path / "w.pt", expected_sha256="0" * 64, policy=LOCAL)
    assert _leftovers(tmp_path) == []


def test_wrong_size_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="expected 123"):
        download(f"{server}/good.pt", tmp_path / "w.pt", expected_size=123, policy=LOCAL)
    assert _leftovers(tmp_path) == []


def test_redirect_on_the_allowed_host_is_followed(server, tmp_path):
    assert download(f"{server}/same-host-redirect", tmp_path / "w.pt", policy=LOCAL) == SHA


@pytest.mark.parametrize("path", ["/other-host-redirect", "/https-elsewhere-redirect"])
def test_redirect_to_another_host_is_refused(server, tmp_path, path):
    with pytest.raises(DownloadError, match="refused redirect"):
        download(f"{server}{path}", tmp_path / "w.pt", policy=LOCAL)
    assert _leftovers(tmp_path) == []


def test_size_cap_with_and_without_content_length(server, tmp_path):
    small = DownloadPolicy.local_testing(max_bytes=1_000_000)
    with pytest.raises(DownloadError, match="exceeds the cap"):
        download(f"{server}/huge-announced", tmp_path / "a.pt", policy=small)
    with pytest.raises(DownloadError, match="more than the cap"):
        download(f"{server}/huge-unannounced", tmp_path / "b.pt", policy=small)
    with pytest.raises(DownloadError, match="exceeds the cap"):
        download(f"{server}/good.pt", tmp_path / "c.pt", expected_size=2_000_000, policy=small)
    assert _leftovers(tmp_path) == []


def test_cancel_stops_and_cleans_up(server, tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(DownloadCancelled, match="cancelled"):
        download(f"{server}/slow.pt", tmp_path / "w.pt", policy=LOCAL, should_stop=stop)
    assert _leftovers(tmp_path) == []


def test_http_errors_are_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server}/missing.pt", tmp_path / "w.pt", policy=LOCAL)


def test_default_policy_refuses_local_and_unlisted_urls(server, tmp_path):
    default = DownloadPolicy()
    with pytest.raises(DownloadError, match="only https"):
        download(f"{server}/good.pt", tmp_path / "w.pt")  # no test override by default
    refused = {
        "https://127.0.0.1/sam.pth": "not on the download allowlist",
        "https://evil.example.com/sam.pth": "not on the download allowlist",
        "https://dl.fbaipublicfiles.com.evil.example/sam.pth": "not on the download allowlist",
        "https://user:pw@dl.fbaipublicfiles.com/sam.pth": "credentials",
        "https://dl.fbaipublicfiles.com:8443/sam.pth": "default https port",
        "ftp://dl.fbaipublicfiles.com/sam.pth": "only https",
        "file:///etc/passwd": "only https",
        "https://dl.fbaipublicfiles.com/a b.pth": "spaces",
        "": "invalid URL",
    }
    for url, message in refused.items():
        with pytest.raises(DownloadError, match=message):
            default.check_url(url, resolve=False)
    assert default.check_url("https://dl.fbaipublicfiles.com/segment_anything/x.pth",
                             resolve=False)
    # The test policy opens 127.0.0.1 only: no other host, no https elsewhere.
    for url in ("http://localhost:8000/x.pt", "http://example.com/x.pt"):
        with pytest.raises(DownloadError, match="only https"):
            LOCAL.check_url(url)
    with pytest.raises(DownloadError, match="allowlist"):
        LOCAL.check_url("https://dl.fbaipublicfiles.com/x.pt")

"""Weights: official catalogue, registration rules, downloads with progress/cancel, offline."""

from __future__ import annotations

import importlib.util
import pickle
import threading
import time
import urllib.parse

import pytest
from sam_test_server import PAYLOAD, SHA

from cellsparse_app.sam import (
    OFFICIAL_WEIGHTS,
    DownloadCancelled,
    DownloadPolicy,
    SamAnnotator,
    SamConfig,
    WeightsManager,
    WeightsUnavailableError,
    default_cache_dir,
)
from cellsparse_app.sam.registry import get_backend, infer_model_type, load_weights, read_state_dict


def test_official_weights_are_https_on_the_allowlist_with_size_and_checksum():
    policy = DownloadPolicy()
    assert set(OFFICIAL_WEIGHTS) == {"vit_t", "vit_b", "vit_l", "vit_h"}
    for name, spec in OFFICIAL_WEIGHTS.items():
        assert spec.model_type == name and spec.official
        assert policy.check_url(spec.url, resolve=False) == spec.url
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.size > 10_000_000
        assert urllib.parse.urlsplit(spec.url).path.endswith(spec.filename)
    assert OFFICIAL_WEIGHTS["vit_b"].filename == "sam_vit_b_01ec64.pth"
    assert OFFICIAL_WEIGHTS["vit_t"].filename == "mobile_sam.pt"


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLSPARSE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert WeightsManager().directory == tmp_path / "c" / "sam"
    monkeypatch.delenv("CELLSPARSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cellsparse"


@pytest.mark.parametrize(
    "name, model_type, url, message",
    [
        ("../evil", "vit_b", "https://huggingface.co/x/y.pt", "invalid weights name"),
        ("a/b", "vit_b", "https://huggingface.co/x/y.pt", "invalid weights name"),
        ("", "vit_b", "https://huggingface.co/x/y.pt", "invalid weights name"),
        ("vit_b", "vit_b", "https://huggingface.co/x/y.pt", "official weights name"),
        ("lm", "fallback", "https://huggingface.co/x/y.pt", "takes no weights"),
        ("lm", "vit_q", "https://huggingface.co/x/y.pt", "unknown SAM model type"),
        ("lm", "vit_b", "http://huggingface.co/x/y.pt", "only https"),
        ("lm", "vit_b", "https://169.254.169.254/latest/meta-data", "allowlist"),
        ("lm", "vit_b", "https://internal.corp/weights.pt", "allowlist"),
    ],
)
def test_registration_refuses_bad_names_types_and_urls(tmp_path, name, model_type, url, message):
    manager = WeightsManager(tmp_path)
    with pytest.raises(ValueError, match=message):
        manager.register(name, model_type, url)
    assert [s.name for s in manager.specs()] == list(OFFICIAL_WEIGHTS)


def test_registered_weights_download_with_progress_and_trust_on_first_use(server, tmp_path):
    manager = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    spec = manager.register("vit_b_lm", "vit_b", f"{server}/good.pt", description="micro-sam")
    assert spec.sha256 is None and spec.filename == "vit_b_lm.pt"
    seen = []
    path = manager.ensure("vit_b_lm", progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == PAYLOAD and seen[-1] == len(PAYLOAD)
    status = manager.status("vit_b_lm")
    assert (status.state, status.done_bytes, status.fraction) == ("done", len(PAYLOAD), 1.0)
    # The hash of the first download is remembered, and the registry survives a restart.
    again = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    assert again.get("vit_b_lm").sha256 == SHA
    assert again.get("vit_b_lm").size == len(PAYLOAD)
    assert again.is_available("vit_b_lm")
    assert [s.name for s in again.specs("vit_b")] == ["vit_b", "vit_b_lm"]
    # A file changed behind our back no longer matches the recorded checksum.
    path.write_bytes(PAYLOAD[:-4] + b"evil")
    with pytest.raises(ValueError, match="corrupt or a different file"):
        again.ensure("vit_b_lm")
    again.unregister("vit_b_lm")
    assert not path.exists()


def test_bad_download_leaves_a_clear_unavailable_error(server, tmp_path):
    manager = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    manager.register("bad", "vit_t", f"{server}/truncated.pt")
    with pytest.raises(WeightsUnavailableError, match="truncated|connection lost"):
        manager.ensure("bad")
    assert manager.status("bad").state == "failed"
    assert not manager.path("bad").exists()
    manager.register("wrongsum", "vit_t", f"{server}/good.pt", sha256="ab" * 32)
    with pytest.raises(WeightsUnavailableError, match="checksum mismatch"):
        manager.ensure("wrongsum")


def test_cancel_a_running_download(server, tmp_path):
    manager = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    manager.register("slow", "vit_t", f"{server}/slow.pt")
    errors = []

    def run():
        try:
            manager.download("slow")
        except DownloadCancelled as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while manager.status("slow").state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.cancel("slow")
    thread.join(10)
    assert errors and manager.status("slow").state == "cancelled"
    assert not manager.path("slow").exists()
    assert not manager.cancel("slow")  # nothing running any more


def test_offline_without_weights_says_what_to_download_and_where(tmp_path):
    manager = WeightsManager(tmp_path)
    with pytest.raises(WeightsUnavailableError) as info:
        manager.ensure("vit_t", download_missing=False)
    message = str(info.value)
    assert OFFICIAL_WEIGHTS["vit_t"].url in message
    assert str(tmp_path / "sam" / "mobile_sam.pt") in message
    assert "CELLSPARSE_SAM_CHECKPOINT" in message


def test_hand_placed_file_with_wrong_size_is_refused(tmp_path):
    manager = WeightsManager(tmp_path)
    manager.directory.mkdir(parents=True)
    (manager.directory / "mobile_sam.pt").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="incomplete or a different file"):
        manager.ensure("vit_t", download_missing=False)


def test_annotator_falls_back_offline_and_says_so(tmp_path):
    cfg = SamConfig(model_type="vit_t", download=False)
    annotator = SamAnnotator(cfg, weights=WeightsManager(tmp_path))
    assert annotator.is_fallback and annotator.model_name == "fallback"
    assert "mobile_sam.pt" in annotator.notice and "not from SAM" in annotator.notice
    strict = SamAnnotator(cfg.replace(fallback_if_unavailable=False),
                          weights=WeightsManager(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="mobile_sam.pt"):
        strict.load()


def test_weights_arriving_later_end_the_fallback(tmp_path):
    if importlib.util.find_spec("mobile_sam") is None:
        pytest.skip("mobilesam-mirror is not installed")
    import torch

    from cellsparse_app.sam.registry import build_network

    manager = WeightsManager(tmp_path)
    manager.register("mine", "vit_t", "https://huggingface.co/someone/mine/resolve/main/mine.pt")
    cfg = SamConfig(model_type="vit_t", weights="mine", download=False, encoder_engine="torch")
    annotator = SamAnnotator(cfg, weights=manager)
    assert annotator.is_fallback
    # e.g. downloaded through the API meanwhile, or copied into the cache by hand
    torch.save(build_network(get_backend("vit_t"), seed=1).state_dict(), manager.path("mine"))
    assert not annotator.is_fallback
    assert annotator.model_name == "mine" and annotator.notice is None


def test_missing_explicit_checkpoint_is_an_error_not_a_fallback(tmp_path):
    annotator = SamAnnotator(SamConfig(checkpoint=str(tmp_path / "nope.pt")),
                             weights=WeightsManager(tmp_path))
    with pytest.raises(ValueError, match="nope.pt does not exist"):
        annotator.load()


class _Exploit:
    def __reduce__(self):
        return (print, ("this code must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path, capsys):
    import torch

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"image_encoder.x": _Exploit()}))
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)
    assert "never run" not in capsys.readouterr().out
    good = tmp_path / "wrapped.pt"
    torch.save({"model": {"sam.image_encoder.layers.0.w": torch.zeros(2)}}, good)
    state = read_state_dict(good)
    assert list(state) == ["image_encoder.layers.0.w"]
    assert infer_model_type(state) == "vit_t"
    blocks = {f"image_encoder.blocks.{i}.w": torch.zeros(1) for i in range(12)}
    assert infer_model_type(blocks) == "vit_b"


def test_checkpoint_of_another_model_type_is_named(tmp_path):
    import torch

    path = tmp_path / "mobile.pt"
    torch.save({"image_encoder.layers.0.w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="holds vit_t weights but the model type is 'vit_b'"):
        load_weights(torch.nn.Linear(1, 1), get_backend("vit_b"), path)


def test_hand_edited_registry_cannot_point_outside_the_cache(server, tmp_path):
    import json

    from cellsparse_app.sam.checkpoints import REGISTRY_FILE

    manager = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    manager.register("vit_b_lm", "vit_b", f"{server}/good.pt")
    registry = manager.directory / REGISTRY_FILE
    entries = json.loads(registry.read_text())
    entries[0]["filename"] = "../outside.pt"
    registry.write_text(json.dumps(entries))
    reloaded = WeightsManager(tmp_path, policy=DownloadPolicy.local_testing())
    assert [s.name for s in reloaded.specs("vit_b")] == ["vit_b"]

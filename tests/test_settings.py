"""cellsparse_app.settings: every CELLSPARSE_* variable, parsed in one place."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from cellsparse_app.errors import InvalidInput
from cellsparse_app.settings import Settings, from_environment


def test_defaults_of_an_empty_environment():
    s = from_environment({})
    assert s == Settings()
    assert s.home == Path.home() / ".cellsparse"
    assert s.session_dir == Path(tempfile.gettempdir()) / "cellsparse-sessions"
    assert (s.gpu_slots, s.sam_slots, s.session_max_age_hours) == (1, 2, 24.0)
    assert s.api_token is None and s.max_image_pixels is None and s.sam_model is None
    assert not (s.sam_random_init or s.allow_sam_fallback or s.offline)
    assert s.default_cache_dir() == Path.home() / ".cache" / "cellsparse"


def test_empty_values_count_as_unset():
    assert from_environment({"CELLSPARSE_MAX_IMAGE_PIXELS": "", "CELLSPARSE_OFFLINE": " ",
                             "CELLSPARSE_SAM_MODEL": ""}) == Settings()


@pytest.mark.parametrize(
    "variable, text, field, value",
    [
        ("CELLSPARSE_HOME", "/data/cs", "home", Path("/data/cs")),
        ("CELLSPARSE_API_TOKEN", "secret-token", "api_token", "secret-token"),
        ("CELLSPARSE_MAX_BODY_MB", "8.5", "max_body_mb", 8.5),
        ("CELLSPARSE_MAX_IMAGE_PIXELS", "1000", "max_image_pixels", 1000),
        ("CELLSPARSE_MAX_TRAIN_SECONDS", "60", "max_train_seconds", 60.0),
        ("CELLSPARSE_MAX_BATCH_PIXELS", "4096", "max_batch_pixels", 4096),
        ("CELLSPARSE_SAM_RANDOM_INIT", "yes", "sam_random_init", True),
        ("CELLSPARSE_ALLOW_SAM_FALLBACK", "1", "allow_sam_fallback", True),
        ("CELLSPARSE_ALLOW_SAM_FALLBACK", "off", "allow_sam_fallback", False),
        ("CELLSPARSE_CACHE_DIR", "/c", "cache_dir", Path("/c")),
        ("XDG_CACHE_HOME", "/x", "xdg_cache_home", Path("/x")),
        ("CELLSPARSE_SAM_MODEL", " vit_b ", "sam_model", "vit_b"),
        ("CELLSPARSE_SAM_CHECKPOINT", "/w/sam.pth", "sam_checkpoint", "/w/sam.pth"),
        ("CELLSPARSE_SAM_ENCODER", "onnx", "sam_encoder", "onnx"),
        ("CELLSPARSE_SAM_ENCODER_SIDE", "512", "sam_encoder_side", 512),
        ("CELLSPARSE_OFFLINE", "TRUE", "offline", True),
        ("CELLSPARSE_SESSION_DIR", "/s", "session_dir", Path("/s")),
        ("CELLSPARSE_GPU_SLOTS", "3", "gpu_slots", 3),
        ("CELLSPARSE_SAM_SLOTS", "4", "sam_slots", 4),
        ("CELLSPARSE_SESSION_MAX_AGE_HOURS", "0.5", "session_max_age_hours", 0.5),
    ],
)
def test_each_variable(variable, text, field, value):
    assert getattr(from_environment({variable: text}), field) == value


def test_cache_dir_default_follows_xdg():
    assert from_environment({"XDG_CACHE_HOME": "/x"}).default_cache_dir() == Path("/x/cellsparse")
    both = {"XDG_CACHE_HOME": "/x", "CELLSPARSE_CACHE_DIR": "/c"}
    assert from_environment(both).default_cache_dir() == Path("/c")


@pytest.mark.parametrize(
    "variable, text, expected",
    [
        ("CELLSPARSE_MAX_IMAGE_PIXELS", "lots", "an integer"),
        ("CELLSPARSE_GPU_SLOTS", "1.5", "an integer"),
        ("CELLSPARSE_MAX_BODY_MB", "big", "a number"),
        ("CELLSPARSE_SESSION_MAX_AGE_HOURS", "soon", "a number"),
        ("CELLSPARSE_SAM_ENCODER_SIDE", "half", "an integer"),
        ("CELLSPARSE_OFFLINE", "maybe", "one of"),
    ],
)
def test_bad_values_name_the_variable(variable, text, expected):
    with pytest.raises(InvalidInput) as info:
        from_environment({variable: text})
    message = str(info.value)
    assert variable in message and expected in message and repr(text) in message


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("CELLSPARSE_SAM_SLOTS", "7")
    assert from_environment().sam_slots == 7


def test_users_take_their_values_from_it(tmp_path):
    from cellsparse_app.api.settings import ServerSettings
    from cellsparse_app.sam import SamConfig

    env = {"CELLSPARSE_HOME": str(tmp_path), "CELLSPARSE_MAX_BODY_MB": "2",
           "CELLSPARSE_CACHE_DIR": str(tmp_path / "w"), "CELLSPARSE_ALLOW_SAM_FALLBACK": "1"}
    server = ServerSettings.from_env(environ=env, port=9000)
    assert server.data_dir == tmp_path.resolve() and server.max_body_bytes == 2 * 2**20
    assert server.weights_dir == tmp_path / "w" and server.allow_sam_fallback
    assert server.port == 9000 and server.max_image_pixels == 36_000_000  # its own default
    assert ServerSettings(data_dir=tmp_path).weights_dir == tmp_path.resolve() / "weights"
    sam = SamConfig.from_env(environ={"CELLSPARSE_SAM_MODEL": "fallback",
                                      "CELLSPARSE_OFFLINE": "1"})
    assert (sam.model_type, sam.download) == ("fallback", False)

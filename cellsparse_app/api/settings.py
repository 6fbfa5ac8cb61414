"""Server settings: one frozen dataclass, from the environment and the command line."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any, Callable

#: Environment variables read by :meth:`ServerSettings.from_env`.
ENV_HOME = "CELLSPARSE_HOME"
ENV_TOKEN = "CELLSPARSE_API_TOKEN"
ENV_MAX_BODY = "CELLSPARSE_MAX_BODY_MB"
ENV_MAX_PIXELS = "CELLSPARSE_MAX_IMAGE_PIXELS"
ENV_MAX_TRAIN_SECONDS = "CELLSPARSE_MAX_TRAIN_SECONDS"
#: Test/offline-demo switch: SAM networks with random weights (masks are meaningless).
ENV_SAM_RANDOM_INIT = "CELLSPARSE_SAM_RANDOM_INIT"
#: Let the classical fallback answer SAM requests whose weights are missing (and say so).
ENV_ALLOW_SAM_FALLBACK = "CELLSPARSE_ALLOW_SAM_FALLBACK"
ENV_MAX_BATCH_PIXELS = "CELLSPARSE_MAX_BATCH_PIXELS"
#: Estimated training memory per pixel of a batch (activations, gradients, optimizer; fp32
#: U-Net of 32 base channels, measured order of magnitude), to bound what a request may ask.
BYTES_PER_BATCH_PIXEL = 2048

#: Environment variable -> (settings field, conversion of its text).
_ENV_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    ENV_TOKEN: ("token", str),
    ENV_MAX_BODY: ("max_body_bytes", lambda megabytes: int(float(megabytes) * 2**20)),
    ENV_MAX_PIXELS: ("max_image_pixels", int),
    ENV_MAX_TRAIN_SECONDS: ("max_train_seconds", float),
    ENV_MAX_BATCH_PIXELS: ("max_batch_pixels", int),
}

_TRUE = ("1", "true", "yes", "on")


def default_home() -> Path:
    """``$CELLSPARSE_HOME`` or ``~/.cellsparse``: where the server keeps models and weights."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cellsparse")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything the REST server needs to know; immutable once the app is built.

    Attributes:
        data_dir: models, SAM weights and temporary files live here and nowhere else.
        host: interface to bind; loopback by default so nothing is exposed by accident.
        port: TCP port.
        token: if set, every API request must carry it (``Authorization: Bearer <token>``,
            ``X-API-Token``, or a ``/t/<token>/`` URL prefix for clients that cannot add headers).
        max_body_bytes: larger request bodies are refused with 413 before being read.
        max_image_pixels: larger images are refused with 413 before their pixels are decoded.
        max_train_seconds: time budget cap of one training request
            (``CELLSPARSE_MAX_TRAIN_SECONDS``); a blocking training route that reaches it answers
            with what was trained (``X-Training-*`` headers) and logs it.
        max_train_steps: step cap of one training request.
        max_batch_pixels: most pixels in one training batch (``batch size x patch side^2``);
            None: from the machine's memory (:func:`machine_batch_pixels`).
        allow_sam_fallback: when the weights of the requested SAM type are missing, answer with
            the classical fallback segmenter (``sam_model: "fallback"``) instead of a 503.
            Off by default: a client asking for SAM gets SAM or an error
            (``CELLSPARSE_ALLOW_SAM_FALLBACK=1`` or ``cellsparse serve --allow-sam-fallback``).
        max_pending_jobs: training jobs allowed to wait in the queue (more: 429).
        sam_concurrency: SAM requests computed at the same time (others wait their turn).
        max_points: most SAM point prompts in one request.
        mount_ui: serve the Gradio UI at ``/ui`` when ``cellsparse_app.ui`` is available.
        sam_random_init: build SAM networks with random weights instead of downloading
            checkpoints (tests and offline demos only: masks are meaningless).
        allowed_hosts: ``Host`` header values accepted (None: only local names when bound to
            loopback, which stops DNS-rebinding attacks from web pages; anything otherwise).
        sam_encoder: SAM image-encoder engine (``torch``, ``onnx``, ``auto``); None: the SAM
            engine's choice (``CELLSPARSE_SAM_ENCODER`` or ``auto``).
    """

    data_dir: Path = dataclasses.field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_bytes: int = 128 * 2**20
    max_image_pixels: int = 36_000_000
    max_train_seconds: float = 1800.0
    max_train_steps: int = 100_000
    max_batch_pixels: int | None = None
    allow_sam_fallback: bool = False
    max_pending_jobs: int = 4
    sam_concurrency: int = 2
    max_points: int = 256
    mount_ui: bool = True
    sam_random_init: bool = False
    sam_encoder: str | None = None
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the API token must have at least 8 characters")
        for name in ("max_body_bytes", "max_image_pixels", "max_pending_jobs", "sam_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    @classmethod
    def from_env(cls, **overrides: Any) -> "ServerSettings":
        """Settings from ``CELLSPARSE_*`` environment variables; ``overrides`` (not None) win."""
        values: dict[str, Any] = {}
        for env, (field, convert) in _ENV_FIELDS.items():
            text = os.environ.get(env)
            if not text:
                continue
            try:
                values[field] = convert(text)
            except ValueError:
                raise ValueError(f"${env} must be a number, got {text!r}") from None
        if os.environ.get(ENV_SAM_RANDOM_INIT, "").lower() in _TRUE:
            values["sam_random_init"] = True
        if os.environ.get(ENV_ALLOW_SAM_FALLBACK, "").lower() in _TRUE:
            values["allow_sam_fallback"] = True
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def is_loopback(self) -> bool:
        """Whether :attr:`host` only accepts local connections."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def host_allowlist(self) -> list[str] | None:
        """``Host`` headers to accept, or None for any (see :attr:`allowed_hosts`)."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        if self.is_loopback:
            return ["127.0.0.1", "localhost", "::1", "[::1]", "testserver"]
        return None

    def batch_pixel_limit(self) -> int:
        """:attr:`max_batch_pixels`, or what half of this machine's memory allows."""
        return self.max_batch_pixels or machine_batch_pixels()

    def replace(self, **changes: Any) -> "ServerSettings":
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


def machine_memory_bytes() -> int:
    """Memory training can use: the first CUDA GPU's if present, else the RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except (ImportError, RuntimeError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def machine_batch_pixels() -> int:
    """Batch pixels that half of this machine's training memory holds (at least 1 Mpixel)."""
    return max(2**20, machine_memory_bytes() // 2 // BYTES_PER_BATCH_PIXEL)

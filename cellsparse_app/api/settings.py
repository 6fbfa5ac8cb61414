"""Server settings: one frozen dataclass, from the environment and the command line."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any, Mapping

from cellsparse_app.errors import InvalidInput
from cellsparse_app.settings import from_environment

#: Estimated training memory per pixel of a batch (activations, gradients, optimizer; fp32
#: U-Net of 32 base channels, measured order of magnitude), to bound what a request may ask.
BYTES_PER_BATCH_PIXEL = 2048


def default_home() -> Path:
    """``$CELLSPARSE_HOME`` or ``~/.cellsparse``: where the server keeps models and weights."""
    return from_environment().home


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
        cache_dir: SAM weights (and ONNX exports) cache shared with the CLI and other servers
            (``CELLSPARSE_CACHE_DIR``); None: ``<data_dir>/weights``.
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
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.token is not None and len(self.token) < 8:
            raise InvalidInput("the API token must have at least 8 characters")
        for name in ("max_body_bytes", "max_image_pixels", "max_pending_jobs", "sam_concurrency"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be in 0..65535, got {self.port}")

    @classmethod
    def from_env(cls, *, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> "ServerSettings":
        """Settings from the ``CELLSPARSE_*`` environment (:mod:`cellsparse_app.settings`;
        ``environ``: a mapping instead of ``os.environ``); ``overrides`` (not None) win."""
        env = from_environment(environ)
        values: dict[str, Any] = {
            "data_dir": env.home,
            "token": env.api_token,
            "max_body_bytes": (None if env.max_body_mb is None
                               else int(env.max_body_mb * 2**20)),
            "max_image_pixels": env.max_image_pixels,
            "max_train_seconds": env.max_train_seconds,
            "max_batch_pixels": env.max_batch_pixels,
            "sam_random_init": env.sam_random_init or None,
            "allow_sam_fallback": env.allow_sam_fallback or None,
            "cache_dir": env.cache_dir,
        }
        values.update(overrides)
        return cls(**{k: v for k, v in values.items() if v is not None})

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

    @property
    def weights_dir(self) -> Path:
        """Where SAM weights are cached: :attr:`cache_dir` or ``<data_dir>/weights``."""
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "weights"

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

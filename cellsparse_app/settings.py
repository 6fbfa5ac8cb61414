"""Every ``CELLSPARSE_*`` environment variable, read in this one place.

:func:`from_environment` parses the environment (or a dict, for tests) into a frozen
:class:`Settings`; the server, the SAM engine and the web app take their values from it instead of
reading ``os.environ`` themselves. It reads the environment anew on each call (cheap), so a value
set before a component is built is the value it sees.

=================================== ==============================================================
variable                            meaning (default)
=================================== ==============================================================
``CELLSPARSE_HOME``                 server data dir: models, weights, temporary files
                                    (``~/.cellsparse``)
``CELLSPARSE_API_TOKEN``            token every API request must carry (none: no token)
``CELLSPARSE_MAX_BODY_MB``          largest request body, MiB (server default 128)
``CELLSPARSE_MAX_IMAGE_PIXELS``     largest image, pixels (server default 36,000,000)
``CELLSPARSE_MAX_TRAIN_SECONDS``    time cap of one training request, s (server default 1800)
``CELLSPARSE_MAX_BATCH_PIXELS``     most pixels in one training batch (from the machine's memory)
``CELLSPARSE_SAM_RANDOM_INIT``      1: SAM networks with random weights, tests only (0)
``CELLSPARSE_ALLOW_SAM_FALLBACK``   1: the classical fallback answers SAM requests whose weights
                                    are missing (0: a 503)
``CELLSPARSE_CACHE_DIR``            weights cache (``$XDG_CACHE_HOME/cellsparse``, i.e.
                                    ``~/.cache/cellsparse``; the server: ``<home>/weights``)
``CELLSPARSE_SAM_MODEL``            SAM model type: vit_t, vit_b, vit_l, vit_h, fallback (vit_t)
``CELLSPARSE_SAM_CHECKPOINT``       local SAM checkpoint file (the official weights)
``CELLSPARSE_SAM_ENCODER``          SAM encoder engine: auto, torch, onnx (auto)
``CELLSPARSE_SAM_ENCODER_SIDE``     SAM encoder input side, pixels (1024)
``CELLSPARSE_OFFLINE``              1: never download weights (0)
``CELLSPARSE_SESSION_DIR``          web app's per-session folders
                                    (``<temp dir>/cellsparse-sessions``)
``CELLSPARSE_GPU_SLOTS``            web app trainings/predictions at once (1)
``CELLSPARSE_SAM_SLOTS``            web app SAM requests at once (2)
``CELLSPARSE_SESSION_MAX_AGE_HOURS`` web app session folders older than this are removed at start
                                    (24; 0 keeps them)
=================================== ==============================================================

An empty variable counts as unset. Switches accept 1/true/yes/on and 0/false/no/off; any other
value, or a number that does not parse, raises :class:`~cellsparse_app.errors.InvalidInput`
naming the variable. ``XDG_CACHE_HOME`` (not ours) is read here too, for the default cache.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from cellsparse_app.errors import InvalidInput

__all__ = ["Settings", "from_environment"]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The ``CELLSPARSE_*`` environment, parsed (see the module table for each variable).

    Fields that are None were not set: their user keeps its own default (e.g.
    :class:`~cellsparse_app.api.settings.ServerSettings`' limits, :class:`SamConfig`'s model).
    """

    home: Path = dataclasses.field(default_factory=lambda: Path.home() / ".cellsparse")
    api_token: str | None = None
    max_body_mb: float | None = None
    max_image_pixels: int | None = None
    max_train_seconds: float | None = None
    max_batch_pixels: int | None = None
    sam_random_init: bool = False
    allow_sam_fallback: bool = False
    cache_dir: Path | None = None
    xdg_cache_home: Path | None = None
    sam_model: str | None = None
    sam_checkpoint: str | None = None
    sam_encoder: str | None = None
    sam_encoder_side: int | None = None
    offline: bool = False
    session_dir: Path = dataclasses.field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "cellsparse-sessions")
    gpu_slots: int = 1
    sam_slots: int = 2
    session_max_age_hours: float = 24.0

    def default_cache_dir(self) -> Path:
        """``cache_dir`` if set, else ``$XDG_CACHE_HOME/cellsparse`` (``~/.cache/cellsparse``)."""
        if self.cache_dir is not None:
            return self.cache_dir
        return (self.xdg_cache_home or Path.home() / ".cache") / "cellsparse"


def from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """:class:`Settings` from ``environ`` (default: ``os.environ``).

    Raises:
        InvalidInput: a variable whose value does not parse (the message names it).
    """
    env = _Reader(os.environ if environ is None else environ)
    defaults = Settings()
    return Settings(
        home=env.path("CELLSPARSE_HOME") or defaults.home,
        api_token=env.text("CELLSPARSE_API_TOKEN"),
        max_body_mb=env.number("CELLSPARSE_MAX_BODY_MB", float),
        max_image_pixels=env.number("CELLSPARSE_MAX_IMAGE_PIXELS", int),
        max_train_seconds=env.number("CELLSPARSE_MAX_TRAIN_SECONDS", float),
        max_batch_pixels=env.number("CELLSPARSE_MAX_BATCH_PIXELS", int),
        sam_random_init=env.switch("CELLSPARSE_SAM_RANDOM_INIT"),
        allow_sam_fallback=env.switch("CELLSPARSE_ALLOW_SAM_FALLBACK"),
        cache_dir=env.path("CELLSPARSE_CACHE_DIR"),
        xdg_cache_home=env.path("XDG_CACHE_HOME"),
        sam_model=env.text("CELLSPARSE_SAM_MODEL"),
        sam_checkpoint=env.text("CELLSPARSE_SAM_CHECKPOINT"),
        sam_encoder=env.text("CELLSPARSE_SAM_ENCODER"),
        sam_encoder_side=env.number("CELLSPARSE_SAM_ENCODER_SIDE", int),
        offline=env.switch("CELLSPARSE_OFFLINE"),
        session_dir=env.path("CELLSPARSE_SESSION_DIR") or defaults.session_dir,
        gpu_slots=_or(env.number("CELLSPARSE_GPU_SLOTS", int), defaults.gpu_slots),
        sam_slots=_or(env.number("CELLSPARSE_SAM_SLOTS", int), defaults.sam_slots),
        session_max_age_hours=_or(env.number("CELLSPARSE_SESSION_MAX_AGE_HOURS", float),
                                  defaults.session_max_age_hours),
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Typed reads of one environment mapping; empty or blank values count as unset."""

    environ: Mapping[str, str]

    def text(self, name: str) -> str | None:
        value = (self.environ.get(name) or "").strip()
        return value or None

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser() if value else None

    def number(self, name: str, kind: Callable[[str], T]) -> T | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return kind(value)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise InvalidInput(f"${name} must be {expected}, got {value!r}") from None

    def switch(self, name: str) -> bool:
        value = (self.text(name) or "0").lower()
        if value not in _TRUE + _FALSE:
            raise InvalidInput(
                f"${name} must be one of {', '.join(_TRUE + _FALSE)}, got {value!r}")
        return value in _TRUE

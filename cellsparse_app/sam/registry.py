"""Registry of prompt backends and construction of their networks.

=========  ==================================  ===================  =======================
name       what                                Python module        package
=========  ==================================  ===================  =======================
vit_t      MobileSAM (TinyViT encoder), default ``mobile_sam``       ``mobilesam-mirror``
vit_b      SAM ViT-B                           ``segment_anything``  ``segment-anything``
vit_l      SAM ViT-L                           ``segment_anything``  ``segment-anything``
vit_h      SAM ViT-H                           ``segment_anything``  ``segment-anything``
fallback   classical threshold + watershed     (none)               (none)
=========  ==================================  ===================  =======================

A new family (e.g. SAM2) is one more :class:`BackendSpec` with its own ``family`` and a builder
in :func:`build_network`; everything above the registry talks to backends through
:class:`~cellsparse_app.sam.engine.SamEngine` or
:class:`~cellsparse_app.sam.fallback.FallbackEngine`.

Checkpoints are read with ``torch.load(weights_only=True)`` (no pickled code runs) and must match
the architecture exactly; the model type is inferred from the state dict to give a clear error.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from cellsparse_app.errors import InvalidInput, Unavailable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One prompt backend.

    Attributes:
        name: registry key (``vit_t`` ...), also the SAM model type.
        family: ``mobile_sam``, ``segment_anything`` or ``classical`` (``sam2`` later).
        module: Python module providing the architecture (None: pure numpy/scikit-image).
        package: pip package that provides ``module``.
        weights: name of the official weights (:data:`~cellsparse_app.sam.OFFICIAL_WEIGHTS`).
        cpu_engine: encoder engine that ``encoder_engine="auto"`` picks on CPU (measured with
            ``python -m bench sam``: ONNX Runtime wins for TinyViT, not for the plain ViTs).
        description: one line for people.
    """

    name: str
    family: str
    module: str | None
    package: str | None
    weights: str | None
    cpu_engine: str
    description: str

    @property
    def needs_weights(self) -> bool:
        return self.module is not None

    def is_installed(self) -> bool:
        """Whether the Python module of this backend can be imported."""
        return self.module is None or importlib.util.find_spec(self.module) is not None


class BackendUnavailableError(Unavailable):
    """The Python package of a backend is not installed; the message names it."""


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> None:
    """Add (or replace) a backend."""
    _BACKENDS[spec.name] = spec


def list_backends() -> list[str]:
    """Names of all registered backends."""
    return list(_BACKENDS)


def get_backend(name: str) -> BackendSpec:
    """The backend called ``name``.

    Raises:
        InvalidInput: (a ``ValueError``) unknown name (the message lists the available ones).
    """
    try:
        return _BACKENDS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown SAM model type {name!r}; available: {', '.join(_BACKENDS)}"
        ) from None


def _segment_anything_vit(model_type: str, description: str) -> BackendSpec:
    """One of the original SAM ViTs: one package, official weights named after the model type."""
    return BackendSpec(model_type, "segment_anything", "segment_anything", "segment-anything",
                       model_type, "torch", description)


register_backend(BackendSpec(
    "vit_t", "mobile_sam", "mobile_sam", "mobilesam-mirror", "vit_t", "onnx",
    "MobileSAM (TinyViT, 10M parameters): fast on CPU"))
register_backend(_segment_anything_vit("vit_b", "SAM ViT-B (91M parameters)"))
register_backend(_segment_anything_vit("vit_l", "SAM ViT-L (308M parameters)"))
register_backend(_segment_anything_vit(
    "vit_h", "SAM ViT-H (636M parameters): best masks, slow without a GPU"))
register_backend(BackendSpec(
    "fallback", "classical", None, None, None, "none",
    "classical local threshold + watershed (no SAM weights needed; not SAM)"))


def import_backend_module(spec: BackendSpec) -> Any:
    """Import the backend's ``build_sam`` module (with the torchvision shim first).

    Raises:
        BackendUnavailableError: the package is not installed (names the pip package).
    """
    if spec.module is None:
        raise ValueError(f"backend {spec.name!r} has no network")
    if not spec.is_installed():
        raise BackendUnavailableError(
            f"SAM backend {spec.name!r} needs the Python package {spec.package!r}: "
            f"pip install {spec.package} (or pip install 'cellsparse-app[sam]')"
        )
    from cellsparse_app.runtime.compat import ensure_torchvision

    ensure_torchvision()  # segment_anything / mobile_sam (timm) import torchvision
    return importlib.import_module(f"{spec.module}.build_sam")


def build_network(spec: BackendSpec, *, seed: int = 0) -> Any:
    """The backend's ``Sam`` module with randomly initialised weights (seeded), in eval mode."""
    import torch

    module = import_backend_module(spec)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = module.sam_model_registry[spec.name](checkpoint=None)
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a SAM checkpoint's state dict safely (``weights_only=True``).

    Accepts a plain state dict or one wrapped under ``model``/``state_dict``/``model_state``
    (micro-sam and training scripts), with an optional ``module.``/``sam.`` prefix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable PyTorch checkpoint of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}); only "
            "plain state dicts of tensors are loaded (weights_only=True)"
        ) from exc
    for key in ("model_state", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path} does not hold a state dict (got {type(data).__name__})")
    for prefix in ("module.", "sam."):
        if all(k.startswith(prefix) for k in data):
            data = {k[len(prefix):]: v for k, v in data.items()}
    return data


def infer_model_type(state_dict: dict[str, Any]) -> str | None:
    """``vit_t``/``vit_b``/``vit_l``/``vit_h`` from the encoder's keys, None if unrecognised."""
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        return "vit_t"
    blocks = {k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")}
    return {12: "vit_b", 24: "vit_l", 32: "vit_h"}.get(len(blocks))


def load_weights(model: Any, spec: BackendSpec, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` (strict).

    Raises:
        ValueError: the checkpoint is for another model type or does not match the architecture.
    """
    state = read_state_dict(path)
    found = infer_model_type(state)
    if found is not None and found != spec.name:
        raise ValueError(
            f"{path} holds {found} weights but the model type is {spec.name!r}; "
            f"use model type {found!r} (CELLSPARSE_SAM_MODEL / --sam-model)"
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        raise ValueError(f"{path} does not fit the {spec.name} architecture: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match the {spec.name} architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
        )

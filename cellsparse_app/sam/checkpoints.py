"""Known SAM checkpoints: the official ones, the cache directory, and registered extra weights.

Official checkpoints (sizes and SHA-256 as published with the files and cross-checked):

=========  ====================  =============  ===============================================
name       file                  bytes          source
=========  ====================  =============  ===============================================
vit_t      mobile_sam.pt         40,728,226     github.com/ChaoningZhang/MobileSAM (weights/)
vit_b      sam_vit_b_01ec64.pth  375,042,383    dl.fbaipublicfiles.com/segment_anything/
vit_l      sam_vit_l_0b3195.pth  1,249,524,607  dl.fbaipublicfiles.com/segment_anything/
vit_h      sam_vit_h_4b8939.pth  2,564,550,879  dl.fbaipublicfiles.com/segment_anything/
=========  ====================  =============  ===============================================

Files live in ``<cache>/sam/`` where ``<cache>`` is ``$CELLSPARSE_CACHE_DIR`` or
``$XDG_CACHE_HOME/cellsparse`` (``~/.cache/cellsparse``). Extra weights (e.g. micro-sam's
``vit_b_lm``) are registered by name with an allowlisted https URL (:func:`new_spec` checks the
request) and remembered in ``<cache>/sam/registered.json`` (:func:`read_registry`,
:func:`write_registry`). Downloading and verifying the files is
:class:`~cellsparse_app.sam.weights.WeightsManager`'s job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from cellsparse_app.json_config import JsonConfig
from cellsparse_app.sam.download import DownloadError, DownloadPolicy
from cellsparse_app.settings import from_environment

logger = logging.getLogger(__name__)

#: The variable naming the weights cache (parsed by :mod:`cellsparse_app.settings`; the name is
#: quoted in messages telling people where to put weights).
CACHE_ENV = "CELLSPARSE_CACHE_DIR"
REGISTRY_FILE = "registered.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: A registered file name: a name plus its suffix, never a path.
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: File name suffixes kept from a registered URL (anything else is saved as ``.pt``).
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


@dataclasses.dataclass(frozen=True)
class WeightSpec(JsonConfig):
    """A downloadable checkpoint.

    Attributes:
        name: unique name (official ones are named after their model type).
        model_type: backend that loads it (``vit_t``, ``vit_b`` ...).
        url: https download URL.
        filename: file name in the cache directory.
        size: exact size in bytes, when known.
        sha256: SHA-256 hex digest, when known.
        description: one line for people.
        official: shipped with cellsparse app (cannot be replaced or removed).
    """

    name: str
    model_type: str
    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    description: str = ""
    official: bool = False


OFFICIAL_WEIGHTS: dict[str, WeightSpec] = {
    "vit_t": WeightSpec(
        "vit_t", "vit_t",
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        "mobile_sam.pt", 40_728_226,
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        "MobileSAM (Zhang et al. 2023), Apache-2.0", True),
    "vit_b": WeightSpec(
        "vit_b", "vit_b", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "sam_vit_b_01ec64.pth", 375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "Segment Anything ViT-B (Kirillov et al. 2023), Apache-2.0", True),
    "vit_l": WeightSpec(
        "vit_l", "vit_l", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "sam_vit_l_0b3195.pth", 1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "Segment Anything ViT-L (Kirillov et al. 2023), Apache-2.0", True),
    "vit_h": WeightSpec(
        "vit_h", "vit_h", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "sam_vit_h_4b8939.pth", 2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "Segment Anything ViT-H (Kirillov et al. 2023), Apache-2.0", True),
}


def default_cache_dir() -> Path:
    """``$CELLSPARSE_CACHE_DIR`` or ``$XDG_CACHE_HOME/cellsparse`` (``~/.cache/cellsparse``)."""
    return from_environment().default_cache_dir()


def new_spec(name: str, model_type: str, url: str, policy: DownloadPolicy, *,
             sha256: str | None = None, size: int | None = None,
             description: str = "") -> WeightSpec:
    """The spec of extra weights to register, after checking the request.

    Raises:
        ValueError: invalid or official name, unknown model type, bad checksum format, a size
            outside the policy's cap, or a URL the policy refuses (https only, allowlisted host).
    """
    from cellsparse_app.sam.registry import get_backend

    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"invalid weights name {name!r}: 1-64 letters, digits, '_', '-', '.', starting "
            "with a letter or digit"
        )
    if name in OFFICIAL_WEIGHTS:
        raise ValueError(f"{name!r} is an official weights name; choose another name")
    if not get_backend(model_type).needs_weights:
        raise ValueError(f"model type {model_type!r} takes no weights")
    if sha256 is not None and not _SHA256.match(sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if size is not None and (size <= 0 or size > policy.max_bytes):
        raise ValueError(f"size must be in 1..{policy.max_bytes} bytes, got {size}")
    try:
        policy.check_url(url, resolve=False)
    except DownloadError as exc:
        raise ValueError(str(exc)) from exc
    suffix = Path(urlpath(url)).suffix.lower()
    filename = f"{name}{suffix if suffix in _WEIGHT_SUFFIXES else '.pt'}"
    return WeightSpec(name, model_type, url, filename, size,
                      sha256.lower() if sha256 else None, description)


def read_registry(directory: Path) -> dict[str, WeightSpec]:
    """Registered weights saved in ``directory`` (empty, with a warning, if unreadable)."""
    path = directory / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text())
        specs = [WeightSpec.from_dict(e) for e in entries]
    except (ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable %s (%s)", path, exc)
        return {}
    # A hand-edited file must not shadow official weights, bring names register() refuses, nor
    # point outside the cache directory through its file name (e.g. "../x").
    return {s.name: s for s in specs
            if s.name not in OFFICIAL_WEIGHTS and _NAME.match(s.name)
            and _FILENAME.match(s.filename)}


def write_registry(directory: Path, registered: dict[str, WeightSpec]) -> None:
    """Save the registered weights in ``directory`` (atomically: temp file + rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REGISTRY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([s.to_dict() for s in registered.values()], indent=2))
    os.replace(tmp, path)


def urlpath(url: str) -> str:
    """The path part of ``url``."""
    return urlsplit(url).path

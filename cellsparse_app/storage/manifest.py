"""What a project remembers about its images and training rounds, and the manifest file.

``project.json`` holds the image list, the channel/contrast settings and the rounds; this module
turns it into :class:`Manifest` and back, checking what could be hostile in an uploaded project
(image ids become file names).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.storage.atomic_files import write_text_atomic

FORMAT_VERSION = 1


@dataclasses.dataclass
class ImageRecord:
    """What the project knows about one image (``id`` is stable, ``name`` is for people)."""

    id: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    has_truth: bool = False

    @property
    def n_channels(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1


@dataclasses.dataclass
class RoundRecord:
    """One training round: what was trained, on what, how it went, how good it is.

    Attributes:
        index: 1, 2, ... in order of training.
        family: model family name.
        parent: round this one continued from (None: from scratch).
        steps, seconds, final_loss: training summary; ``cancelled`` if stopped early.
        n_objects, background_px: annotation totals at training time.
        metrics: per image id, ``{"annotations": {...}, "truth": {...}}`` as computed by
            ``metrics.match_labels`` against the user's annotations and the ground truth.
        history: the loss curve ``[{"step", "loss", ...}]`` of this round.
        step_cap: the steps the sparse-annotation cap allowed (None: no cap applied).
        diameter, scale: the cells' diameter in the training images and the scale the model
            works at (``TrainedModel.config``; 1: the images' own).
    """

    index: int
    family: str
    created: float = dataclasses.field(default_factory=time.time)
    parent: int | None = None
    steps: int = 0
    seconds: float = 0.0
    final_loss: float | None = None
    cancelled: bool = False
    n_objects: int = 0
    background_px: int = 0
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    step_cap: int | None = None
    diameter: float | None = None
    scale: float = 1.0


@dataclasses.dataclass
class Manifest:
    """The content of ``project.json``."""

    image_config: ImageConfig
    images: list[ImageRecord]
    rounds: list[RoundRecord]
    active_round: int | None
    next_id: int


def read_manifest(path: Path) -> Manifest:
    """Parse ``project.json``.

    Raises:
        ValueError: naming what is damaged or unsupported.
    """
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported project format {data.get('format')!r}")
        config = dict(data["image_config"])
        if config.get("channels") is not None:  # JSON lists -> the tuple the dataclass holds
            config["channels"] = tuple(int(c) for c in config["channels"])
        images = []
        for item in data["images"]:
            rec = ImageRecord(**{**item, "shape": tuple(item["shape"])})
            if not re.fullmatch(r"img\d{3,6}", rec.id):  # ids become file names
                raise ValueError(f"invalid image id {rec.id!r}")
            images.append(rec)
        return Manifest(ImageConfig.from_dict(config), images,
                        [RoundRecord(**r) for r in data["rounds"]], data["active_round"],
                        int(data["next_id"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is damaged: {exc}") from exc


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``project.json`` atomically (never a half-written file)."""
    data: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "image_config": manifest.image_config.to_dict(),
        "images": [dataclasses.asdict(r) for r in manifest.images],
        "rounds": [dataclasses.asdict(r) for r in manifest.rounds],
        "active_round": manifest.active_round,
        "next_id": manifest.next_id,
    }
    write_text_atomic(path, json.dumps(data, indent=1))

"""A trained model: network + everything needed to rebuild and run it, saved as a directory.

``directory/config.json`` holds the family name, the family's model config, the
:class:`~cellsparse_app.data.images.ImageConfig` used in training, the training history and meta
data; ``directory/weights.pt`` holds the network's ``state_dict``, loaded back with
``torch.load(weights_only=True)`` (no pickled code is ever executed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.models.base import ModelConfig, ModelFamily, get_family
from cellsparse_app.storage.atomic_files import write_atomic

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
FORMAT = "cellsparse-model"
FORMAT_VERSION = 1


@dataclasses.dataclass
class TrainedModel:
    """A network with its family, configs, history and meta data.

    Attributes:
        family: registry name of the model family.
        config: the family's model config.
        image: channels + normalisation used in training (applied again at prediction).
        network: the ``torch.nn.Module`` (in eval mode after training or loading).
        history: ``[{"step", "loss", "elapsed", "lr", "round"}, ...]`` over all training rounds.
        meta: training config of the last round, ``steps_done`` (all rounds), ``rounds``,
            ``created``, ``version``, ``cancelled``, ``device``, ``precision`` ...
    """

    family: str
    config: ModelConfig
    image: ImageConfig
    network: torch.nn.Module
    history: list[dict] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def family_impl(self) -> ModelFamily:
        """The registered :class:`~cellsparse_app.models.base.ModelFamily`."""
        return get_family(self.family)

    @property
    def steps_done(self) -> int:
        """Optimizer steps over all training rounds."""
        return int(self.meta.get("steps_done", 0))

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "model": self.config.to_dict(),
            "image": self.image.to_dict(),
            "history": self.history,
            "meta": self.meta,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/config.json`` and ``directory/weights.pt``; returns ``directory``.

        Files are written to temporary names and renamed, so a crash never leaves a half-written
        model that looks complete.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        write_atomic(directory / WEIGHTS_NAME, lambda f: torch.save(state, f))
        text = json.dumps(self.to_json(), indent=2, default=_json_default) + "\n"
        write_atomic(directory / CONFIG_NAME, lambda f: f.write(text.encode()))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "TrainedModel":
        """Rebuild a model saved by :meth:`save`.

        Args:
            directory: the model directory.
            device: where to put the network (``"auto"``, ``"cpu"``, ``"cuda"``).

        Raises:
            FileNotFoundError: the directory or one of its two files is missing.
            ValueError: unreadable/incompatible ``config.json`` or weights.
        """
        from cellsparse_app.runtime.device import resolve_device

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory {directory} does not exist")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not a model directory: {name} is missing")
        try:
            data = json.loads((directory / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{directory / CONFIG_NAME} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{directory / CONFIG_NAME} is not a cellsparse model config")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{directory} was written by a newer cellsparse (format "
                f"{data.get('format_version')}); this version reads format {FORMAT_VERSION}"
            )
        family = get_family(data["family"])
        config = family.config_cls.from_dict(data["model"])
        image = ImageConfig.from_dict(data["image"])
        torch_device = resolve_device(device)
        try:
            state = torch.load(
                directory / WEIGHTS_NAME, map_location=torch_device, weights_only=True
            )
        except Exception as exc:  # torch raises many types for corrupt or foreign files
            raise ValueError(f"cannot read {directory / WEIGHTS_NAME}: {exc}") from exc
        network = family.build(config)
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not fit its config: {exc}") from exc
        network.to(torch_device).eval()
        return cls(
            family=family.name,
            config=config,
            image=image,
            network=network,
            history=list(data.get("history", [])),
            meta=dict(data.get("meta", {})),
        )


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

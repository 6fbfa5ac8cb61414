"""What a model family is, and the registry that lists them.

A *family* (Cellpose-style flows, StarDist-style rays, ELEPHANT-style classes ...) bundles:

* a frozen config dataclass (architecture hyper-parameters, saved in ``config.json``);
* ``build(cfg)``: the ``torch.nn.Module`` (input ``(B, C, H, W)`` float, output ``(B, K, H, W)``);
* ``targets(labels, cfg)``: per-pixel training targets computed **only from annotated pixels**
  of a label patch in the -1/0/1..N convention (see :mod:`cellsparse_app.data.labels`);
* ``loss(output, target, cfg)``: a loss averaged over labelled pixels only, so that changing the
  image or labels under unlabelled (-1) pixels never changes it;
* ``postprocess(output, cfg, predict_cfg)``: raw network output of one image -> instance labels;
* optionally ``calibrate(outputs, labels, cfg)``: after training, prediction settings fitted to
  the trained network's outputs on its own annotations (kept in the config).

The training loop, tiling, persistence, CLI, UI and API are family-agnostic: adding a family is a
new module that calls :func:`register_family`.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from cellsparse_app.errors import InvalidInput
from cellsparse_app.json_config import JsonConfig

if TYPE_CHECKING:  # torch is imported lazily by families so the core imports fast
    import torch

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """Architecture settings every family has; families subclass and add their own fields.

    Attributes:
        in_channels: number of image channels the network takes.
        base_channels: width of the first U-Net level (doubles per level).
        depth: number of down-sampling levels.
        diameter: median diameter (pixels) of the annotated objects in the training images;
            ``None``: not recorded (models saved before object rescaling).
        scale: resize factor from the training images' pixels to the network's (see
            :mod:`cellsparse_app.data.object_scale`); images are resized by it before prediction.
            Models saved before it load with 1 (no rescaling).
    """

    in_channels: int = 1
    base_channels: int = 32
    depth: int = 4
    diameter: float | None = None
    scale: float = 1.0


class ModelFamily(abc.ABC):
    """Interface of a model family; see the module docstring."""

    name: ClassVar[str]
    title: ClassVar[str]  # human-readable name for menus
    #: When to pick this family, in one sentence for menus (from the README's benchmarks).
    advice: ClassVar[str] = ""
    config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    #: Peak learning rate when ``TrainConfig.learning_rate`` is ``None``.
    learning_rate: ClassVar[float] = 2e-3
    #: Steps after which a time-budgeted round on sparse annotations stops
    #: (``TrainConfig.sparse_max_steps``); ``None``: the time budget alone.
    sparse_max_steps: ClassVar[int | None] = None
    #: Config fields that :meth:`calibrate` sets after training.
    calibrated_fields: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def build(self, cfg: ModelConfig) -> "torch.nn.Module":
        """A freshly initialised network for ``cfg``."""

    @abc.abstractmethod
    def targets(self, labels: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        """``float32 (T, H, W)`` training targets for one label patch (-1/0/1..N)."""

    @abc.abstractmethod
    def loss(
        self, output: "torch.Tensor", target: "torch.Tensor", cfg: ModelConfig
    ) -> "torch.Tensor":
        """Scalar loss over labelled pixels only, for a batch of outputs and targets."""

    @abc.abstractmethod
    def postprocess(self, output: np.ndarray, cfg: ModelConfig, predict_cfg: Any) -> np.ndarray:
        """Instance labels (``uint32``, 0 background) from one image's ``float32 (K, H, W)``."""

    def calibrate(
        self, outputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: ModelConfig
    ) -> ModelConfig:
        """``cfg`` with prediction settings fitted after training (the default changes nothing).

        Args:
            outputs: the trained network's ``(K, H, W)`` outputs on crops of the training images
                that hold every annotated object whole.
            labels: the training labels (-1/0/1..N) of the same crops.
        """
        return cfg

    def size_multiple(self, cfg: ModelConfig) -> int:
        """Input sides must be multiples of this (tiles and training patches are padded to it)."""
        return 2 ** int(getattr(cfg, "depth", 0))

    def target_kinds(self, cfg: ModelConfig) -> tuple[str, ...] | None:
        """How each target channel follows geometric augmentation, or ``None`` (the default).

        ``None``: the training loop calls :meth:`targets` on every augmented label patch (pixels
        from outside the image are -1 there). A tuple, one entry per target channel, lets the loop
        compute targets once per *whole image* (so objects cut by a patch edge keep their true
        targets, and costly targets are not recomputed) and warp them with the image:
        ``"linear"`` (bilinear), ``"nearest"``, or ``"vy"``/``"vx"`` (row/column components of a
        vector field in adjacent channels, rotated and flipped with the image). Pixels warped
        from outside the image get 0 in every channel, so such a family must mark labelled pixels
        with a non-zero mask channel.
        """
        return None


_REGISTRY: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (by ``family.name``); returns it."""
    if not getattr(family, "name", None):
        raise ValueError(f"{type(family).__name__} has no name")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The registered family called ``name``.

    Raises:
        ValueError: naming the unknown family and listing the known ones.
    """
    _load_builtin_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown model family {name!r}; available: {', '.join(list_families())}"
        ) from None


def list_families() -> list[str]:
    """Names of the registered families, default first."""
    _load_builtin_families()
    return sorted(_REGISTRY, key=lambda n: (n != "cellpose", n))


def _load_builtin_families() -> None:
    # Imported here, not at module import, so ``base`` has no torch import cost.
    import importlib

    for module in BUILTIN_FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


#: Modules that register the built-in families when imported.
BUILTIN_FAMILY_MODULES: tuple[str, ...] = (
    "cellsparse_app.models.cellpose",
    "cellsparse_app.models.stardist",
    "cellsparse_app.models.elephant",
)

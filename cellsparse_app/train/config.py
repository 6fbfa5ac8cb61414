"""Training settings (:class:`TrainConfig`) and progress reports (:class:`TrainProgress`)."""

from __future__ import annotations

import dataclasses
import logging

from cellsparse_app.data.object_scale import CANONICAL_DIAMETER
from cellsparse_app.json_config import JsonConfig
from cellsparse_app.runtime.device import DEVICES, PRECISIONS

logger = logging.getLogger(__name__)

#: Time budget used when neither ``steps`` nor ``max_seconds`` is given, per device type: enough
#: for a usable model (AP@0.5 >= 0.8 on held-out DSB nuclei) within 3 minutes on 2 CPU cores.
DEFAULT_SECONDS = {"cpu": 150.0, "cuda": 30.0}
#: Annotations are *sparse* when fewer than this share of the training pixels are labelled.
SPARSE_LABELLED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How to train (saved in the model's ``config.json``).

    Attributes:
        family: model family name (see :func:`cellsparse_app.models.list_families`).
        steps: optimizer steps; ``None`` runs until the time budget.
        max_seconds: wall-clock budget for training (targets included); the calibration after
            it adds seconds (DSB nuclei: ~2 Cellpose-style, ~6 StarDist-style). ``None`` with
            ``steps=None`` means the device's default (:data:`DEFAULT_SECONDS`); ``None`` with
            ``steps`` set means no time limit. Whichever of ``steps``/``max_seconds`` comes first
            ends training.
        batch_size: patches per step.
        patch_size: side of the square training patches (rounded up to the U-Net's multiple).
        learning_rate: peak AdamW learning rate; ``None``: the model family's
            (:attr:`~cellsparse_app.models.base.ModelFamily.learning_rate`). The trained model's
            ``meta["train"]`` records the value used.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up, counted over the model's whole life, so
            continued training does not warm up again.
        final_lr_fraction: the cosine schedule of each round decays to this fraction of the peak.
        seed: seeds weights, patch sampling and augmentation (same seed and steps, same model).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (fp16 AMP on CUDA, bf16 only on CPUs with native bf16, else fp32),
            ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
        foreground_fraction: share of patches centred on an annotated cell (the rest are centred
            on any labelled pixel, usually background).
        rotate: random rotations by any angle.
        flip: random mirror flips.
        scale_range: random zoom range (log-uniform); 1 keeps the pixel size.
        intensity: strength of the random contrast/brightness changes (0 disables them).
        log_every: report progress (and record history) every this many steps.
        diameter: diameter (pixels) of the cells in the training images; ``None``: measured, the
            median over the annotated cells
            (:func:`cellsparse_app.data.object_scale.median_diameter`).
        object_diameter: diameter the cells are resized to for the network (the model records
            the scale, ``object_diameter / diameter``, and predicts at it); ``None``: no
            rescaling (scale 1). Continued training keeps the initial model's scale.
        upscale: also enlarge cells smaller than ``object_diameter`` (by default only larger
            cells are shrunk: enlarging small nuclei adds no detail, costs time, and measured
            worse, see the README's benchmark section).
        sparse_max_steps: when ``steps`` is ``None`` and the annotations are sparse (fewer than
            :data:`SPARSE_LABELLED_FRACTION` of the training pixels labelled), the round ends
            after at most this many steps even if time is left: from a few annotated cells the
            network over-fits and drifts on the unlabelled rest with longer training (see
            :attr:`~cellsparse_app.models.base.ModelFamily.sparse_max_steps`). ``None``: the
            model family's cap; ``0``: no cap. An explicit ``steps`` is always trained in full.
    """

    family: str = "cellpose"
    steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 8
    patch_size: int = 128
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    final_lr_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    foreground_fraction: float = 0.5
    rotate: bool = True
    flip: bool = True
    scale_range: tuple[float, float] = (0.7, 1.4)
    intensity: float = 0.25
    log_every: int = 10
    diameter: float | None = None
    object_diameter: float | None = CANONICAL_DIAMETER
    upscale: bool = False
    sparse_max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds!r}")
        if self.sparse_max_steps is not None and (
            not isinstance(self.sparse_max_steps, int) or isinstance(self.sparse_max_steps, bool)
            or self.sparse_max_steps < 0
        ):
            raise ValueError(
                f"sparse_max_steps must be an integer >= 0 or None, got {self.sparse_max_steps!r}"
            )
        for name in ("batch_size", "warmup_steps", "log_every"):
            value = getattr(self, name)
            low = 0 if name == "warmup_steps" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.patch_size, int) or self.patch_size < 16:
            raise ValueError(f"patch_size must be an integer >= 16, got {self.patch_size!r}")
        if (self.learning_rate is not None and not self.learning_rate > 0) or self.weight_decay < 0:
            raise ValueError(
                f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate}, "
                f"{self.weight_decay}"
            )
        if not 0 <= self.final_lr_fraction <= 1 or not 0 <= self.foreground_fraction <= 1:
            raise ValueError("final_lr_fraction and foreground_fraction must be in [0, 1]")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {low, high}")
        if self.intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {self.intensity}")
        for name in ("diameter", "object_diameter"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be > 0 pixels or None, got {value!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )

    def budget(
        self, device_type: str, labelled_fraction: float | None = None
    ) -> tuple[int | None, float | None]:
        """``(steps, max_seconds)`` actually applied on a device of ``device_type``.

        ``labelled_fraction`` (share of the training pixels that are labelled, see
        :func:`labelled_fraction`) below :data:`SPARSE_LABELLED_FRACTION` caps a round without
        explicit ``steps`` at :meth:`sparse_step_cap`.
        """
        steps, seconds = self.steps, self.max_seconds
        if steps is None and seconds is None:
            seconds = DEFAULT_SECONDS.get(device_type, DEFAULT_SECONDS["cpu"])
        if (steps is None and labelled_fraction is not None
                and labelled_fraction < SPARSE_LABELLED_FRACTION):
            steps = self.sparse_step_cap()
        return steps, seconds

    def sparse_step_cap(self) -> int | None:
        """Step cap of a time-budgeted round on sparse annotations (``None``: no cap)."""
        cap = self.sparse_max_steps
        if cap is None:
            from cellsparse_app.models import get_family

            cap = get_family(self.family).sparse_max_steps
        return cap or None

    def peak_learning_rate(self) -> float:
        """``learning_rate``, or the family's own default where it is ``None``."""
        if self.learning_rate is not None:
            return self.learning_rate
        from cellsparse_app.models import get_family

        return get_family(self.family).learning_rate


def labelled_fraction(labels) -> float:
    """Share of the pixels of ``labels`` (label images, -1 unlabelled) that are labelled."""
    total = sum(int(lab.size) for lab in labels)
    return sum(int((lab >= 0).sum()) for lab in labels) / total if total else 0.0


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """One progress report.

    Attributes:
        step: steps done in this call.
        total_steps: steps planned (``None`` when the time budget decides).
        loss: mean training loss over the steps since the last report.
        elapsed: seconds since the call started.
        lr: current learning rate.
        done: last report of the call.
        cancelled: training was stopped by ``should_stop``.
        fraction: estimated share of the budget (steps or time) used, in ``[0, 1]``.
    """

    step: int
    total_steps: int | None
    loss: float
    elapsed: float
    lr: float
    done: bool = False
    cancelled: bool = False
    fraction: float = 0.0

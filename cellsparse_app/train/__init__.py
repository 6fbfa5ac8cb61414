"""Sparse-label training.

Public API::

    from cellsparse_app.train import TrainConfig, TrainProgress, train, train_iter

    model = train(images, labels, TrainConfig(max_seconds=120), progress=print)
    model.save("my_model")            # -> my_model/config.json + my_model/weights.pt

``images``: sequence of ``(H, W)``/``(H, W, C)`` arrays (any dtype);
``labels``: matching ``int32`` label images, -1 unlabelled / 0 background / 1..N instances.
With no ``steps`` and no ``max_seconds`` training runs for a device-dependent time budget
(:data:`~cellsparse_app.train.config.DEFAULT_SECONDS`).
"""

from cellsparse_app.models.trained import TrainedModel
from cellsparse_app.train.config import DEFAULT_SECONDS, TrainConfig, TrainProgress
from cellsparse_app.train.loop import train, train_iter

__all__ = [
    "DEFAULT_SECONDS",
    "TrainConfig",
    "TrainProgress",
    "TrainedModel",
    "train",
    "train_iter",
]

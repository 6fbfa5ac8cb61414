"""Sparse-label training (contract; implemented in ``config.py``/``loop.py``).

Public API::

    from cellsparse_app.train import TrainConfig, TrainProgress, train, train_iter

    model = train(images, labels, TrainConfig(max_seconds=120), progress=print)
    model.save("my_model")            # -> my_model/config.json + my_model/weights.pt

``images``: sequence of ``(H, W)``/``(H, W, C)`` arrays (any dtype);
``labels``: matching ``int32`` label images, -1 unlabelled / 0 background / 1..N instances.
"""

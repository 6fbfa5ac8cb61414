"""cellsparse app: build a cell-segmentation model from a handful of sparse annotations.

The core (``io``, ``labels``, ``sam``, ``models``, ``train``, ``predict``, ``metrics``, ``export``,
``config``) never imports a front end; ``ui/``, ``api/`` and ``cli.py`` are thin adapters on top.
"""

__version__ = "0.1.0"

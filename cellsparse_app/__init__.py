"""cellsparse app: build a cell-segmentation model from a handful of sparse annotations.

One folder per concern: ``data/`` (images, labels, annotations, metrics, export), ``models/``
(network families), ``train/``, ``predict.py``, ``sam/`` (Segment Anything prompts),
``storage/`` (projects and named models on disk), ``session/`` (one user's interactive work),
``jobs/`` (REST training jobs and the shared training slot), ``runtime/`` (device, threads).
The core never imports a front end; ``ui/``, ``api/`` and ``cli.py`` are thin adapters on top
(``tests/test_architecture.py`` checks both rules).
"""

__version__ = "0.1.0"

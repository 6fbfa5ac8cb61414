"""Load the annotated sample data sets (``shared/data/*.npz``) used by tests and benchmarks.

Each archive holds ``images`` (object array of 2-D or H×W×3 arrays), ``masks`` (dense instance
labels, 0 background, 1..N cells), ``names`` and ``info`` (JSON: source, license, modality).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Environment variable overriding where the ``*.npz`` data sets are looked up.
DATA_DIR_ENV = "CELLSPARSE_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One annotated image: ``image`` (native dtype), ``mask`` (dense 0/1..N), ``name``."""

    image: np.ndarray
    mask: np.ndarray
    name: str


def default_data_dir() -> Path:
    """``$CELLSPARSE_DATA_DIR`` or ``shared/data`` beside the repository checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_dataset(name: str, data_dir: str | Path | None = None) -> tuple[list[Sample], dict]:
    """Load ``<data_dir>/<name>.npz`` as a list of :class:`Sample` plus its ``info`` dict.

    Raises:
        FileNotFoundError: naming the path that was looked for.
    """
    path = Path(data_dir or default_data_dir()) / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"data set {name!r} not found at {path} (set ${DATA_DIR_ENV})")
    with np.load(path, allow_pickle=True) as z:
        images, masks, names = z["images"], z["masks"], z["names"]
        info = json.loads(str(z["info"]))
    samples = [
        Sample(image=np.asarray(i), mask=np.asarray(m).astype(np.int32), name=str(n))
        for i, m, n in zip(images, masks, names)
    ]
    return samples, info

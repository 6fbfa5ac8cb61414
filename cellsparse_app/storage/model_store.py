"""Named trained models kept in a data directory, safely.

Layout: ``<root>/models/<family>/<name>/`` holding what :meth:`TrainedModel.save` writes
(``config.json`` + ``weights.pt``). Used by the REST API and the UI alike.

Safety rules, because names come from the network:

* model and family names must match :data:`NAME_PATTERN` (letters, digits, ``_ . -``; no path
  separators, no leading dot), so ``../../etc`` or ``/tmp/x`` are rejected with
  :class:`~cellsparse_app.errors.InvalidInput` (a ``ValueError``);
* every path is resolved and checked to lie inside ``root`` (symlinks cannot escape);
* saving is atomic: the model is written to a temporary sibling directory and swapped in with
  ``os.replace``, so a crash or a failed save never leaves a half-written model, and the previous
  model survives until the new one is complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellsparse_app.errors import InvalidInput, InvalidType, MissingFile

if TYPE_CHECKING:  # torch-heavy; imported lazily
    from cellsparse_app.models.trained import TrainedModel

logger = logging.getLogger(__name__)

#: What a model or family name may look like: 1-64 characters, starting with a letter or digit.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_TRASH_PREFIX = ".trash-"


def validate_name(name: Any, what: str = "model name") -> str:
    """Return ``name`` if it is a safe model/family name.

    Raises:
        InvalidType: (a ``TypeError``) ``name`` is not a string.
        InvalidInput: (a ``ValueError``) naming the rejected value and the allowed pattern.
    """
    if not isinstance(name, str):
        raise InvalidType(f"{what} must be a string, got {type(name).__name__}")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (no '/' or '..')"
        )
    return name


class ModelStore:
    """Named models of each family under ``root/models``; thread safe.

    Args:
        root: the data directory; created if missing. Nothing is ever written outside it.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._recover()

    # -- paths ------------------------------------------------------------------------------
    def path(self, family: str, name: str) -> Path:
        """Directory of model ``name`` of ``family`` (may not exist); validates both names."""
        validate_name(family, "model family")
        validate_name(name)
        path = (self.models_dir / family / name).resolve()
        if not path.is_relative_to(self.models_dir):
            raise InvalidInput(f"model path for {family}/{name} escapes the data directory")
        return path

    def exists(self, family: str, name: str) -> bool:
        """Whether a complete model ``family/name`` is stored."""
        return (self.path(family, name) / "config.json").is_file()

    # -- read -------------------------------------------------------------------------------
    def load(self, family: str, name: str, device: str = "cpu") -> "TrainedModel":
        """Load a stored model.

        Raises:
            MissingFile: (a ``FileNotFoundError``) naming the missing model.
        """
        with self._lock:
            if not self.exists(family, name):
                raise MissingFile(
                    f"no {family} model named {name!r}; train one first (stored: "
                    f"{', '.join(self.names(family)) or 'none'})"
                )
            from cellsparse_app.models.trained import TrainedModel

            return TrainedModel.load(self.path(family, name), device=device)

    def names(self, family: str) -> list[str]:
        """Sorted names of the stored models of ``family``."""
        validate_name(family, "model family")
        base = self.models_dir / family
        if not base.is_dir():
            return []
        return sorted(
            p.name
            for p in base.iterdir()
            if p.is_dir() and NAME_PATTERN.fullmatch(p.name) and (p / "config.json").is_file()
        )

    def list(self) -> list[dict[str, Any]]:
        """``[{"family", "name", "modified", "bytes"}]`` for every stored model."""
        out = []
        with self._lock:
            for fam_dir in sorted(self.models_dir.iterdir()):
                if not (fam_dir.is_dir() and NAME_PATTERN.fullmatch(fam_dir.name)):
                    continue
                for name in self.names(fam_dir.name):
                    path = fam_dir / name
                    files = [f for f in path.iterdir() if f.is_file()]
                    out.append(
                        {
                            "family": fam_dir.name,
                            "name": name,
                            "modified": max(f.stat().st_mtime for f in files),
                            "bytes": sum(f.stat().st_size for f in files),
                        }
                    )
        return out

    def zip(self, family: str, name: str) -> bytes:
        """The stored model directory as zip bytes (``config.json``, ``weights.pt`` ...)."""
        from cellsparse_app.storage.model_zip import zip_model

        with self._lock:
            if not self.exists(family, name):
                raise MissingFile(f"no {family} model named {name!r}")
            return zip_model(self.path(family, name))

    # -- write ------------------------------------------------------------------------------
    def save(self, family: str, name: str, model: "TrainedModel") -> Path:
        """Store ``model`` as ``family/name`` atomically, replacing any previous one."""
        final = self.path(family, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        try:
            model.save(tmp)
            if not (tmp / "config.json").is_file():
                raise RuntimeError(f"saving model {family}/{name} wrote no config.json")
            with self._lock:
                old = None
                if final.exists():
                    old = final.parent / f"{_OLD_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
                    os.replace(final, old)
                os.replace(tmp, final)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved %s model %r to %s", family, name, final)
        return final

    def delete(self, family: str, name: str) -> bool:
        """Remove model ``family/name``; returns whether there was one."""
        path = self.path(family, name)
        with self._lock:
            if not path.exists():
                return False
            trash = path.parent / f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, trash)  # atomic: readers never see a half-deleted model
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted %s model %r", family, name)
        return True

    def _recover(self) -> None:
        """Finish swaps interrupted by a crash: restore ``.old-`` dirs whose model is missing."""
        for fam_dir in self.models_dir.iterdir():
            if not fam_dir.is_dir():
                continue
            for entry in fam_dir.iterdir():
                if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.name.startswith(_OLD_PREFIX):
                    name = entry.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
                    target = fam_dir / name
                    if NAME_PATTERN.fullmatch(name) and not target.exists():
                        os.replace(entry, target)
                        logger.warning(
                            "restored model %s/%s after an interrupted save", fam_dir.name, name
                        )
                    else:
                        shutil.rmtree(entry, ignore_errors=True)

"""The core's error hierarchy: each class is also the built-in its old callers catch."""

from __future__ import annotations

import pytest

from cellsparse_app.errors import (
    CellsparseError,
    InvalidInput,
    InvalidType,
    MissingFile,
    NotFound,
    QueueFull,
    Unavailable,
)
from cellsparse_app.jobs.runner import QueueFullError, ShuttingDownError


@pytest.mark.parametrize(
    "cls, builtins",
    [
        (InvalidInput, (ValueError,)),
        (InvalidType, (InvalidInput, ValueError, TypeError)),
        (NotFound, (KeyError, LookupError)),
        (MissingFile, (NotFound, KeyError, FileNotFoundError, OSError)),
        (QueueFull, (RuntimeError,)),
        (Unavailable, (RuntimeError,)),
        (QueueFullError, (QueueFull, RuntimeError)),
        (ShuttingDownError, (Unavailable, RuntimeError)),
    ],
)
def test_hierarchy(cls, builtins):
    error = cls("message")
    assert isinstance(error, CellsparseError)
    for base in builtins:
        assert isinstance(error, base), base


def test_not_found_reads_as_given_not_repr_quoted():
    assert str(NotFound("no training job with id 'x'")) == "no training job with id 'x'"
    assert str(KeyError("x")) == "'x'"  # what NotFound avoids
    assert str(MissingFile("no cellpose model named 'm'")) == "no cellpose model named 'm'"
    with pytest.raises(KeyError, match="^no job$"):
        raise NotFound("no job")


def test_unrelated_errors_are_not_part_of_it():
    assert not isinstance(KeyError("k"), CellsparseError)
    assert not isinstance(ValueError("v"), InvalidInput)
    assert not issubclass(InvalidInput, NotFound)


def test_core_sites_raise_the_hierarchy(tmp_path):
    from cellsparse_app.jobs.runner import JobRunner
    from cellsparse_app.models import get_family
    from cellsparse_app.sam import get_backend
    from cellsparse_app.storage.model_store import ModelStore, validate_name

    store = ModelStore(tmp_path)
    with pytest.raises(MissingFile, match="no cellpose model named 'nope'"):
        store.load("cellpose", "nope")
    with pytest.raises(InvalidInput, match="invalid model name"):
        validate_name("../x")
    with pytest.raises(InvalidType, match="must be a string"):
        validate_name(3)
    runner = JobRunner(store)
    with pytest.raises(NotFound, match="no training job with id 'nope'"):
        runner.get("nope")
    with pytest.raises(NotFound):
        runner.resume("nope")
    runner.shutdown()
    with pytest.raises(InvalidInput, match="vit_zz"):
        get_backend("vit_zz")
    with pytest.raises(InvalidInput, match="unknown model family"):
        get_family("nonesuch")

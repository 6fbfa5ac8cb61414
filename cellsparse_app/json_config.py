"""Frozen, JSON-serialisable configuration dataclasses.

Every concern has one frozen dataclass (``TrainConfig``, ``PredictConfig``, a model family's
config, ``SamConfig`` ...). They subclass :class:`JsonConfig` to get a JSON round trip, which is how
a model directory stores everything needed to rebuild and run a model (``config.json`` beside the
weights).

:func:`config_from_values` builds any of these (or another frozen dataclass) from values a user
gave (a request body, command-line options): the one place that skips unset values and refuses
or drops unknown names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping, TypeVar

from cellsparse_app.errors import InvalidInput

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="JsonConfig")
D = TypeVar("D")


def config_from_values(cls: type[D], values: Mapping[str, Any], *, ignore_unknown: bool = False,
                       base: D | None = None) -> D:
    """The frozen dataclass ``cls`` built from user ``values``.

    Values that are None mean "not given": the field keeps its default (or ``base``'s value).
    Set a field to None on purpose with ``.replace`` afterwards.

    Args:
        cls: a dataclass type (a :class:`JsonConfig` or any other).
        values: field name -> value, e.g. a request body or parsed options.
        ignore_unknown: drop names that are not fields of ``cls`` (wire formats that carry
            fields of other tools) instead of refusing them.
        base: start from this instance instead of ``cls()``'s defaults.

    Raises:
        InvalidInput: unknown names (unless ``ignore_unknown``), listing them and the allowed
            ones; the dataclass's own checks raise what they raise.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config_from_values needs a dataclass type, got {cls!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown and not ignore_unknown:
        raise InvalidInput(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                           f"allowed: {', '.join(names)}")
    given = {k: v for k, v in values.items() if k in names and v is not None}
    if base is not None:
        return dataclasses.replace(base, **given)
    return cls(**given)


@dataclasses.dataclass(frozen=True)
class JsonConfig:
    """Base class: ``to_dict``/``from_dict``/``save``/``load`` and ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build from a dict; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__} expects a dict, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        kwargs = {}
        for key, value in data.items():
            # JSON has no tuples: give tuple-typed fields their tuples back.
            if isinstance(value, list) and "tuple" in str(names[key].type):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, JsonConfig):
        return value.to_dict()
    return value

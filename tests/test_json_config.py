"""config_from_values: the one way user values become a frozen config."""

from __future__ import annotations

import dataclasses

import pytest

from cellsparse_app.errors import InvalidInput
from cellsparse_app.json_config import JsonConfig, config_from_values


@dataclasses.dataclass(frozen=True)
class Demo(JsonConfig):
    steps: int = 10
    rate: float = 0.5
    name: str | None = "a"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_builds_the_dataclass_and_skips_unset_values():
    cfg = config_from_values(Demo, {"steps": 3, "rate": None})
    assert cfg == Demo(steps=3, rate=0.5)
    assert config_from_values(Demo, {}) == Demo()


def test_unknown_names_are_refused_naming_them_and_the_allowed_ones():
    with pytest.raises(InvalidInput) as info:
        config_from_values(Demo, {"steps": 3, "stpes": 4, "zzz": 1})
    message = str(info.value)
    assert "stpes, zzz" in message and "allowed: steps, rate, name" in message
    assert isinstance(info.value, ValueError)


def test_unknown_names_can_be_dropped():
    assert config_from_values(Demo, {"steps": 2, "output_type": "x"},
                              ignore_unknown=True) == Demo(steps=2)


def test_base_instead_of_defaults():
    base = Demo(steps=7, rate=0.1)
    assert config_from_values(Demo, {"rate": 0.2, "name": None}, base=base) == Demo(7, 0.2, "a")


def test_the_dataclass_checks_still_run():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        config_from_values(Demo, {"steps": 0})


def test_plain_dataclasses_work_and_non_dataclasses_are_a_bug():
    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int = 1

    assert config_from_values(Plain, {"x": 2}) == Plain(2)
    with pytest.raises(TypeError, match="dataclass"):
        config_from_values(dict, {"x": 2})


def test_real_configs():
    from cellsparse_app.predict import PredictConfig
    from cellsparse_app.sam import AutoMaskConfig

    assert config_from_values(PredictConfig, {"min_size": 3, "diameter": None}).min_size == 3
    auto = config_from_values(AutoMaskConfig, {"points_per_side": 8, "output_type": "Single mask"},
                              ignore_unknown=True)
    assert auto.points_per_side == 8

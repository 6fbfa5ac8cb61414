"""Shared fixtures: real annotated data from ../shared/data (session-scoped, loaded once)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import default_data_dir, load_dataset


def _load(name: str):
    try:
        samples, _ = load_dataset(name)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return samples


@pytest.fixture(scope="session")
def data_dir():
    return default_data_dir()


@pytest.fixture(scope="session")
def dsb_fluo():
    """Fluorescence nuclei (DSB 2018), list of Sample(image, mask, name)."""
    return _load("dsb2018_fluo_dev")


@pytest.fixture(scope="session")
def usiigaci_phase():
    """Phase-contrast whole cells (Usiigaci), uint16 1022x1024."""
    return _load("usiigaci_phase_dev")


@pytest.fixture(scope="session")
def dsb_histo():
    return _load("dsb2018_histo_bf_dev")


@pytest.fixture
def rng():
    return np.random.default_rng(0)

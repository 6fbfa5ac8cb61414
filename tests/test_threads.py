"""Per-thread OpenMP limits for click decoding leave the rest of the process alone."""

from __future__ import annotations

import threading

import pytest

from cellsparse_app.sam import SamConfig
from cellsparse_app.threads import _libgomp, machine_is_busy, omp_threads


def test_limit_applies_to_the_calling_thread_only():
    torch = pytest.importorskip("torch")
    if _libgomp() is None:
        pytest.skip("no OpenMP runtime found (non-Linux PyTorch build)")
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("needs a PyTorch with at least 2 intra-op threads")
    seen = {}
    inside, checked = threading.Event(), threading.Event()

    def worker():
        with omp_threads(1):
            seen["inside"] = torch.get_num_threads()
            inside.set()
            checked.wait(30)
        seen["after"] = torch.get_num_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(30)
    assert torch.get_num_threads() == before  # the main thread is not limited meanwhile
    checked.set()
    thread.join()
    assert seen["inside"] == 1
    assert seen["after"] == before
    with omp_threads(None):
        assert torch.get_num_threads() == before


def test_busy_check_and_config():
    assert isinstance(machine_is_busy(), bool)
    assert SamConfig(decoder_threads=1).decoder_threads == 1
    with pytest.raises(ValueError, match="decoder_threads"):
        SamConfig(decoder_threads=-1)

"""Per-thread OpenMP limits for click decoding leave the rest of the process alone."""

from __future__ import annotations

import threading

import pytest

from cellsparse_app.runtime.threads import _libgomp, machine_is_busy, omp_threads
from cellsparse_app.sam import SamConfig


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


@pytest.mark.parametrize("load, cores, busy", [(0.9, 2, False), (1.1, 2, True),
                                                (3.9, 8, False), (4.5, 8, True)])
def test_machine_is_busy_above_half_the_cores(monkeypatch, load, cores, busy):
    monkeypatch.setattr("os.getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert machine_is_busy() is busy


def test_machine_is_not_busy_where_the_load_is_unknown(monkeypatch):
    def unavailable():
        raise OSError("getloadavg unavailable")

    monkeypatch.setattr("os.getloadavg", unavailable)
    assert machine_is_busy() is False


def test_clicks_decode_on_one_thread_only_when_busy(monkeypatch):
    """The engine asks for 1 OpenMP thread per click on a busy CPU, else leaves torch alone;
    a configured decoder_threads wins."""
    import types

    from cellsparse_app.sam import engine as engine_module

    fake = types.SimpleNamespace(device=types.SimpleNamespace(type="cpu"), decoder_threads=None)
    click_threads = engine_module.SamEngine._click_threads
    monkeypatch.setattr(engine_module, "machine_is_busy", lambda: True)
    assert click_threads(fake) == 1
    monkeypatch.setattr(engine_module, "machine_is_busy", lambda: False)
    assert click_threads(fake) is None
    fake.decoder_threads = 2
    assert click_threads(fake) == 2
    fake.device.type = "cuda"
    assert click_threads(fake) is None


def test_sam_config_checks_decoder_threads():
    assert SamConfig(decoder_threads=1).decoder_threads == 1
    with pytest.raises(ValueError, match="decoder_threads"):
        SamConfig(decoder_threads=-1)

"""JobRunner: queue, progress snapshots, cancel, failure, atomic save, last good model kept.

A stub training function stands in for the real one (injected like skimage injects a classifier),
so these tests check the runner's bookkeeping exactly and run in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cellsparse_app.jobs import JobRunner, QueueFullError, check_training_data
from cellsparse_app.store import ModelStore


@dataclasses.dataclass(frozen=True)
class Cfg:
    family: str = "cellpose"
    steps: int = 5


@dataclasses.dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    loss: float
    elapsed: float
    lr: float = 1e-3


class StubModel:
    def __init__(self, steps: int, cancelled: bool) -> None:
        self.meta = {"steps": steps, "cancelled": cancelled}

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.meta))
        (directory / "weights.pt").write_bytes(b"0")
        return directory


class StubTrain:
    """Records calls; each step waits on ``gate`` so tests control timing."""

    def __init__(self, fail: Exception | None = None, step_time: float = 0.0) -> None:
        self.fail = fail
        self.step_time = step_time
        self.initials = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, images, labels, cfg, *, model_config=None, image_config=None,
                 initial=None, progress=None, should_stop=None):
        self.initials.append(initial)
        for step in range(1, cfg.steps + 1):
            self.gate.wait(5)
            if should_stop():
                return StubModel(step - 1, cancelled=True)
            if self.fail is not None and step == 2:
                raise self.fail
            time.sleep(self.step_time)
            progress(Progress(step, cfg.steps, 1.0 / step, 0.01 * step))
        return StubModel(cfg.steps, cancelled=False)


def _data():
    image = np.zeros((32, 32), np.uint8)
    labels = np.full((32, 32), -1, np.int32)
    labels[:4] = 0
    labels[10:15, 10:15] = 1
    return [image], [labels]


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path)


def test_job_runs_reports_progress_and_saves(store):
    stub = StubTrain()
    runner = JobRunner(store, train_fn=stub)
    job_id = runner.submit(*_data(), Cfg(steps=5), model_name="m")
    snap = runner.wait(job_id, timeout=10)
    assert snap.state == "done" and snap.model_saved
    assert snap.step == 5 and snap.total_steps == 5 and snap.loss == pytest.approx(0.2)
    assert [s for s, _ in snap.history] == [1, 2, 3, 4, 5]
    assert snap.to_dict()["progress"] == 1.0
    assert json.loads((store.path("cellpose", "m") / "config.json").read_text())["steps"] == 5
    runner.shutdown()


def test_second_job_resumes_from_stored_model(store, monkeypatch):
    loaded = []
    monkeypatch.setattr(store, "load", lambda fam, name: loaded.append((fam, name)) or "MODEL")
    stub = StubTrain()
    runner = JobRunner(store, train_fn=stub)
    runner.wait(runner.submit(*_data(), Cfg(steps=2), model_name="m"), timeout=10)
    runner.wait(runner.submit(*_data(), Cfg(steps=2), model_name="m"), timeout=10)
    runner.wait(runner.submit(*_data(), Cfg(steps=2), model_name="m", resume=False), timeout=10)
    assert stub.initials == [None, "MODEL", None]
    assert loaded == [("cellpose", "m")]
    runner.shutdown()


def test_cancel_running_job_keeps_last_good_model(store):
    stub = StubTrain()
    runner = JobRunner(store, train_fn=stub)
    runner.wait(runner.submit(*_data(), Cfg(steps=3), model_name="m"), timeout=10)
    stub.gate.clear()
    job_id = runner.submit(*_data(), Cfg(steps=100), model_name="m", resume=False)
    deadline = time.time() + 5
    while runner.get(job_id).state != "running" and time.time() < deadline:
        time.sleep(0.01)
    runner.cancel(job_id)
    stub.gate.set()
    snap = runner.wait(job_id, timeout=10)
    assert snap.state == "cancelled" and not snap.model_saved
    assert runner.result(job_id).meta["cancelled"] is True
    # the stored model is still the one of the first (complete) job
    assert json.loads((store.path("cellpose", "m") / "config.json").read_text())["steps"] == 3
    runner.shutdown()


def test_cancel_queued_job_never_runs(store):
    stub = StubTrain()
    stub.gate.clear()
    runner = JobRunner(store, train_fn=stub, max_pending=4)
    first = runner.submit(*_data(), Cfg(steps=2), model_name="a")
    second = runner.submit(*_data(), Cfg(steps=2), model_name="b")
    assert runner.get(second).queue_position in (0, 1)
    snap = runner.cancel(second)
    assert snap.state == "cancelled"
    stub.gate.set()
    assert runner.wait(first, timeout=10).state == "done"
    assert len(stub.initials) == 1
    assert not store.exists("cellpose", "b")
    runner.shutdown()


def test_failed_job_reports_error_and_worker_survives(store):
    runner = JobRunner(store, train_fn=StubTrain(fail=ValueError("no foreground")))
    snap = runner.wait(runner.submit(*_data(), Cfg(steps=5), model_name="m"), timeout=10)
    assert snap.state == "failed" and snap.error == "no foreground"
    assert snap.error_type == "ValueError" and not store.exists("cellpose", "m")
    runner._train_fn = StubTrain()
    assert runner.wait(runner.submit(*_data(), Cfg(steps=1)), timeout=10).state == "done"
    runner.shutdown()


def test_queue_limit(store):
    stub = StubTrain()
    stub.gate.clear()
    runner = JobRunner(store, train_fn=stub, max_pending=2)
    runner.submit(*_data(), Cfg())  # picked up by the worker
    deadline = time.time() + 5
    while runner.busy()["running"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    runner.submit(*_data(), Cfg())
    runner.submit(*_data(), Cfg())
    with pytest.raises(QueueFullError, match="already waiting"):
        runner.submit(*_data(), Cfg())
    stub.gate.set()
    runner.shutdown()


def test_unknown_job_and_bad_name(store):
    runner = JobRunner(store, train_fn=StubTrain())
    with pytest.raises(KeyError, match="no training job"):
        runner.get("nope")
    with pytest.raises(ValueError, match="invalid model name"):
        runner.submit(*_data(), Cfg(), model_name="../x")
    runner.shutdown()


def test_history_is_thinned(store):
    runner = JobRunner(store, train_fn=StubTrain(), history_points=10)
    snap = runner.wait(runner.submit(*_data(), Cfg(steps=100)), timeout=10)
    assert len(snap.history) == 10
    assert snap.history[0][0] == 1 and snap.history[-1][0] == 100
    runner.shutdown()


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((32, 32), -1, np.int32), "annotate nothing"),
        (np.zeros((32, 32), np.int32), "no foreground"),
        (np.zeros((16, 16), np.int32), "does not match"),
        (np.zeros((32, 32), np.float32), "integer"),
    ],
)
def test_check_training_data(labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_training_data([np.zeros((32, 32), np.uint8)], [labels])

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

from cellsparse_app.jobs.records import check_training_data
from cellsparse_app.jobs.runner import JobRunner, QueueFullError
from cellsparse_app.storage.model_store import ModelStore


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
    runner.train_fn = StubTrain()
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


# -- issue 20: cancelled work is kept, records and queued jobs survive a restart ----------------

def _wait_state(runner, job_id, state, timeout=5.0):
    deadline = time.time() + timeout
    while runner.get(job_id).state != state and time.time() < deadline:
        time.sleep(0.01)
    assert runner.get(job_id).state == state


def test_cancelled_job_keeps_the_model_trained_so_far(store):
    stub = StubTrain(step_time=0.02)
    runner = JobRunner(store, train_fn=stub)
    job_id = runner.submit(*_data(), Cfg(steps=1000), model_name="m")
    deadline = time.time() + 5
    while runner.get(job_id).step < 3 and time.time() < deadline:
        time.sleep(0.01)
    runner.cancel(job_id)
    snap = runner.wait(job_id, timeout=10)
    assert snap.state == "cancelled" and snap.model_saved and snap.step >= 3
    assert "saved as 'm'" in snap.stop_reason and snap.cut
    stored = json.loads((store.path("cellpose", "m") / "config.json").read_text())
    assert stored == {"steps": snap.step, "cancelled": True}
    runner.shutdown()


def test_reset_cancel_discards_the_partial_model(store):
    stub = StubTrain(step_time=0.02)
    runner = JobRunner(store, train_fn=stub)
    job_id = runner.submit(*_data(), Cfg(steps=1000), model_name="m")
    _wait_state(runner, job_id, "running")
    time.sleep(0.1)
    assert runner.cancel_model("cellpose", "m") == [job_id]
    snap = runner.wait(job_id, timeout=10)
    assert snap.state == "cancelled" and not snap.model_saved
    assert not store.exists("cellpose", "m")
    runner.shutdown()


def test_records_and_queued_jobs_survive_a_restart(store, tmp_path, monkeypatch):
    from cellsparse_app.train import TrainConfig

    monkeypatch.setattr(store, "load", lambda fam, name: "MODEL")  # stub models on disk
    journal = tmp_path / "jobs"
    stub = StubTrain(step_time=0.02)
    runner = JobRunner(store, train_fn=stub, journal_dir=journal)
    done = runner.submit(*_data(), TrainConfig(steps=2), model_name="a")
    runner.wait(done, timeout=10)
    running = runner.submit(*_data(), TrainConfig(steps=1000), model_name="b")
    queued = runner.submit(*_data(), TrainConfig(steps=3), model_name="c")
    deadline = time.time() + 5
    while runner.get(running).step < 2 and time.time() < deadline:
        time.sleep(0.01)
    runner.shutdown(timeout=10)  # the server stops
    stopped = runner.get(running)
    assert stopped.state == "interrupted" and stopped.model_saved and stopped.rerunnable
    assert runner.get(queued).state == "queued"
    assert {p.name for p in journal.iterdir()} == {
        f"{done}.json", f"{running}.json", f"{running}.npz", f"{queued}.json", f"{queued}.npz"}

    again = JobRunner(store, train_fn=StubTrain(), journal_dir=journal)  # the server restarts
    states = {s.id: s.state for s in again.list()}
    assert states[done] == "done" and states[running] == "interrupted"
    assert again.wait(queued, timeout=10).state == "done"  # the queued job ran
    assert store.exists("cellpose", "c")
    resumed = again.resume(running)
    snap = again.wait(resumed, timeout=10)
    assert snap.state == "done" and snap.resumed_from == running
    assert snap.steps_requested == 1000 - stopped.step  # the steps still to do
    assert not again.get(running).rerunnable and not (journal / f"{running}.npz").exists()
    with pytest.raises(ValueError, match="done"):
        again.resume(done)
    again.shutdown()


def test_a_crash_marks_running_jobs_interrupted(store, tmp_path, monkeypatch):
    from cellsparse_app.train import TrainConfig

    monkeypatch.setattr(store, "load", lambda fam, name: "MODEL")
    journal = tmp_path / "jobs"
    stub = StubTrain()
    stub.gate.clear()
    runner = JobRunner(store, train_fn=stub, journal_dir=journal)
    job_id = runner.submit(*_data(), TrainConfig(steps=5), model_name="m")
    record = journal / f"{job_id}.json"
    deadline = time.time() + 10
    while json.loads(record.read_text())["state"] != "running" and time.time() < deadline:
        time.sleep(0.01)
    # another process reads the journal while the record still says "running" (a crash)
    after_crash = JobRunner(store, train_fn=StubTrain(), journal_dir=journal)
    snap = after_crash.get(job_id)
    assert snap.state == "interrupted" and "not saved" in snap.stop_reason and snap.rerunnable
    rerun = after_crash.resume(job_id, restart=True)
    assert after_crash.wait(rerun, timeout=10).state == "done"
    stub.gate.set()
    runner.shutdown()
    after_crash.shutdown()


def test_unreadable_records_are_skipped(store, tmp_path):
    journal = tmp_path / "jobs"
    journal.mkdir()
    (journal / "0123456789ab.json").write_text("{not json")
    (journal / ".tmp-1234-x.json").write_text("half")
    runner = JobRunner(store, journal_dir=journal)
    assert runner.list() == [] and not (journal / ".tmp-1234-x.json").exists()


def test_only_foreground_labels_are_warned_about(store):
    image, labels = _data()
    labels[0][labels[0] == 0] = -1  # no background left
    runner = JobRunner(store, train_fn=StubTrain())
    snap = runner.wait(runner.submit(image, labels, Cfg(steps=1)), timeout=10)
    assert any("no background" in w for w in snap.warnings)
    runner.shutdown()


# -- one training slot for the process: REST jobs and web-app rounds -----------------------------
class Meter:
    """Counts trainings running at the same time, in the order they started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.started: list[str] = []

    def enter(self, who: str) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(who)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


class MeteredTrain(StubTrain):
    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self.meter = meter

    def __call__(self, *args, **kwargs):
        self.meter.enter("rest")
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.meter.leave()


def _metered_train_iter(meter: Meter, gate: threading.Event, calls: list):
    def train_iter(images, labels, cfg, *, image_config=None, initial=None, should_stop=None):
        calls.append(cfg)
        meter.enter("web")
        try:
            for step in range(1, cfg.steps + 1):
                gate.wait(5)
                if should_stop():
                    return StubModel(step - 1, cancelled=True)
                yield Progress(step, cfg.steps, 1.0 / step, 0.01 * step)
            return StubModel(cfg.steps, cancelled=False)
        finally:
            meter.leave()

    return train_iter


def _project(tmp_path):
    from cellsparse_app.storage.project import Project

    project = Project(tmp_path / "project")
    image = np.zeros((64, 64), np.uint8)
    image[20:30, 20:30] = 200
    image_id = project.add_image(image, "cells")
    labels = np.full((64, 64), -1, np.int32)
    labels[14:36, 14:36] = 0
    labels[20:30, 20:30] = 1
    project.editor(image_id).replace(labels)
    project.edited(image_id)
    return project


def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rest_jobs_and_web_rounds_take_turns_and_report_positions(store, tmp_path, monkeypatch):
    from cellsparse_app import train
    from cellsparse_app.jobs.slot import TrainingSlot
    from cellsparse_app.session import rounds as hitl

    slot, meter, web_gate, calls = TrainingSlot(), Meter(), threading.Event(), []
    web_gate.set()
    monkeypatch.setattr(train, "train_iter", _metered_train_iter(meter, web_gate, calls))
    rest = MeteredTrain(meter)
    rest.gate.clear()  # the first REST job holds the slot until the test lets it go
    runner = JobRunner(store, train_fn=rest, slot=slot)
    first = runner.submit(*_data(), Cfg(steps=3), model_name="m")
    _until(lambda: runner.get(first).state == "running")

    items, outcome = [], {}
    round_run = hitl.train_round(_project(tmp_path), Cfg(steps=3), slot=slot)
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "record", _consume(round_run, items)))
    thread.start()
    _until(lambda: any(isinstance(i, hitl.Waiting) for i in items))
    waiting = next(i for i in items if isinstance(i, hitl.Waiting))
    assert waiting.ahead == 1 and waiting.text == "waiting for a free training slot: 1 ahead"
    second = runner.submit(*_data(), Cfg(steps=3), model_name="m", resume=False)  # behind it
    snap = runner.get(second)
    assert snap.state == "queued" and snap.queue_position == 1  # the web round waits ahead
    assert calls == []  # the web round has not started

    rest.gate.set()
    thread.join(10)
    assert outcome["record"] is not None and outcome["record"].steps == 3
    assert runner.wait(second, timeout=10).state == "done"
    assert runner.get(first).state == "done"
    assert meter.most == 1  # never two trainings at once
    assert meter.started == ["rest", "web", "rest"]  # first come, first served
    assert slot.status() == {"running": [], "waiting": []}
    runner.shutdown()


def _consume(gen, items):
    try:
        while True:
            items.append(next(gen))
    except StopIteration as end:
        return end.value


def test_stop_while_waiting_leaves_the_queue_without_training(store, tmp_path, monkeypatch):
    from cellsparse_app import train
    from cellsparse_app.jobs.slot import TrainingSlot
    from cellsparse_app.session import rounds as hitl

    slot, meter, calls = TrainingSlot(), Meter(), []
    monkeypatch.setattr(train, "train_iter", _metered_train_iter(meter, threading.Event(), calls))
    rest = MeteredTrain(meter)
    rest.gate.clear()
    runner = JobRunner(store, train_fn=rest, slot=slot)
    first = runner.submit(*_data(), Cfg(steps=2), model_name="m")
    _until(lambda: runner.get(first).state == "running")

    stop = threading.Event()
    project = _project(tmp_path)
    round_run = hitl.train_round(project, Cfg(steps=3), should_stop=stop.is_set, slot=slot)
    item = next(round_run)
    while not isinstance(item, hitl.Waiting):  # notices first, if any
        item = next(round_run)
    assert len(slot.status()["waiting"]) == 1
    queued = runner.submit(*_data(), Cfg(steps=2), model_name="m", resume=False)
    assert runner.get(queued).queue_position == 1  # behind the waiting web round
    stop.set()  # Workspace.request_stop
    items: list = []
    assert _consume(round_run, items) is None
    assert all(isinstance(i, hitl.Waiting) for i in items)
    assert slot.status()["waiting"] == [f"training job {queued}"]
    assert runner.get(queued).queue_position == 0  # moved up
    assert calls == [] and project.rounds == []  # never trained, no round
    rest.gate.set()
    assert runner.wait(queued, timeout=10).state == "done"
    assert meter.started == ["rest", "rest"] and meter.most == 1
    runner.shutdown()


def test_closing_a_waiting_web_round_and_cancelling_a_queued_job_free_their_places(store):
    from cellsparse_app.jobs.slot import TrainingSlot

    slot = TrainingSlot()
    holder = slot.enter("web round 1")
    assert holder.wait(0) and holder.ahead() == 0
    rest = StubTrain()
    runner = JobRunner(store, train_fn=rest, slot=slot)
    job = runner.submit(*_data(), Cfg(steps=2), model_name="m")
    other = slot.enter("web round 2")
    assert runner.get(job).queue_position == 0 and other.ahead() == 2
    runner.cancel(job)
    assert other.ahead() == 1 and slot.status()["waiting"] == ["web round 2"]
    holder.release()
    assert other.wait(1)
    other.release()
    assert slot.status() == {"running": [], "waiting": []}
    with pytest.raises(ValueError, match="capacity.*0"):
        TrainingSlot(0)
    runner.shutdown()


def test_stop_reason_names_the_sparse_step_cap():
    """A time-budgeted round that the sparse-annotation step cap ended says so, not 'time
    budget'."""
    from cellsparse_app.jobs.records import JobRecord
    from cellsparse_app.train import TrainConfig

    def record(cfg):
        return JobRecord(id="j", images=None, labels=None, config=cfg, model_name=None,
                         resume=False, model_config=None, image_config=None, initial=None)

    job = record(TrainConfig(max_seconds=150.0))
    job.describe_stop(400, cancelled=False, step_cap=400)
    assert job.stop_reason.startswith("stopped after 400 steps, the step cap for sparse")
    assert not job.cut
    job = record(TrainConfig(max_seconds=150.0))
    job.describe_stop(250, cancelled=False, step_cap=400)  # time ran out first
    assert job.stop_reason.startswith("time budget of 150 s reached after 250 steps")
    job = record(TrainConfig(steps=600))
    job.describe_stop(600, cancelled=False, step_cap=None)
    assert job.stop_reason == "all 600 requested steps done"

"""Project: images, annotations written through to disk, rounds, rollback, zip round trip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.storage.project import Project, RoundRecord


class _SavedModel:
    """Stands in for a TrainedModel: Project only calls ``save(directory)``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"tag": self.tag}))
        (directory / "weights.pt").write_bytes(b"w" * 10)
        return directory


@pytest.fixture
def sample(dsb_fluo):
    return dsb_fluo[3]  # 360x360 uint8, 30 nuclei


def test_images_and_annotations_persist(tmp_path, sample):
    p = Project(tmp_path / "p")
    a = p.add_image(sample.image, "nuclei one.png", truth=sample.mask)
    rgb = np.stack([sample.image] * 3, -1).astype(np.uint16) * 100
    b = p.add_image(rgb, "three.tif")
    assert [r.id for r in p.images] == [a, b]
    assert p.record(a).name == "nuclei_one" and p.record(b).n_channels == 3
    ed = p.editor(a)
    ed.add_foreground(sample.mask == 1)
    ed.add_background(sample.mask == 0)
    p.edited(a)
    p.set_image_config(ImageConfig(channels=(0,), lower=2.0, upper=99.0))

    again = Project(tmp_path / "p")  # a new process opening the same folder
    np.testing.assert_array_equal(again.labels(a), p.labels(a))
    np.testing.assert_array_equal(again.image(b), rgb)
    assert again.image(b).dtype == np.uint16
    np.testing.assert_array_equal(again.truth(a), sample.mask)
    assert again.truth(b) is None
    assert again.image_config == ImageConfig(channels=(0,), lower=2.0, upper=99.0)
    ids, images, labels = again.training_data()
    assert ids == [a] and images[0].shape == sample.image.shape
    assert again.totals() == {"n_objects": 1, "background_px": int((sample.mask == 0).sum()),
                              "annotated_images": 1}


def test_bad_settings_and_ids_are_refused(tmp_path, sample):
    p = Project(tmp_path / "p")
    p.add_image(sample.image, "a.png")
    with pytest.raises(ValueError, match=r"channel\(s\) \[2\] do not exist"):
        p.set_image_config(ImageConfig(channels=(2,)))
    with pytest.raises(ValueError, match="no image 'img999'"):
        p.labels("img999")
    with pytest.raises(RuntimeError, match="no model trained yet"):
        p.model_dir()
    with pytest.raises(ValueError, match="too small"):
        p.add_image(np.zeros((4, 4), np.uint8), "tiny.png")


def test_rounds_predictions_and_rollback(tmp_path, sample):
    p = Project(tmp_path / "p")
    a = p.add_image(sample.image, "a.png")
    p.editor(a).add_foreground(sample.mask == 1)
    p.edited(a)
    r1 = p.add_round(_SavedModel("one"), RoundRecord(index=1, family="cellpose", steps=5))
    p.set_prediction(a, sample.mask)
    p.set_metrics(a, "annotations", {"ap": [0.5]})
    p.editor(a).add_foreground(sample.mask == 2)
    p.edited(a)
    p.add_round(_SavedModel("two"), RoundRecord(index=2, family="cellpose", parent=1))
    assert p.active_round == 2 and p.prediction(a) is None
    prev_round, prev = p.previous_prediction(a)
    assert prev_round == 1 and (prev == sample.mask).all()
    assert json.loads((p.model_dir() / "config.json").read_text())["tag"] == "two"

    p.rollback(1)
    assert p.active_round == 1 and p.editor(a).summary().n_objects == 1
    assert p.editor(a).undo()  # rollback itself is undoable
    assert p.editor(a).summary().n_objects == 2
    assert Project(tmp_path / "p").round(1).metrics == {a: {"annotations": {"ap": [0.5]}}}
    with pytest.raises(ValueError, match="round 1 exists"):
        p.add_round(_SavedModel("x"), r1)


def test_zip_round_trip_and_hostile_archives(tmp_path, sample):
    p = Project(tmp_path / "p")
    a = p.add_image(sample.image, "a.png", truth=sample.mask)
    p.editor(a).add_foreground(sample.mask == 4)
    p.edited(a)
    p.add_round(_SavedModel("one"), RoundRecord(index=1, family="cellpose"))
    p.set_prediction(a, sample.mask)
    archive = p.save_zip(tmp_path / "saved.zip")

    q = Project.load_zip(archive, tmp_path / "q")
    np.testing.assert_array_equal(q.labels(a), p.labels(a))
    np.testing.assert_array_equal(q.prediction(a), sample.mask)
    assert q.active_round == 1 and (q.model_dir() / "weights.pt").is_file()

    with pytest.raises(ValueError, match="not empty"):
        Project.load_zip(archive, tmp_path / "q")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("../../escape.txt", b"x")
    with pytest.raises(ValueError, match="unsafe path"):
        Project.load_zip(evil, tmp_path / "r")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("images/notes.txt", b"x")
    with pytest.raises(ValueError, match="unexpected file"):
        Project.load_zip(other, tmp_path / "s")
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr("project.json", b"{not json")
    with pytest.raises(ValueError, match="damaged"):
        Project.load_zip(damaged, tmp_path / "t")

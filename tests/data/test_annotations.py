"""LabelEditor: sparse annotation edits and undo, on a real DSB nuclei annotation."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.annotations import MIN_OBJECT_PIXELS, LabelEditor


@pytest.fixture
def nuclei(dsb_fluo):
    return dsb_fluo[0].mask  # 256x256, 36 nuclei


def test_new_editor_is_all_unlabelled():
    ed = LabelEditor((20, 30))
    s = ed.summary()
    assert (s.n_objects, s.background_px, s.unlabelled_px, s.total_px) == (0, 0, 600, 600)
    assert not ed.can_undo


def test_foreground_background_and_counts(nuclei):
    ed = LabelEditor(nuclei.shape)
    assert ed.add_foreground(nuclei == 1) == 1
    assert ed.add_foreground(nuclei == 2) == 2
    n_bg = ed.add_background(nuclei == 0)
    s = ed.summary()
    assert s.n_objects == 2
    assert n_bg == s.background_px == int((nuclei == 0).sum())
    assert s.unlabelled_px == int((nuclei > 2).sum())
    assert ed.object_at(*np.argwhere(nuclei == 2)[0]) == 2


def test_background_never_overwrites_cells_and_cells_do_not_steal(nuclei):
    ed = LabelEditor(nuclei.shape)
    ed.add_foreground(nuclei == 1)
    ed.add_background(np.ones(nuclei.shape, bool))
    assert ((ed.labels == 1) == (nuclei == 1)).all()
    # A mask covering cell 1 and some more only gets the free pixels.
    grown = (nuclei == 1) | (nuclei == 3)
    new = ed.add_foreground(grown)
    assert ((ed.labels == new) == (nuclei == 3)).all()
    with pytest.raises(ValueError, match="not already in an annotated cell"):
        ed.add_foreground(nuclei == 1)


def test_delete_relabels_and_undo_restores_exactly(nuclei):
    ed = LabelEditor(nuclei.shape)
    for i in (1, 2, 3):
        ed.add_foreground(nuclei == i)
    before = ed.labels.copy()
    assert ed.delete_objects([2]) == 1
    assert sorted(np.unique(ed.labels)) == [-1, 1, 2]  # consecutive again
    assert ((ed.labels == 2) == (nuclei == 3)).all()
    assert ed.undo()
    np.testing.assert_array_equal(ed.labels, before)
    with pytest.raises(ValueError, match=r"no annotated cell with id \[7\]"):
        ed.delete_objects([7])


def test_accept_objects_and_unlabel(nuclei):
    ed = LabelEditor(nuclei.shape)
    ed.add_foreground(nuclei == 5)
    added = ed.accept_objects(nuclei.astype(np.uint32), ids=[5, 6, 7])
    assert len(added) == 2  # 5 already annotated -> skipped
    assert ed.summary().n_objects == 3
    everything = ed.accept_objects(nuclei)
    assert ed.summary().n_objects == int(nuclei.max())
    assert len(everything) == int(nuclei.max()) - 3
    erased = ed.unlabel(nuclei == 5)
    assert erased == int((nuclei == 5).sum())
    assert ed.summary().n_objects == int(nuclei.max()) - 1


def test_undo_chain_and_limits(nuclei):
    ed = LabelEditor(nuclei.shape)
    states = [ed.labels.copy()]
    for i in range(1, 6):
        ed.add_foreground(nuclei == i)
        states.append(ed.labels.copy())
    ed.clear()
    assert ed.summary().n_objects == 0
    for expected in reversed(states):  # clear, then the five additions
        assert ed.undo()
        np.testing.assert_array_equal(ed.labels, expected)
    assert not ed.undo()


def test_bad_inputs_name_the_problem():
    ed = LabelEditor((10, 10))
    with pytest.raises(ValueError, match=r"shape \(5, 5\), expected \(10, 10\)"):
        ed.add_foreground(np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="outside the 10x10 image"):
        ed.object_at(10, 0)
    small = np.zeros((10, 10), bool)
    small[0, : MIN_OBJECT_PIXELS - 1] = True
    with pytest.raises(ValueError, match="pixel"):
        ed.add_foreground(small)
    assert ed.labels.flags.writeable is False


def test_objects_table(nuclei):
    ed = LabelEditor(nuclei.shape)
    ed.add_foreground(nuclei == 4)
    ed.add_foreground(nuclei == 9)
    rows = ed.objects()
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[1]["area"] == int((nuclei == 9).sum())
    rr, cc = np.nonzero(nuclei == 9)
    assert (rows[1]["row"], rows[1]["col"]) == (round(rr.mean()), round(cc.mean()))

"""The label convention and its converters: round trips, wire format, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data import labels as L


@pytest.fixture
def sparse():
    lab = np.full((12, 12), -1, np.int32)
    lab[:6] = 0
    lab[1:3, 1:4] = 1
    lab[8:11, 2:5] = 2
    lab[8:10, 8:10] = 3
    return lab


def test_constants():
    assert (L.UNLABELLED, L.BACKGROUND) == (-1, 0)
    assert (L.WIRE_UNLABELLED, L.WIRE_BACKGROUND, L.WIRE_FIRST_INSTANCE) == (0, 1, 2)


def test_masks_round_trip(sparse):
    fg, bg = L.to_masks(sparse)
    assert len(fg) == 3 and bg.sum() == (sparse == 0).sum()
    back = L.from_masks(sparse.shape, fg, [bg])
    assert back.dtype == np.int32 and (back == sparse).all()


def test_from_masks_later_instance_wins_and_gaps_close():
    a = np.zeros((8, 8), bool)
    a[:4] = True
    b = np.zeros((8, 8), bool)
    b[:4] = True  # completely covers a
    c = np.zeros((8, 8), bool)
    c[6:, 6:] = True
    bg = np.ones((8, 8), bool)
    lab = L.from_masks((8, 8, 3), [a, b, c], [bg])
    assert sorted(np.unique(lab)) == [0, 1, 2]  # a vanished, ids renumbered
    assert (lab[:4] == 1).all() and (lab[6:, 6:] == 2).all()
    with pytest.raises(ValueError, match="foreground\\[0\\]"):
        L.from_masks((8, 8), [np.zeros((7, 8), bool)])


def test_wire_round_trip(sparse):
    wire = L.to_wire(sparse)
    assert wire.dtype == np.uint16
    assert wire[11, 11] == 0 and wire[0, 11] == 1 and wire[1, 1] == 2
    assert (L.from_wire(wire) == sparse).all()
    # Gaps in wire ids are closed; 8-bit PNG labels work too.
    gappy = wire.astype(np.uint8)
    gappy[gappy == 4] = 9
    assert sorted(np.unique(L.from_wire(gappy))) == [-1, 0, 1, 2, 3]


def test_wire_bad_inputs(sparse):
    with pytest.raises(ValueError, match="2-D integer"):
        L.from_wire(sparse.astype(float))
    with pytest.raises(ValueError, match="2-D integer"):
        L.from_wire(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="contain -3"):
        L.from_wire(np.full((4, 4), -3, np.int16))
    too_many = np.zeros((300, 300), np.int32)
    too_many.flat[:70000] = np.arange(1, 70001)
    with pytest.raises(ValueError, match="uint16"):
        L.to_wire(too_many)


def test_dense_and_instances(sparse):
    dense = np.where(sparse < 0, 0, sparse).astype(np.uint16)
    lab = L.from_dense(dense)
    assert lab.dtype == np.int32 and lab.min() == 0 and lab.max() == 3
    inst = L.to_instances(sparse)
    assert inst.dtype == np.uint16 and (inst[sparse <= 0] == 0).all() and inst.max() == 3
    # Ids beyond int32 are renumbered, never wrapped around to negative values.
    huge = dense.astype(np.uint64) * np.uint64(2**40)
    assert sorted(np.unique(L.from_dense(huge))) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="found -1"):
        L.from_dense(sparse)
    with pytest.raises(ValueError, match="2-D integer"):
        L.from_dense(dense.astype(np.float32))


def test_select_sparse(sparse):
    dense = np.where(sparse < 0, 0, sparse)
    only2 = L.select_sparse(dense, [2])
    assert sorted(np.unique(only2)) == [-1, 0, 1]
    assert (only2[dense == 2] == 1).all() and (only2[dense == 0] == 0).all()
    assert (only2[(dense == 1) | (dense == 3)] == -1).all()
    no_bg = L.select_sparse(dense, [1, 3], background=False)
    assert sorted(np.unique(no_bg)) == [-1, 1, 2] and (no_bg[dense == 0] == -1).all()
    none = L.select_sparse(dense, [])
    assert sorted(np.unique(none)) == [-1, 0]
    big = dense.astype(np.uint16)
    assert (L.select_sparse(big, np.array([3])) >= -1).all()
    assert L.select_sparse(big, [70000]).max() == 0  # absent ids select nothing, no wrap


def test_relabel_and_ids(sparse):
    lab = sparse.copy()
    lab[lab == 2] = 7
    out = L.relabel_sequential(lab)
    assert sorted(np.unique(out)) == [-1, 0, 1, 2, 3]
    assert (out[lab == 7] == 3).all() and (out[lab == 3] == 2).all()
    assert list(L.instance_ids(lab)) == [1, 3, 7]
    assert (L.relabel_sequential(sparse) == sparse).all()
    empty = L.empty_labels((5, 6, 3))
    assert empty.shape == (5, 6) and (empty == -1).all()


@pytest.mark.parametrize(
    "value, error, match",
    [
        (np.zeros((4, 4), np.float32), TypeError, "integer"),
        (np.zeros((4, 4), bool), TypeError, "integer"),
        (np.zeros((2, 4, 4), np.int32), ValueError, "2-D"),
        (np.full((4, 4), -2, np.int32), ValueError, "-2"),
        (np.full((4, 4), 2**33, np.int64), ValueError, "int32"),
    ],
)
def test_validate_labels_rejects(value, error, match):
    with pytest.raises(error, match=match):
        L.validate_labels(value)


def test_validate_labels_shape_check(sparse):
    assert L.validate_labels(sparse.astype(np.int16), shape=(12, 12, 3)).dtype == np.int32
    with pytest.raises(ValueError, match="does not match"):
        L.validate_labels(sparse, shape=(10, 12))

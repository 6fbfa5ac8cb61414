"""The benchmark harness without training: conditions, labels, split, settings, report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.__main__ import main as bench_main
from bench.conditions import (
    Condition,
    build_grid,
    build_labels,
    objects_to_keep,
    select_objects,
    split_samples,
    training_labels,
)
from bench.report import aggregate, markdown_report
from bench.sparse import BenchSettings, parse_args, parse_variant
from bench.throughput import random_patches


@pytest.mark.parametrize(
    "n, k, expected",
    [(40, "1", 1), (40, "4", 4), (3, "4", 3), (40, "16", 16), (40, "5%", 2), (10, "5%", 1),
     (133, "5%", 7), (40, "100%", 40), (0, "5%", 0)],
)
def test_objects_to_keep(n, k, expected):
    assert objects_to_keep(n, k) == expected


@pytest.mark.parametrize("k", ["0", "-1", "0%", "150%", "abc", "4.5"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        Condition(k, "bg")


def test_grid_has_dense_first_and_no_duplicate():
    grid = build_grid()
    assert grid[0].name.startswith("dense")
    assert Condition("100%", "naive") not in grid and Condition("100%", "band") not in grid
    assert len(grid) == 5 * 4 - 2
    with pytest.raises(ValueError, match="mode"):
        build_grid(["4"], ["bogus"])


def test_selection_is_random_per_seed_nested_and_shared_by_modes(dsb_fluo):
    dense = dsb_fluo[2].mask
    a0 = select_objects(dense, "4", seed=0, image_index=0)
    assert len(a0) == 4 and set(a0) <= set(np.unique(dense)[1:])
    assert list(a0) == list(select_objects(dense, "4", seed=0, image_index=0))  # seeded
    assert set(select_objects(dense, "1", 0, 0)) <= set(a0)  # nested across k
    others = [set(select_objects(dense, "4", s, 0)) for s in range(1, 6)]
    assert any(o != set(a0) for o in others)  # random per seed
    assert set(select_objects(dense, "4", 0, 1)) != set(a0) or dense.max() <= 4


def test_labels_per_mode(dsb_fluo):
    dense = dsb_fluo[0].mask
    ids = select_objects(dense, "4", 0, 0)
    chosen = np.isin(dense, ids)
    bg = build_labels(dense, ids, "bg")
    nobg = build_labels(dense, ids, "nobg")
    naive = build_labels(dense, ids, "naive")
    for lab in (bg, nobg, naive):
        assert lab.dtype == np.int32 and lab.max() == 4
        assert (lab[chosen] > 0).all() and (lab[~chosen] <= 0).all()
    assert (bg[dense == 0] == 0).all() and (bg[(dense > 0) & ~chosen] == -1).all()
    assert (nobg[~chosen] == -1).all()
    assert (naive[~chosen] == 0).all() and naive.min() == 0  # unlabelled counted as background
    band = build_labels(dense, ids, "band")
    assert (band[chosen] == bg[chosen]).all() and band.max() == 4
    ring = (band == 0)
    assert ring.any() and (dense[ring] == 0).all() and ring.sum() < (bg == 0).sum()
    from scipy import ndimage as ndi

    near = ndi.distance_transform_edt(~chosen)
    assert near[ring].max() <= 6 and (band[(near > 6)] == -1).all()
    dense_labels = build_labels(dense, np.unique(dense)[1:], "bg")
    assert (dense_labels >= 0).all() and dense_labels.max() == dense.max()


def test_training_labels_cover_every_image(dsb_fluo):
    masks = [s.mask for s in dsb_fluo[:3]]
    labs = training_labels(masks, Condition("5%", "bg"), seed=1)
    assert [lab.max() for lab in labs] == [objects_to_keep(int(m.max()), "5%") for m in masks]


def test_split_is_fixed_and_disjoint(dsb_fluo, usiigaci_phase):
    train, test = split_samples(dsb_fluo, 8, 16)
    assert len(train) == 8 and len(test) == 16
    assert not {s.name for s in train} & {s.name for s in test}
    assert [s.name for s in split_samples(dsb_fluo, 8, 16)[0]] == [s.name for s in train]
    train, test = split_samples(usiigaci_phase, 8, 16)
    assert len(train) == 1 and len(test) == 1 and train[0].name != test[0].name
    with pytest.raises(ValueError, match="at least 2"):
        split_samples(usiigaci_phase[:1], 1, 1)


def test_settings_and_arguments():
    quick = parse_args(["--quick"])
    assert quick.seconds < 10 and quick.runs() <= 12
    full = parse_args(["--families", "cellpose,stardist", "--seeds", "0,1", "--ks", "1,5%"])
    assert full.families == ("cellpose", "stardist") and full.seeds == (0, 1)
    assert full.ks == ("1", "5%") and full.runs() == 2 * 2 * 2 * 4 * 2
    variants = parse_args(["--variants", "native,d30+out", "--stain", "none"])
    assert variants.variants == ("native", "d30+out") and variants.stain == "none"
    assert parse_variant("native") == {"object_diameter": None, "resample": "labels",
                                       "stain": True, "upscale": False}
    assert parse_variant("d17+out+nostain+up") == {"object_diameter": 17.0, "resample": "output",
                                                   "stain": False, "upscale": True}
    with pytest.raises(ValueError, match="'x30'"):
        parse_args(["--variants", "x30"])
    assert parse_args(["--quick", "--steps", "50"]).steps == 50
    default = BenchSettings()
    assert default.runs() * (default.seconds + 10) < 75 * 60  # the full grid fits about an hour
    with pytest.raises(ValueError, match="k must be"):
        parse_args(["--ks", "0"])


def test_unknown_family_is_reported():
    from bench.sparse import check_families

    with pytest.raises(ValueError, match="nope"):
        check_families(["cellpose", "nope"])


def test_random_patches_pad_with_unlabelled(dsb_fluo):
    sample = dsb_fluo[0]  # 256 x 256
    x, y = random_patches([sample.image], [sample.mask], 300, 3, seed=0)
    assert x.shape == (3, 1, 300, 300) and x.dtype == np.float32
    assert all(lab.shape == (300, 300) and (lab[256:] == -1).all() for lab in y)


def test_report_from_rows():
    rows = []
    for mode, ap in (("bg", 0.8), ("naive", 0.4)):
        for seed, jitter in ((0, -0.05), (1, 0.05)):
            rows.append({"dataset": "d", "family": "cellpose", "k": "5%", "mode": mode,
                         "condition": f"k=5%, {mode}", "seed": seed, "annotated": 10,
                         "ap50": ap + jitter, "ap75": ap / 2, "train_s": 20.0, "steps": 100,
                         "patches_per_s": 40.0})
    rows.append({"dataset": "d", "family": "cellpose", "k": "100%", "mode": "bg",
                 "condition": "dense (100% + background)", "seed": 0, "annotated": 90,
                 "ap50": 0.85, "ap75": 0.5, "train_s": 20.0, "steps": 100, "patches_per_s": 40.0})
    rows.append({"dataset": "d", "family": "cellpose", "k": "1", "mode": "bg", "condition": "k=1",
                 "seed": 0, "annotated": 1, "error": "ValueError: boom"})
    agg = {(e["k"], e["mode"]): e for e in aggregate(rows)}
    assert agg[("5%", "bg")]["ap50"] == pytest.approx(0.8)
    assert agg[("5%", "bg")]["ap50_std"] == pytest.approx(0.05)
    assert agg[("1", "bg")]["failed"] == 1 and math.isnan(agg[("1", "bg")]["ap50"])
    settings = BenchSettings.quick().__dict__ | {"seeds": [0, 1]}
    text = markdown_report({"settings": settings, "rows": rows,
                            "reference": {"d/cellpose": {"patches_per_s": 20.0}},
                            "load_average": {"start": [1.5, 1.0, 0.5], "end": None}})
    assert "| d | cellpose | k=5%, bg | 10 | 0.800 ± 0.050 |" in text
    assert "2.00x" in text and "(1 failed)" in text and "[1.5, 1.0, 0.5]" in text
    assert "0.94x dense (0.850)" in text and "+0.400 vs naive (0.400)" in text


def test_training_rate_skips_start_up():
    from types import SimpleNamespace as R

    from bench.sparse import training_rate

    reports = [R(step=10, elapsed=12.0, done=False), R(step=30, elapsed=16.0, done=False),
               R(step=35, elapsed=17.5, done=True)]
    assert training_rate(reports, 8) == (35, pytest.approx(20 * 8 / 4.0))
    steps, rate = training_rate([R(step=10, elapsed=9.0, done=False),
                                 R(step=12, elapsed=10.0, done=True)], 8)
    assert steps == 12 and math.isnan(rate)  # one intermediate report: start-up dominated
    steps, rate = training_rate([R(step=0, elapsed=3.0, done=True)], 8)
    assert steps == 0 and math.isnan(rate)


def test_dispatcher(capsys):
    assert bench_main(["nonexistent"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert bench_main(["--help"]) == 0
    assert "sparse" in capsys.readouterr().out


def test_report_says_which_family_wins_where():
    from bench.report import family_lines

    def row(family, mode, seed, ap50, k="5%"):
        return {"dataset": "d", "family": family, "k": k, "mode": mode,
                "condition": f"k={k}, {mode}", "seed": seed, "annotated": 5, "ap50": ap50,
                "ap75": ap50 / 2, "train_s": 1.0, "steps": 10, "patches_per_s": 1.0}

    rows = [row("cellpose", "bg", 0, 0.80), row("cellpose", "bg", 1, 0.82),
            row("stardist", "bg", 0, 0.60), row("stardist", "bg", 1, 0.62),
            row("cellpose", "naive", 0, 0.50), row("cellpose", "naive", 1, 0.60),
            row("elephant", "naive", 0, 0.52), row("elephant", "naive", 1, 0.60),
            row("stardist", "bg", 0, 0.9, k="1")]  # one family only: no comparison
    lines = family_lines(aggregate(rows))
    assert len(lines) == 2
    assert lines[0].startswith("- d, k=5%, bg: **cellpose** wins by 0.200")
    assert "stardist 0.610 ± 0.010" in lines[0]
    assert "tie between elephant and cellpose" in lines[1]
    settings = BenchSettings.quick().__dict__ | {"seeds": [0, 1]}
    text = markdown_report({"settings": settings, "rows": rows, "reference": {}})
    assert "Which family wins where" in text and lines[0] in text

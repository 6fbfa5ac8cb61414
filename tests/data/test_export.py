"""Exports: polygons back to masks, GeoJSON, label TIFF, ImageJ ROIs, COCO, CSV, model zips."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
import roifile
import tifffile
from zip_helpers import make_zip

from cellsparse_app.data.export import (
    coco_annotations,
    labels_to_geojson_features,
    labels_to_polygons,
    masks_to_features,
    measure_objects,
    measure_objects_rows,
    rle_decode,
    rle_encode,
    write_coco,
    write_geojson,
    write_imagej_rois,
    write_label_tiff,
)
from cellsparse_app.data.polygons import mask_to_polygons, polygon_to_mask
from cellsparse_app.storage.model_zip import unzip_model, zip_model


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture
def small_labels():
    labels = np.full((20, 30), -1, np.int32)
    labels[:10] = 0
    labels[2:5, 10:16] = 1  # rows 2-4, cols 10-15
    labels[12:18, 3:9] = 2
    labels[14, 5] = -1  # a hole: outlines fill it
    return labels


def test_polygon_is_exact_pixel_outline_in_xy(small_labels):
    polys = labels_to_polygons(small_labels)
    assert sorted(polys) == [1, 2]
    ring = polys[1][0]
    assert (ring[0] == ring[-1]).all()
    xs, ys = ring[:, 0], ring[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 16, 2, 5)
    assert len(ring) == 5  # a rectangle: four corners, closed
    filled = small_labels == 2
    filled[14, 5] = True
    assert (polygon_to_mask(polys[2][0], small_labels.shape) == filled).all()


def test_parts_are_ordered_by_size():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True
    mask[10:18, 10:18] = True
    rings = mask_to_polygons(mask)
    assert len(rings) == 2
    assert (polygon_to_mask(rings[0], mask.shape) == (mask & (np.arange(20) >= 10)[:, None])).all()
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_polygons_rasterise_back_on_real_masks(dsb_fluo, usiigaci_phase):
    for sample in dsb_fluo[:4] + usiigaci_phase[:1]:
        mask = sample.mask
        polys = labels_to_polygons(mask)
        assert len(polys) == mask.max()
        exact = 0
        for idx, rings in polys.items():
            truth = mask == idx
            back = polygon_to_mask(rings[0], mask.shape)
            assert _iou(truth, back) > 0.9, (sample.name, idx)
            exact += bool((back == truth).all())
        assert exact >= 0.85 * len(polys)
        simple = labels_to_polygons(mask, simplify_tol=1.0)
        ious = []
        for idx in list(polys)[:15]:
            assert len(simple[idx][0]) <= len(polys[idx][0])
            ious.append(_iou(mask == idx, polygon_to_mask(simple[idx][0], mask.shape)))
        assert np.mean(ious) > 0.9  # a 1-pixel tolerance costs little on nuclei-sized objects


def test_geojson_features_match_samapi_shape(small_labels):
    feats = labels_to_geojson_features(small_labels, label="nucleus")
    assert len(feats) == 2
    for i, f in enumerate(feats):
        assert set(f) == {"type", "geometry", "properties"} and f["type"] == "Feature"
        assert f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and all(len(p) == 2 for p in ring)
        assert f["properties"] == {"object_idx": i, "label": "nucleus"}
    assert json.loads(json.dumps(feats)) == feats


def test_masks_to_features_keeps_properties():
    masks = [np.zeros((10, 10), bool) for _ in range(3)]
    masks[0][1:4, 1:4] = True
    masks[2][5:9, 5:9] = True  # masks[1] is empty: skipped
    feats = masks_to_features(masks, properties=[{"quality": q} for q in (0.9, 0.5, 0.7)])
    assert [f["properties"]["object_idx"] for f in feats] == [0, 2]
    assert feats[1]["properties"] == {"object_idx": 2, "label": "object", "quality": 0.7}
    with pytest.raises(ValueError, match="property"):
        masks_to_features(masks, properties=[{}])


def test_write_geojson_feature_collection(tmp_path, small_labels):
    path = write_geojson(tmp_path / "out" / "cells.geojson", small_labels, object_type="detection")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    assert data["features"][0]["properties"]["objectType"] == "detection"
    with pytest.raises(ValueError, match="object_type"):
        write_geojson(tmp_path / "x.geojson", small_labels, object_type="cells")


def test_label_tiff(tmp_path, small_labels):
    inst = tifffile.imread(write_label_tiff(tmp_path / "l.tif", small_labels))
    assert inst.dtype == np.uint16 and inst.max() == 2 and (inst[small_labels < 0] == 0).all()
    path = write_label_tiff(tmp_path / "s.tif", small_labels, keep_unlabelled=True)
    sparse = tifffile.imread(path)
    assert sparse.dtype == np.int32 and (sparse == small_labels).all()
    with pytest.raises(TypeError):
        write_label_tiff(tmp_path / "f.tif", small_labels.astype(float))


def test_imagej_rois(tmp_path, dsb_fluo):
    mask = dsb_fluo[0].mask
    path = write_imagej_rois(tmp_path / "rois.zip", mask)
    write_imagej_rois(path, mask)  # overwriting does not append
    rois = roifile.roiread(path)
    assert len(rois) == mask.max()
    assert rois[0].name == "cell_01" and rois[0].roitype == roifile.ROI_TYPE.POLYGON
    for k in (0, len(rois) // 2):
        back = polygon_to_mask(rois[k].coordinates(), mask.shape)
        assert _iou(back, mask == k + 1) > 0.9
    with pytest.raises(ValueError, match="no objects"):
        write_imagej_rois(tmp_path / "none.zip", np.zeros((10, 10), np.int32))


def test_rle_matches_pycocotools_strings():
    # Reference strings produced by pycocotools.mask.encode for the same masks.
    m = np.zeros((7, 9), bool)
    m[1:4, 2:6] = True
    m[5, 7] = m[6, 0] = True
    assert rle_encode(m) == "6182L00000;NI"
    assert (rle_decode("6182L00000;NI", m.shape) == m).all()
    from skimage.draw import disk

    m = np.zeros((64, 80), bool)
    m[disk((30, 40), 20)] = True
    m[0, 0] = True
    ref = ("01gZ1<jfN4L4M2M4M2N2O0O2N2O0O2O0O2O000000000000000000000001N101N101N2N101N2N"
           "3L3N3L4LZW1")
    assert rle_encode(m) == ref
    with pytest.raises(ValueError):
        rle_decode(ref, (10, 10))


def test_coco_structure(tmp_path, dsb_fluo):
    masks = [s.mask for s in dsb_fluo[:2]]
    coco = coco_annotations(masks, ["a.png", "b.png"])
    assert [im["file_name"] for im in coco["images"]] == ["a.png", "b.png"]
    assert coco["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    anns = coco["annotations"]
    assert len(anns) == masks[0].max() + masks[1].max()
    assert len({a["id"] for a in anns}) == len(anns)
    a = anns[0]
    truth = masks[0] == 1
    rows, cols = np.nonzero(truth)
    assert a["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                         rows.max() - rows.min() + 1]
    assert a["area"] == truth.sum() and a["iscrowd"] == 0 and a["category_id"] == 1
    seg = a["segmentation"]
    assert (rle_decode(seg["counts"], tuple(seg["size"])) == truth).all()
    poly = coco_annotations(masks[:1], segmentation="polygon")["annotations"][0]["segmentation"]
    ring = np.array(poly[0]).reshape(-1, 2)
    assert _iou(polygon_to_mask(ring, truth.shape), truth) > 0.9
    data = json.loads(write_coco(tmp_path / "c.json", masks[0]).read_text())
    assert len(data["annotations"]) == masks[0].max()
    with pytest.raises(ValueError, match="segmentation"):
        coco_annotations(masks, segmentation="mask")


def test_measurements_csv(dsb_fluo):
    sample = dsb_fluo[0]
    text = measure_objects(sample.mask, sample.image)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == sample.mask.max()
    expected = ["id", "area", "centroid_row", "centroid_col", "bbox_min_row", "bbox_min_col",
                "bbox_max_row", "bbox_max_col", "perimeter", "eccentricity", "solidity",
                "mean_intensity_ch0", "max_intensity_ch0"]
    assert list(rows[0]) == expected
    first = sample.mask == 1
    assert int(rows[0]["area"]) == first.sum()
    assert float(rows[0]["mean_intensity_ch0"]) == pytest.approx(sample.image[first].mean())
    assert float(rows[0]["max_intensity_ch0"]) == sample.image[first].max()
    assert float(rows[0]["centroid_row"]) == pytest.approx(np.nonzero(first)[0].mean())
    rgb = np.stack([sample.image, sample.image // 2, np.zeros_like(sample.image)], -1)
    multi = measure_objects_rows(sample.mask, rgb)
    assert multi[0]["mean_intensity_ch1"] == pytest.approx(np.mean(sample.image[first] // 2))
    assert multi[0]["max_intensity_ch2"] == 0
    assert measure_objects(np.zeros((10, 10), np.int32)).strip() == ",".join(expected[:11])
    with pytest.raises(ValueError, match="does not match"):
        measure_objects(sample.mask, sample.image[:10])


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"family": "cellpose"}')
    (d / "weights.pt").write_bytes(os.urandom(5000))
    return d


def test_model_zip_round_trip(tmp_path, model_dir):
    data = zip_model(model_dir)
    out = unzip_model(data, tmp_path / "restored")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.pt"]
    assert (out / "weights.pt").read_bytes() == (model_dir / "weights.pt").read_bytes()
    with pytest.raises(ValueError, match="not a model directory"):
        zip_model(tmp_path)


@pytest.mark.parametrize(
    "entries, symlink, message",
    [
        ({"config.json": b"{}", "../evil.txt": b"x"}, None, "unsafe"),
        ({"config.json": b"{}", "/tmp/evil.txt": b"x"}, None, "unsafe"),
        ({"config.json": b"{}", "a/../../evil.txt": b"x"}, None, "unsafe"),
        ({"config.json": b"{}", "..\\evil.txt": b"x"}, None, "unsafe"),
        ({"config.json": b"{}", "C:/evil.txt": b"x"}, None, "unsafe"),
        ({"config.json": b"{}"}, "link", "symbolic link"),
        ({"weights.pt": b"x"}, None, "no config.json"),
        ({"config.json": b"{}", "weights.pt": bytes(3_000_000)}, None, "expands beyond"),
    ],
)
def test_unzip_rejects_hostile_archives(tmp_path, entries, symlink, message):
    dest = tmp_path / "d" / "model"
    with pytest.raises(ValueError, match=message):
        unzip_model(make_zip(entries, symlink), dest, max_bytes=1_000_000)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "d").iterdir()) == [] if (tmp_path / "d").exists() else True


def test_unzip_limits_and_layouts(tmp_path, model_dir):
    with pytest.raises(ValueError, match="not a valid zip"):
        unzip_model(b"not a zip at all", tmp_path / "a")
    many = {f"f{i}.txt": b"x" for i in range(20)} | {"config.json": b"{}"}
    with pytest.raises(ValueError, match="entries"):
        unzip_model(make_zip(many), tmp_path / "b", max_files=10)
    nested = make_zip({"mymodel/config.json": b"{}", "mymodel/weights.pt": b"w"})
    out = unzip_model(nested, tmp_path / "c")
    assert (out / "config.json").is_file() and (out / "weights.pt").read_bytes() == b"w"
    with pytest.raises(ValueError, match="not an empty directory"):
        unzip_model(zip_model(model_dir), out)
    assert (out / "weights.pt").read_bytes() == b"w"  # the existing model is untouched

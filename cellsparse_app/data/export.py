"""Export label images and models to the formats other tools read.

* :func:`write_label_tiff` — label TIFF for napari / Fiji / the CLI;
* :func:`labels_to_geojson_features` / :func:`write_geojson` — QuPath, samapi and cellsparse-api
  GeoJSON features;
* :func:`write_imagej_rois` — an ImageJ ROI zip (``roifile``) that Fiji's ROI manager opens;
* :func:`write_coco` — COCO instance annotations (RLE or polygons);
* :func:`measure_objects` — per-object measurements as CSV (``regionprops_table``);
* :func:`zip_model` / :func:`unzip_model` — a model directory as zip bytes and back, safely.

Polygons are exact pixel-edge outlines in ``(x, y)`` pixel-corner coordinates (see
:mod:`cellsparse_app.data.polygons`). Label images follow :mod:`cellsparse_app.data.labels`;
exporters of objects use the instances only (background and unlabelled pixels are not objects).
Every function is pure (no module state), so concurrent calls are safe.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cellsparse_app.data.labels import to_instances, validate_labels
from cellsparse_app.data.polygons import mask_to_polygons

logger = logging.getLogger(__name__)

__all__ = [
    "labels_to_polygons", "labels_to_geojson_features", "masks_to_features", "write_label_tiff",
    "write_geojson", "write_imagej_rois", "coco_annotations", "write_coco", "rle_encode",
    "rle_decode", "measure_objects", "measure_objects_rows",
]


def labels_to_polygons(
    labels: np.ndarray, simplify_tol: float = 0.0
) -> dict[int, list[np.ndarray]]:
    """Outline every instance of a label image.

    Args:
        labels: label image (-1/0/1..N) or any non-negative instance image.
        simplify_tol: Douglas-Peucker tolerance in pixels; 0 keeps exact pixel-edge outlines.

    Returns:
        ``{instance id: [ring, ...]}``, one closed ``(x, y)`` ring per connected part (holes
        filled), largest part first.
    """
    from scipy import ndimage as ndi

    labels = validate_labels(labels)
    out: dict[int, list[np.ndarray]] = {}
    inst = np.where(labels > 0, labels, 0)
    for idx, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        rings = mask_to_polygons(inst[sl] == idx, simplify_tol)
        offset = np.array([sl[1].start, sl[0].start], dtype=float)
        out[idx] = [r + offset for r in rings]
    return out


def masks_to_features(
    masks: Sequence[np.ndarray],
    *,
    simplify_tol: float = 0.0,
    label: str = "object",
    properties: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """GeoJSON Features (one Polygon per mask, its largest part) in the samapi/cellsparse-api form.

    ``{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...]]},
    "properties": {"object_idx": i, "label": label, **properties[i]}}``; empty masks are skipped
    (``object_idx`` still counts the input position).
    """
    if properties is not None and len(properties) != len(masks):
        raise ValueError(f"{len(properties)} property dicts for {len(masks)} masks")
    features = []
    for i, mask in enumerate(masks):
        rings = mask_to_polygons(mask, simplify_tol)
        if rings:
            extra = properties[i] if properties is not None else {}
            features.append(_feature(rings[0], {"object_idx": i, "label": label, **extra}))
    return features


def labels_to_geojson_features(
    labels: np.ndarray, simplify_tol: float = 0.0, label: str = "object"
) -> list[dict[str, Any]]:
    """GeoJSON Features of the instances of a label image, as QuPath/samapi/cellsparse-api use.

    One Polygon per instance (its largest connected part), in id order; ``object_idx`` is the
    position in the returned list (0-based).
    """
    polygons = labels_to_polygons(labels, simplify_tol)
    return [
        _feature(rings[0], {"object_idx": i, "label": label})
        for i, (_, rings) in enumerate(sorted(polygons.items()))
    ]


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    *,
    simplify_tol: float = 0.0,
    label: str = "object",
    object_type: str = "annotation",
) -> Path:
    """Write a GeoJSON FeatureCollection that QuPath imports (File > Import objects).

    Args:
        object_type: QuPath object type, ``"annotation"`` or ``"detection"``.
    """
    if object_type not in ("annotation", "detection"):
        raise ValueError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    features = labels_to_geojson_features(labels, simplify_tol, label)
    for f in features:
        f["properties"]["objectType"] = object_type
        f["properties"]["classification"] = {"name": label}
    return _write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def write_label_tiff(
    path: str | Path, labels: np.ndarray, *, keep_unlabelled: bool = False
) -> Path:
    """Write a zlib-compressed label TIFF.

    Args:
        keep_unlabelled: keep the -1/0/1..N annotation convention (``int32``, what
            ``cellsparse train --labels`` reads); otherwise write the instances only as ``uint16``
            (``uint32`` above 65535 objects), 0 for background and unlabelled, which napari and
            Fiji open as a label image.
    """
    import tifffile

    labels = validate_labels(labels)
    out = labels if keep_unlabelled else to_instances(labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, out, compression="zlib")
    return path


def write_imagej_rois(path: str | Path, labels: np.ndarray, *, simplify_tol: float = 0.0) -> Path:
    """Write one polygon ROI per instance into a zip that Fiji's ROI Manager opens.

    ROIs are named ``cell_<id>`` (zero-padded) so the ROI Manager lists them in label order.
    """
    import roifile

    polygons = labels_to_polygons(labels, simplify_tol)
    if not polygons:
        raise ValueError("no objects to export: the label image has no instances")
    width = len(str(max(polygons)))
    rois = []
    for idx, rings in sorted(polygons.items()):
        ring = rings[0][:-1]  # ImageJ polygons are implicitly closed
        as_int = np.round(ring).astype(np.int32)
        points = as_int if np.allclose(ring, as_int) else ring.astype(np.float32)
        roi = roifile.ImagejRoi.frompoints(points, name=f"cell_{idx:0{width}d}")
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # roiwrite appends to an existing zip
    roifile.roiwrite(path, rois)
    return path


def coco_annotations(
    labels_list: Sequence[np.ndarray],
    file_names: Sequence[str] | None = None,
    *,
    segmentation: str = "rle",
    category: str = "cell",
    simplify_tol: float = 0.0,
) -> dict[str, Any]:
    """COCO instance-segmentation dict for one or more label images.

    Args:
        segmentation: ``"rle"`` (compressed RLE strings, pixel-exact, pycocotools' format) or
            ``"polygon"`` (flattened ``[x1, y1, x2, y2, ...]`` outlines, one list per part).

    Returns:
        ``{"images", "annotations", "categories", "info"}``; ``bbox`` is ``[x, y, w, h]`` in pixel
        corners, ``area`` the pixel count, ``iscrowd`` 0.
    """
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
    if file_names is not None and len(file_names) != len(labels_list):
        raise ValueError(f"{len(file_names)} file names for {len(labels_list)} label images")
    from scipy import ndimage as ndi

    images, annotations = [], []
    for image_id, labels in enumerate(labels_list, start=1):
        inst = to_instances(validate_labels(labels))
        h, w = inst.shape
        name = file_names[image_id - 1] if file_names is not None else f"image_{image_id}.tif"
        images.append({"id": image_id, "file_name": str(name), "height": h, "width": w})
        polygons = labels_to_polygons(inst, simplify_tol) if segmentation == "polygon" else {}
        for idx, sl in enumerate(ndi.find_objects(inst), start=1):
            if sl is None:
                continue
            mask = inst == idx
            seg: Any
            if segmentation == "rle":
                seg = {"size": [h, w], "counts": rle_encode(mask)}
            else:
                seg = [r[:-1].ravel().tolist() for r in polygons[idx]]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": seg, "area": int(mask.sum()), "iscrowd": 0,
                "bbox": [sl[1].start, sl[0].start, sl[1].stop - sl[1].start,
                         sl[0].stop - sl[0].start],
            })
    return {
        "info": {"description": "cellsparse app export"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category, "supercategory": category}],
    }


def write_coco(path: str | Path, labels_list: Sequence[np.ndarray] | np.ndarray, **kwargs) -> Path:
    """Write :func:`coco_annotations` as JSON (a single label image is accepted too)."""
    if isinstance(labels_list, np.ndarray) and labels_list.ndim == 2:
        labels_list = [labels_list]
    return _write_text(path, json.dumps(coco_annotations(labels_list, **kwargs)))


def rle_encode(mask: np.ndarray) -> str:
    """COCO compressed RLE string of a boolean mask (column-major runs, first run is zeros)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    counts = runs.tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:  # 5 bits per char, sign-extended, as pycocotools' rleToString
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_decode(counts: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rle_encode` (pycocotools' rleFrString) -> boolean mask of ``shape``."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    if sum(runs) != shape[0] * shape[1] or min(runs, default=0) < 0:
        raise ValueError(f"RLE counts do not describe a {shape[0]}x{shape[1]} mask")
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    return flat.reshape(shape, order="F")


def measure_objects_rows(
    labels: np.ndarray, image: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Per-object measurements: one dict per instance, in id order.

    Keys: ``id``, ``area``, ``centroid_row``, ``centroid_col``, ``bbox_min_row``,
    ``bbox_min_col``, ``bbox_max_row``, ``bbox_max_col`` (exclusive), ``perimeter``,
    ``eccentricity``, ``solidity``, and with an image ``mean_intensity_ch<c>`` /
    ``max_intensity_ch<c>`` per channel (raw image values).
    """
    from skimage.measure import regionprops_table

    labels = validate_labels(labels)
    inst = np.where(labels > 0, labels, 0)
    intensity = None
    if image is not None:
        image = np.asarray(image)
        if image.shape[:2] != labels.shape:
            raise ValueError(f"image shape {image.shape} does not match labels {labels.shape}")
        intensity = image if image.ndim == 3 else image[..., None]
    props = ["label", "area", "centroid", "bbox", "perimeter", "eccentricity", "solidity"]
    if intensity is not None:
        props += ["intensity_mean", "intensity_max"]
    table = regionprops_table(inst, intensity_image=intensity, properties=props)
    names = {"label": "id", "area": "area", "centroid-0": "centroid_row",
             "centroid-1": "centroid_col", "bbox-0": "bbox_min_row", "bbox-1": "bbox_min_col",
             "bbox-2": "bbox_max_row", "bbox-3": "bbox_max_col", "perimeter": "perimeter",
             "eccentricity": "eccentricity", "solidity": "solidity"}
    columns = {new: table[old] for old, new in names.items()}
    channels = intensity.shape[-1] if intensity is not None else 0
    for c in range(channels):
        columns[f"mean_intensity_ch{c}"] = table[f"intensity_mean-{c}"]
        columns[f"max_intensity_ch{c}"] = table[f"intensity_max-{c}"]
    ints = {"id", "area", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"}
    n = len(columns["id"])
    return [
        {k: (int(v[i]) if k in ints else float(v[i])) for k, v in columns.items()} for i in range(n)
    ]


def measure_objects(labels: np.ndarray, image: np.ndarray | None = None) -> str:
    """:func:`measure_objects_rows` as CSV text (header row first, even with no objects)."""
    rows = measure_objects_rows(labels, image)
    header = ["id", "area", "centroid_row", "centroid_col", "bbox_min_row", "bbox_min_col",
              "bbox_max_row", "bbox_max_col", "perimeter", "eccentricity", "solidity"]
    if image is not None:
        channels = 1 if np.asarray(image).ndim == 2 else np.asarray(image).shape[-1]
        for c in range(channels):
            header += [f"mean_intensity_ch{c}", f"max_intensity_ch{c}"]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _feature(ring: np.ndarray, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [np.asarray(ring).tolist()]},
        "properties": properties,
    }


def _write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

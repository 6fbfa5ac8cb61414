"""Our own JSON routes under ``/api/v1``: training jobs, prediction, metrics, models, health.

Richer than the compatible routes: training is asynchronous (submit, poll progress with the loss
history, cancel: the model trained so far is saved), job records and queued jobs survive a restart
(``<data dir>/jobs``), interrupted jobs can be resumed or re-run, predictions come back as a
label TIFF or GeoJSON, models can be listed, downloaded as a zip and deleted, and predictions can
be scored against (sparse) truth.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

import cellsparse_app
from cellsparse_app.api import codec
from cellsparse_app.api.errors import ERROR_RESPONSES, core_errors
from cellsparse_app.api.routes_cellsparse import budget_note, predict_labels, train_config
from cellsparse_app.api.state import AppState, get_state, require_family
from cellsparse_app.storage.model_store import validate_name

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["cellsparse app"], responses=ERROR_RESPONSES)

LabelFormat = Literal["wire", "sparse", "dense"]


class TrainJobBody(BaseModel):
    """Submit a training job."""

    model_config = ConfigDict(extra="forbid")

    family: str = Field("cellpose", description="model family (see /api/v1/health)")
    model_name: str = Field("default", description="save the result under this name")
    images: list[str] = Field(..., min_length=1, max_length=64, description="base64 images")
    labels: list[str] = Field(..., min_length=1, max_length=64, description="base64 labels")
    label_format: LabelFormat = Field(
        "wire", description="wire: 0 unlabelled/1 background/>=2 cells (PNG); sparse: -1/0/1..N "
        "(signed TIFF); dense: 0 background/1..N, everything annotated"
    )
    resume: bool = Field(True, description="continue from the stored model of that name")
    steps: Optional[int] = Field(None, ge=1, description="training steps (None: time budget)")
    max_seconds: Optional[float] = Field(None, gt=0, description="time budget in seconds")
    batch_size: Optional[int] = Field(None, ge=1, le=256)
    patch_size: Optional[int] = Field(None, ge=16, le=2048)
    learning_rate: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    channels: Optional[list[int]] = Field(None, description="image channels to use (0-based)")
    diameter: Optional[float] = Field(
        None, gt=0, description="cells' diameter (px) in these images (None: measured from the "
        "annotated cells); images are resized so cells have the model's canonical diameter")
    rescale: bool = Field(True, description="false: train at the images' own scale")


class PredictBody(BaseModel):
    """Predict one image with a stored model."""

    model_config = ConfigDict(extra="forbid")

    family: str = "cellpose"
    model_name: str = "default"
    image: str = Field(..., description="base64 PNG/TIFF/JPEG image")
    format: Literal["tiff", "geojson"] = Field("tiff", description="label TIFF or GeoJSON")
    min_size: Optional[int] = Field(None, ge=0)
    prob_threshold: Optional[float] = None
    flow_threshold: Optional[float] = Field(None, ge=0)
    diameter: Optional[float] = Field(None, gt=0, description="object diameter (px) in this "
                                      "image, if its magnification differs from the training "
                                      "images' (empty: the model's own)")
    simplify_tol: Optional[float] = Field(None, ge=0, description="geojson: simplification")


class MetricsBody(BaseModel):
    """Score a prediction (given, or made by a stored model) against truth."""

    model_config = ConfigDict(extra="forbid")

    truth: str = Field(..., description="base64 truth label image")
    truth_format: LabelFormat = "dense"
    pred: Optional[str] = Field(None, description="base64 predicted instance image (0/1..M)")
    image: Optional[str] = Field(None, description="predict this image instead of `pred`")
    family: str = "cellpose"
    model_name: str = "default"
    thresholds: list[float] = Field([0.5, 0.75, 0.9], min_length=1, max_length=20)


def _decode_labels(data: str, fmt: str, shape: Any, what: str, cap: int) -> Any:
    from cellsparse_app.data.labels import from_dense

    if fmt == "wire":
        return codec.decode_wire_labels(data, shape, what, cap)
    if fmt == "sparse":
        return codec.decode_sparse_labels(data, shape, what, cap)
    dense = codec.decode_label_image(data, what, cap)
    if tuple(dense.shape) != tuple(shape[:2]):
        raise ValueError(f"{what}: shape {dense.shape} does not match {tuple(shape[:2])}")
    return from_dense(dense)


@router.get("/health", summary="Liveness, version, families and queue state")
def health(st: AppState = Depends(get_state)) -> dict[str, Any]:
    from cellsparse_app.models import list_families

    return {
        "status": "stopping" if st.runner.closing else "ok",
        "version": cellsparse_app.__version__,
        "families": list_families(),
        "jobs": st.runner.busy(),
    }


@router.post("/jobs", status_code=202, summary="Submit a training job (returns at once)")
def submit_job(body: TrainJobBody, st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        require_family(body.family)
        name = validate_name(body.model_name)
        if len(body.images) != len(body.labels):
            raise ValueError(f"{len(body.images)} image(s) but {len(body.labels)} label image(s)")
        cap = st.settings.max_image_pixels
        images = [codec.decode_image(d, f"images[{i}]", cap) for i, d in enumerate(body.images)]
        labels = [
            _decode_labels(d, body.label_format, im.shape, f"labels[{i}]", cap)
            for i, (d, im) in enumerate(zip(body.labels, images))
        ]
        cfg = train_config(
            body.family, st, steps=body.steps, max_seconds=body.max_seconds,
            batch_size=body.batch_size, patch_size=body.patch_size,
            learning_rate=body.learning_rate, seed=body.seed, diameter=body.diameter,
        )
        if not body.rescale:
            cfg = cfg.replace(object_diameter=None)
        image_config = None
        if body.channels:
            from cellsparse_app.data.images import ImageConfig

            image_config = ImageConfig(channels=tuple(body.channels))
        job_id = st.runner.submit(images, labels, cfg, model_name=name, resume=body.resume,
                                  image_config=image_config,
                                  budget_note=budget_note(cfg, st, body.steps, body.max_seconds)
                                  or None)
        return st.runner.get(job_id).to_dict()


@router.get("/jobs", summary="All remembered training jobs")
def list_jobs(st: AppState = Depends(get_state)) -> list[dict[str, Any]]:
    return [s.to_dict() for s in st.runner.list()]


@router.get("/jobs/{job_id}", summary="Progress of a training job (step, loss history, state)")
def get_job(job_id: str, st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        return st.runner.get(job_id).to_dict()


@router.post("/jobs/{job_id}/cancel",
             summary="Cancel a training job (the model trained so far is saved under its name)")
def cancel_job(job_id: str, st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        return st.runner.cancel(job_id).to_dict()


@router.post("/jobs/{job_id}/resume", status_code=202,
             summary="Resume an interrupted, cancelled or failed job (a new job)",
             description="Continues from the model saved under the job's name with the steps "
             "still to do; `restart=true` runs the job again as it was submitted. The job's "
             "training data must still be kept (`rerunnable`).")
def resume_job(job_id: str, restart: bool = False,
               st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        new_id = st.runner.resume(job_id, restart=restart)
        return st.runner.get(new_id).to_dict()


@router.post(
    "/predict",
    summary="Segment an image with a stored model",
    responses={200: {"content": {"image/tiff": {}, "application/json": {}},
                     "description": "uint16/uint32 label TIFF (0 background) or Features"}},
)
def predict(body: PredictBody, st: AppState = Depends(get_state)) -> Any:
    with core_errors():
        require_family(body.family)
        name = validate_name(body.model_name)
        image = codec.decode_image(body.image, "image", st.settings.max_image_pixels)
        labels = predict_labels(
            st, body.family, name, image, min_size=body.min_size,
            prob_threshold=body.prob_threshold, flow_threshold=body.flow_threshold,
            diameter=body.diameter,
        )
        if body.format == "geojson":
            return codec.geojson_features(labels, body.simplify_tol)
        import tifffile

        from cellsparse_app.data.labels import to_instances

        instances = to_instances(labels.astype("int64").astype("int32"))
        buf = io.BytesIO()
        tifffile.imwrite(buf, instances, compression="zlib")
        return Response(
            buf.getvalue(),
            media_type="image/tiff",
            headers={
                "Content-Disposition": f'attachment; filename="{name}_labels.tif"',
                "X-Object-Count": str(int(instances.max(initial=0))),
            },
        )


@router.post("/metrics", summary="AP / precision / recall / F1 of a prediction against truth")
def metrics(body: MetricsBody, st: AppState = Depends(get_state)) -> dict[str, Any]:
    from cellsparse_app.data.metrics import match_labels

    with core_errors():
        cap = st.settings.max_image_pixels
        if (body.pred is None) == (body.image is None):
            raise ValueError("send exactly one of 'pred' (a prediction) or 'image' (to predict)")
        if body.pred is not None:
            pred = codec.decode_label_image(body.pred, "pred", cap)
        else:
            require_family(body.family)
            image = codec.decode_image(body.image, "image", cap)
            pred = predict_labels(st, body.family, validate_name(body.model_name), image)
        truth = _decode_labels(body.truth, body.truth_format, pred.shape, "truth", cap)
        return match_labels(truth, pred, body.thresholds)


@router.get("/models", summary="Stored models")
def list_models(st: AppState = Depends(get_state)) -> list[dict[str, Any]]:
    return st.store.list()


@router.get("/models/{family}/{name}", summary="A stored model's configuration")
def model_info(family: str, name: str, st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        if not st.store.exists(family, name):
            raise FileNotFoundError(f"no {family} model named {name!r}")
        config = json.loads((st.store.path(family, name) / "config.json").read_text())
        return {"family": family, "name": name, "config": config}


@router.get(
    "/models/{family}/{name}/download",
    summary="A stored model as a zip (config.json + weights.pt)",
    responses={200: {"content": {"application/zip": {}}}},
)
def download_model(family: str, name: str, st: AppState = Depends(get_state)) -> Response:
    with core_errors():
        data = st.store.zip(family, name)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}.zip"'})


@router.delete("/models/{family}/{name}", summary="Delete a stored model")
def delete_model(family: str, name: str, st: AppState = Depends(get_state)) -> dict[str, Any]:
    with core_errors():
        st.runner.cancel_model(family, name)
        deleted = st.store.delete(family, name)
        st.forget_model(family, name)
        return {"deleted": deleted}

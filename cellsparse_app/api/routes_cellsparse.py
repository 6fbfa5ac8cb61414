"""cellsparse-api compatible routes: ``/cellpose/``, ``/stardist/``, ``/elephant/`` and ``/reset/``.

Request bodies are those of cellsparse-api and qupath-extension-cellsparse (both its older
single-image ``b64img``/``b64lbl`` and newer ``b64imgs``/``b64lbls`` forms); unknown fields are
ignored. Training goes through the job runner (the request waits for its job, in a worker thread,
so the server keeps answering other requests), then ``eval`` predicts and answers with GeoJSON
Features. Differences from cellsparse-api, on purpose: model names are validated, a model that
does not exist gives 404 instead of a crash, and a reset can only delete inside the data dir.

What was trained is said in the reply's ``X-Training-*`` headers (job id, steps done/requested,
whether the budget cut it and why) and in the log; ``GET /<family>/progress/`` and
``/api/v1/jobs`` show the progress while the request waits. A shutdown answers 503 (JSON).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from cellsparse_app.api import codec
from cellsparse_app.api.errors import ERROR_RESPONSES, core_errors
from cellsparse_app.api.settings import BYTES_PER_BATCH_PIXEL
from cellsparse_app.api.state import AppState, get_state, require_family
from cellsparse_app.json_config import config_from_values
from cellsparse_app.storage.model_store import validate_name

logger = logging.getLogger(__name__)

router = APIRouter(
    tags=["cellsparse-api compatible"],
    responses={
        **ERROR_RESPONSES,
        409: {"description": "The training job was cancelled (the model trained so far is "
                             "saved)"},
        429: {"description": "Too many training jobs are waiting"},
        501: {"description": "This model family is not available on this server"},
    },
)

#: cellsparse-api ``pretrained`` values that mean "start from scratch".
FRESH_PRETRAINED = (None, "", "random", "none", "scratch")


class CellsparseBody(BaseModel):
    """Train and/or predict request of cellsparse-api (``/cellpose/``, ``/stardist/``, ...)."""

    model_config = ConfigDict(extra="ignore")

    modelname: str = Field("default", description="model name (letters, digits, _ . -)")
    b64img: Optional[str] = Field(None, description="base64 PNG/TIFF image")
    b64imgs: Optional[list[str]] = Field(None, description="several base64 images (newer client)")
    b64lbl: Optional[str] = Field(
        None, description="base64 label PNG/TIFF: 0 unlabelled, 1 background, >=2 cells"
    )
    b64lbls: Optional[list[str]] = Field(None, description="labels of b64imgs, in order")
    train: bool = Field(False, description="train (continuing the named model if it exists)")
    eval: bool = Field(False, description="predict the image(s) and return GeoJSON Features")
    epochs: int = Field(1, ge=1, le=100_000, description="training steps = epochs x steps")
    trainpatch: int = Field(224, ge=16, le=2048, description="training patch size (pixels)")
    batchsize: int = Field(8, ge=1, le=256)
    steps: int = Field(200, ge=1, le=10_000_000, description="steps per epoch")
    lr: float = Field(0.001, gt=0, le=1, description="learning rate")
    minarea: float = Field(10.0, ge=0, description="smallest predicted object (pixels)")
    simplify_tol: Optional[float] = Field(
        None, description="polygon simplification (pixels); None, NaN or 0: exact outlines"
    )
    chan1: int = Field(0, ge=0, le=16, description="cellpose: 0 all/gray, k: channel k (1-based)")
    chan2: int = Field(0, ge=0, le=16, description="cellpose: 0 none, k: second channel k")
    max_seconds: Optional[float] = Field(
        None, gt=0, description="extension: training time budget in seconds"
    )
    seed: Optional[int] = Field(None, description="extension: random seed")


class ResetBody(BaseModel):
    """Reset request of cellsparse-api."""

    model_config = ConfigDict(extra="ignore")

    modelname: str = "default"
    pretrained: Optional[str] = Field(
        None, description="null or 'random': start from scratch (pretrained weights are not used)"
    )


def _images(body: CellsparseBody, st: AppState) -> list:
    encoded = list(body.b64imgs or []) or ([body.b64img] if body.b64img else [])
    if not encoded:
        raise ValueError("no image: send 'b64img' (or 'b64imgs')")
    cap = st.settings.max_image_pixels
    return [
        codec.decode_image(data, "b64img" if len(encoded) == 1 else f"b64imgs[{i}]", cap)
        for i, data in enumerate(encoded)
    ]


def _labels(body: CellsparseBody, images: list, st: AppState) -> list:
    encoded = list(body.b64lbls or []) or ([body.b64lbl] if body.b64lbl else [])
    if not encoded:
        raise ValueError("training needs labels: send 'b64lbl' (0 unlabelled, 1 background, "
                         ">=2 cells)")
    if len(encoded) != len(images):
        raise ValueError(f"{len(images)} image(s) but {len(encoded)} label image(s)")
    cap = st.settings.max_image_pixels
    names = ["b64lbl"] if len(encoded) == 1 else [f"b64lbls[{i}]" for i in range(len(encoded))]
    return [
        codec.decode_wire_labels(data, im.shape, what, cap)
        for data, im, what in zip(encoded, images, names)
    ]


def _channels(body: CellsparseBody) -> tuple[int, ...] | None:
    if body.chan1 == 0:
        return None
    return (body.chan1 - 1,) + ((body.chan2 - 1,) if body.chan2 > 0 else ())


def train_config(family: str, st: AppState, **values: Any) -> Any:
    """A ``TrainConfig`` for ``family`` from request values, capped by the server settings.

    Neither ``steps`` nor ``max_seconds``: the engine's default time budget. ``steps`` alone:
    those steps, but never longer than the server's ``max_train_seconds``.

    Raises:
        ValueError: a batch (``batch_size x patch_size^2`` pixels) larger than the server's
            memory allows (:meth:`ServerSettings.batch_pixel_limit`).
    """
    from cellsparse_app.train import TrainConfig

    values = {k: v for k, v in values.items() if v is not None}
    values["family"] = family
    cap = st.settings.max_train_seconds
    if "steps" in values:
        values["steps"] = min(int(values["steps"]), st.settings.max_train_steps)
    if "max_seconds" in values:
        values["max_seconds"] = min(float(values["max_seconds"]), cap)
    elif "steps" in values:
        values["max_seconds"] = cap
    cfg = config_from_values(TrainConfig, values)
    pixels = int(cfg.batch_size) * int(cfg.patch_size) ** 2
    limit = st.settings.batch_pixel_limit()
    if pixels > limit:
        gib = pixels * BYTES_PER_BATCH_PIXEL / 2**30
        raise ValueError(
            f"batch size {cfg.batch_size} x patch {cfg.patch_size}x{cfg.patch_size} = {pixels} "
            f"pixels per step needs about {gib:.0f} GiB of memory; this server allows at most "
            f"{limit} pixels per batch (half of its memory); use a smaller batch size or patch"
        )
    return cfg


def budget_note(cfg: Any, st: AppState, steps: int | None, max_seconds: float | None) -> str:
    """Where ``cfg``'s budget came from when the server's caps changed the request, else ''."""
    notes = []
    cap = st.settings.max_train_seconds
    if cfg.max_seconds == cap and (max_seconds is None or max_seconds > cap) and cfg.steps:
        notes.append(f"the server's cap of {cap:g} s per training (CELLSPARSE_MAX_TRAIN_SECONDS)")
    if steps is not None and cfg.steps is not None and cfg.steps < steps:
        notes.append(f"steps cut from {steps} to the server's cap of {cfg.steps}")
    return "; ".join(notes)


def run_training(st: AppState, images: list, labels: list, cfg: Any, name: str,
                 image_config: Any = None, note: str = "") -> dict:
    """Queue a training job, wait for it (in this worker thread) and return its snapshot dict.

    Raises:
        ValueError/TypeError: the job failed on bad data (-> 400).
        RuntimeError: the job failed otherwise.
        HTTPException: 409 cancelled (the model so far is saved), 503 the server is stopping.
    """
    job_id = st.runner.submit(images, labels, cfg, model_name=name, image_config=image_config,
                              budget_note=note or None)
    snap = st.runner.wait(job_id)
    st.forget_model(cfg.family, name)
    if snap.state in ("queued", "running", "interrupted"):
        what = (f"training job {job_id} was interrupted after {snap.step} steps"
                + (f"; the model trained so far is saved as {name!r}" if snap.model_saved else "")
                if snap.state != "queued" else
                f"training job {job_id} had not started; it stays queued and runs when the "
                "server is back")
        raise HTTPException(
            503, f"the server is shutting down: {what}. Send the request again when the server "
            f"is back, or resume the job: POST /api/v1/jobs/{job_id}/resume",
            headers={"Retry-After": "30", **training_headers(snap.to_dict())})
    if snap.state == "failed":
        if snap.error_type in ("ValueError", "TypeError", "InvalidInput", "InvalidType"):
            raise ValueError(f"training failed: {snap.error}")
        raise RuntimeError(f"training job {job_id} failed: {snap.error}")
    if snap.state == "cancelled":
        raise HTTPException(409, f"training job {job_id} was {snap.stop_reason}",
                            headers=training_headers(snap.to_dict()))
    return snap.to_dict()


def training_headers(snap: dict) -> dict[str, str]:
    """``X-Training-*`` headers saying what a training did (ASCII, one line each)."""
    def clean(text: Any) -> str:
        return str(text).encode("ascii", "replace").decode()[:500].replace("\n", " ")

    headers = {
        "X-Training-Job": clean(snap["id"]),
        "X-Training-State": clean(snap["state"]),
        "X-Training-Steps": clean(snap["step"]),
        "X-Training-Steps-Requested": clean(snap.get("steps_requested") or ""),
        "X-Training-Cut": "true" if snap.get("cut") else "false",
        "X-Training-Stop-Reason": clean(snap.get("stop_reason") or ""),
        "X-Training-Model-Saved": "true" if snap.get("model_saved") else "false",
    }
    if snap.get("warnings"):
        headers["X-Training-Warnings"] = clean(" | ".join(snap["warnings"]))
    return headers


def predict_labels(st: AppState, family: str, name: str, image: Any, **predict: Any) -> Any:
    """Instance labels of ``image`` by the stored model ``family/name``."""
    model = st.load_model(family, name)  # first: a missing model is a clear 404
    from cellsparse_app.predict import PredictConfig, predict_instances

    return predict_instances(model, image, config_from_values(PredictConfig, predict))


def _handle(family: str, body: CellsparseBody, st: AppState,
            response: Response) -> list[dict[str, Any]]:
    with core_errors():
        require_family(family)
        name = validate_name(body.modelname)
        if not (body.train or body.eval):
            return []
        images = _images(body, st)
        channels = _channels(body) if family == "cellpose" else None
        if body.train:
            from cellsparse_app.data.images import ImageConfig

            labels = _labels(body, images, st)
            steps = body.epochs * body.steps
            cfg = train_config(
                family, st, steps=steps, batch_size=body.batchsize,
                patch_size=body.trainpatch, learning_rate=body.lr, max_seconds=body.max_seconds,
                seed=body.seed,
            )
            image_config = ImageConfig(channels=channels) if channels else None
            note = budget_note(cfg, st, steps, body.max_seconds)
            snap = run_training(st, images, labels, cfg, name, image_config, note)
            response.headers.update(training_headers(snap))
        if not body.eval:
            return []
        features: list[dict[str, Any]] = []
        for i, image in enumerate(images):
            labels = predict_labels(st, family, name, image, min_size=int(round(body.minarea)))
            found = codec.geojson_features(labels, body.simplify_tol)
            if len(images) > 1:
                for f in found:
                    f["properties"]["image_idx"] = i
            features.extend(found)
        return features


def _reset(family: str, body: ResetBody, st: AppState) -> str:
    with core_errors():
        require_family(family)
        name = validate_name(body.modelname)
        if body.pretrained not in FRESH_PRETRAINED:
            raise ValueError(
                f"pretrained model {body.pretrained!r} is not available: cellsparse app trains "
                "from scratch; send pretrained null or 'random' to reset the model"
            )
        cancelled = st.runner.cancel_model(family, name)
        deleted = st.store.delete(family, name)
        st.forget_model(family, name)
        logger.info("reset %s/%s (deleted: %s, cancelled jobs: %s)", family, name, deleted,
                    cancelled)
        return ""


def _progress(family: str, modelname: str, st: AppState) -> dict[str, Any]:
    with core_errors():
        name = validate_name(modelname)
        jobs = [j for j in st.runner.list() if j.family == family and j.model_name == name]
        if not jobs:
            return {"message": None, "percent": -1, "job": None}
        snap = jobs[-1].to_dict()
        fraction = snap.get("progress")
        total = snap.get("steps_requested")
        steps = f"{snap['step']}/{total}" if total else f"{snap['step']}"
        message = f"{family} {name}: {snap['state']}, step {steps}"
        if snap.get("queue_position") is not None:
            # REST jobs and the mounted web app's rounds share one training slot
            message += f", {snap['queue_position']} training(s) waiting ahead of it"
        if snap.get("stop_reason"):
            message += f" ({snap['stop_reason']})"
        percent = int(100 * fraction) if fraction is not None else -1
        return {"message": message, "percent": percent, "job": snap}


_FEATURES_DOC = "GeoJSON Features (one Polygon per object) when `eval`, else `[]`."


def _add_family_routes(family: str) -> None:
    @router.post(f"/{family}/", summary=f"Train and/or predict ({family})",
                 description=_FEATURES_DOC, response_model=list[dict[str, Any]],
                 name=f"{family}_train_eval")
    def handle(body: CellsparseBody, response: Response,
               st: AppState = Depends(get_state)) -> list[dict[str, Any]]:
        return _handle(family, body, st, response)

    @router.get(f"/{family}/progress/", summary=f"Progress of the latest {family} training",
                description="samapi-style `{message, percent}` (percent -1 when unknown) plus "
                "the job snapshot, for clients waiting on a blocking training request.",
                name=f"{family}_progress")
    def progress(modelname: str = Query("default", description="model name"),
                 st: AppState = Depends(get_state)) -> dict[str, Any]:
        return _progress(family, modelname, st)

    @router.post(f"/{family}/reset/", summary=f"Reset a {family} model to a fresh one",
                 description="Deletes the named model (and cancels its training jobs). "
                 "Returns an empty string, as cellsparse-api does.", response_model=str,
                 name=f"{family}_reset")
    def reset(body: ResetBody, st: AppState = Depends(get_state)) -> str:
        return _reset(family, body, st)


for _family in ("cellpose", "stardist", "elephant"):
    _add_family_routes(_family)

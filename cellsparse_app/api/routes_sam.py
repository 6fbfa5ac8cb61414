"""samapi compatible routes for qupath-extension-sam: ``/sam/``, ``/sam/automask/``, weights ...

Bodies, defaults, response shapes and trailing slashes follow samapi (``src/samapi/main.py``):
prompts are ``(x, y)`` pixel coordinates, answers are lists of GeoJSON Features with
``object_idx``, ``label``, ``quality`` and ``sam_model``; ``/sam/version/``, ``POST /sam/weights/``
and ``/sam/weights/cancel/`` answer plain text. Differences, on purpose: ``checkpoint_url`` and
registered URLs must pass the SAM engine's allowlist (samapi fetched any URL), a missing or bad
image is a 4xx, and requests are computed in worker threads so other users stay served; a
SAM type whose weights or package are missing answers 503 with the reason instead of silently
using the classical fallback (see :mod:`cellsparse_app.api.samapi`); samapi's SAM2/SAM3 and
video routes answer 503 with the reason; empty masks are left out of the Features; a failed
weights registration answers 200 with ``Registration failed: <reason>`` (the QuPath extension
shows only 200 bodies) and the ``X-Registration-Failed`` header.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from cellsparse_app.api import codec
from cellsparse_app.api.errors import ERROR_RESPONSES, core_errors
from cellsparse_app.api.samapi import unavailable_type_message
from cellsparse_app.api.state import AppState, get_state

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/sam", tags=["samapi compatible"], responses=ERROR_RESPONSES)

#: The samapi API level these routes implement (plus our version as build metadata).
SAMAPI_COMPAT_VERSION = "0.4.0"

#: samapi's automatic mask ``output_type`` values (what each does:
#: :data:`cellsparse_app.sam.automask.SAMAPI_OUTPUT_TYPES`).
OUTPUT_TYPES = (
    "Single mask",
    "Multi-mask (all)",
    "Multi-mask (largest)",
    "Multi-mask (smallest)",
    "Multi-mask (best quality)",
)


class SamBody(BaseModel):
    """Prompt request (samapi ``SAMBody``)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field("vit_h", description="vit_t, vit_b, vit_l, vit_h or fallback (SAM2/SAM3 "
                      "types answer 503)")
    bbox: Optional[list[int]] = Field(None, min_length=4, max_length=4,
                                      description="[x1, y1, x2, y2]")
    point_coords: Optional[list[list[int]]] = Field(None, description="[[x, y], ...]")
    point_labels: Optional[list[int]] = Field(None, description="1 foreground, 0 background")
    b64img: str = Field(..., description="base64 PNG (RGB or gray, 8/16-bit)")
    b64mask: Optional[str] = Field(None, description="base64 low-resolution mask prompt")
    multimask_output: bool = False
    checkpoint_url: Optional[str] = Field(None, description="allowlisted official weights URL")


class AutoMaskBody(BaseModel):
    """Automatic mask generation request (samapi ``SAMAutoMaskBody``)."""

    model_config = ConfigDict(extra="ignore")

    type: str = "vit_h"
    b64img: str
    points_per_side: Optional[int] = Field(32, ge=1, le=128)
    points_per_batch: int = Field(64, ge=1, le=4096)
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    stability_score_offset: float = Field(1.0, ge=0)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    crop_n_layers: int = Field(0, ge=0, le=4)
    crop_nms_thresh: float = Field(0.7, ge=0, le=1)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0, lt=1)
    crop_n_points_downscale_factor: int = Field(1, ge=1, le=16)
    min_mask_region_area: int = Field(0, ge=0)
    output_type: str = Field("Single mask", description=" | ".join(OUTPUT_TYPES))
    include_image_edge: bool = False
    checkpoint_url: Optional[str] = None


class WeightsBody(BaseModel):
    """Register weights (samapi ``SAMWeightsBody``)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    name: str = Field(..., min_length=1, max_length=64)
    url: str = Field(..., min_length=1, max_length=2048)


def _output_type(value: str) -> str:
    for name in OUTPUT_TYPES:
        if value.strip().lower() == name.lower():
            return name
    raise ValueError(f"unknown output_type {value!r}; use one of: {', '.join(OUTPUT_TYPES)}")


@router.get("/version/", response_class=PlainTextResponse, summary="samapi API version")
def version() -> str:
    import cellsparse_app

    return f"{SAMAPI_COMPAT_VERSION}+cellsparse-app.{cellsparse_app.__version__}"


@router.post("/", summary="Masks from point and/or box prompts",
             response_model=list[dict[str, Any]])
def predict_sam(body: SamBody, st: AppState = Depends(get_state)) -> list[dict[str, Any]]:
    with core_errors():
        cap = st.settings.max_image_pixels
        image = codec.decode_image(body.b64img, "b64img", cap)
        points = body.point_coords or []
        labels = body.point_labels or []
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} point_coords but {len(labels)} point_labels")
        if len(points) > st.settings.max_points:
            raise ValueError(f"{len(points)} points; at most {st.settings.max_points} are allowed")
        if any(len(p) != 2 for p in points):
            raise ValueError("each point of point_coords must be [x, y]")
        if any(v not in (0, 1) for v in labels):
            raise ValueError("point_labels must be 0 (background) or 1 (foreground)")
        bbox = body.bbox if body.bbox and any(body.bbox) else None
        if not points and bbox is None:
            raise ValueError("no prompt: send 'point_coords' + 'point_labels' and/or 'bbox'")
        mask = None
        if body.b64mask:
            mask = codec.decode_label_image(body.b64mask, "b64mask", cap)
        masks, scores, model = st.sam.segment(
            image, body.type, points_xy=points, point_labels=labels, bbox_xyxy=bbox,
            mask_input=mask, multimask=body.multimask_output, checkpoint_url=body.checkpoint_url,
        )
        return codec.sam_features(masks, scores, model)


@router.post("/automask/", summary="Automatic mask generation",
             response_model=list[dict[str, Any]])
def automask(body: AutoMaskBody, st: AppState = Depends(get_state)) -> list[dict[str, Any]]:
    with core_errors():
        image = codec.decode_image(body.b64img, "b64img", st.settings.max_image_pixels)
        params = body.model_dump(exclude={"type", "b64img", "checkpoint_url"})
        params["output_type"] = _output_type(body.output_type)
        masks, scores, model = st.sam.automask(
            image, body.type, params, checkpoint_url=body.checkpoint_url
        )
        return codec.sam_features(masks, scores, model)


@router.get("/weights/", summary="Registered weights: [{type, name, url}]")
def get_weights(
    type: Optional[str] = Query(None, description="only this model type"),
    st: AppState = Depends(get_state),
) -> list[dict[str, Any]]:
    with core_errors():
        return st.sam.list_weights(type)


@router.post("/weights/", response_class=PlainTextResponse,
             summary="Register (download) weights from an allowlisted URL",
             description="Plain text, as samapi. A failure also answers 200, with `Registration "
             "failed: <reason>` and the header `X-Registration-Failed: <status>`: the QuPath "
             "extension only shows the body of 200 answers.")
def register_weights(body: WeightsBody, st: AppState = Depends(get_state)) -> PlainTextResponse:
    try:
        with core_errors():
            return PlainTextResponse(st.sam.register_weights(body.type, body.name, body.url))
    except HTTPException as exc:
        if exc.status_code >= 500 and exc.status_code not in (502, 503):
            raise
        message = f"Registration failed: {exc.detail}"
        logger.warning("weights registration of %r (%s) failed: %s", body.name, body.url,
                       exc.detail)
        return PlainTextResponse(message, headers={"X-Registration-Failed": str(exc.status_code)})


@router.get("/progress/", summary="Progress of the current weights download")
def progress(st: AppState = Depends(get_state)) -> dict[str, Any]:
    return st.sam.progress()


@router.get("/weights/cancel/", response_class=PlainTextResponse,
            summary="Cancel the current weights download")
def cancel_download(st: AppState = Depends(get_state)) -> str:
    st.sam.cancel_download()
    return "Cancel signal sent"


_SAMAPI_ONLY_ROUTES = {
    "/sam3/": ("sam3", "SAM3 text and box prompts"),
    "/upload/": ("sam2_t", "video upload for SAM2/SAM3 tracking"),
    "/video/": ("sam2_t", "SAM2 video tracking"),
    "/sam3video/": ("sam3", "SAM3 video tracking"),
}


def _add_unavailable_route(path: str, model_type: str, what: str) -> None:
    @router.post(path, summary=f"{what}: not available on this server (503)",
                 responses={503: {"description": "This server cannot run it; `detail` says why"}},
                 name=f"sam_unavailable_{path.strip('/')}")
    def unavailable(request: Request) -> JSONResponse:
        message = f"{what} ({path.strip('/')}) is not available: " + unavailable_type_message(
            model_type).split(": ", 1)[1]
        logger.warning("POST /sam%s refused: %s", path, message)
        return JSONResponse({"detail": message}, status_code=503)


for _path, (_type, _what) in _SAMAPI_ONLY_ROUTES.items():
    _add_unavailable_route(_path, _type, _what)

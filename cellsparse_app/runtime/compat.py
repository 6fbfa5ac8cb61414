"""Compatibility shim for PyPI's torchvision against a CPU-only torch build.

On machines with the CPU build of torch, PyPI's torchvision wheel is a CUDA build whose compiled
ops do not load, and ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``. segment-anything, MobileSAM (via timm)
and cellpose 4 import torchvision, although they use only its pure-Python parts plus ``nms``.

:func:`ensure_torchvision` imports torchvision; only when that exact failure happens does it define
the two missing operator schemas (``nms``, ``qnms``) with a pure-PyTorch ``nms`` and import again.
Anywhere else (a matching torchvision build) it does nothing.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_MISSING_OP_MESSAGE = "operator torchvision::nms does not exist"
_LIBRARY = None  # keeps the torch.library registration alive


def ensure_torchvision() -> None:
    """Import torchvision, patching the missing-ops failure described in the module docstring."""
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if _MISSING_OP_MESSAGE not in str(exc):
            raise
    logger.info("torchvision's compiled ops are unavailable; using a pure-PyTorch nms instead")
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _define_nms_ops()
    import torchvision.ops.boxes  # noqa: F811

    # boxes.nms asserts the compiled extension loaded; our registered op stands in for it.
    torchvision.ops.boxes._assert_has_ops = lambda: None


def nms(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression; ``boxes`` are ``(N, 4)`` x1, y1, x2, y2.

    Returns kept indices.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order].float()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    xx1 = torch.maximum(x1[:, None], x1[None])
    yy1 = torch.maximum(y1[:, None], y1[None])
    xx2 = torch.minimum(x2[:, None], x2[None])
    yy2 = torch.minimum(y2[:, None], y2[None])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None] - inter).clamp(min=1e-12)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    overlaps = (iou > iou_threshold).cpu()
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def _define_nms_ops() -> None:
    global _LIBRARY
    import torch

    if _LIBRARY is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(op, nms, "CPU")
        lib.impl(op, nms, "CUDA")
    _LIBRARY = lib

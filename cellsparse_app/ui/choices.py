"""Menu entries and one-line texts of the web app that come from the core's registries: the
model families and the device training runs on (what the Train tab shows), the export formats."""

from __future__ import annotations

#: What people call each export format (keys of
#: :data:`~cellsparse_app.session.results.EXPORT_SUFFIXES`), in menu order.
EXPORT_FORMAT_LABELS: dict[str, str] = {
    "tiff": "Label TIFF (napari / Fiji)",
    "geojson": "QuPath GeoJSON",
    "imagej": "ImageJ ROI zip",
    "coco": "COCO JSON",
    "csv": "CSV measurements",
    "sparse": "Sparse annotation TIFF (-1/0/1..N, for cellsparse train)",
}


def export_format_choices() -> list[tuple[str, str]]:
    """``(label, key)`` of every export format the core writes."""
    from cellsparse_app.session.results import EXPORT_SUFFIXES

    return [(EXPORT_FORMAT_LABELS.get(key, key), key) for key in EXPORT_SUFFIXES]


def family_choices() -> list[tuple[str, str]]:
    """``(title, name)`` of every registered model family, default first."""
    from cellsparse_app.models.base import get_family, list_families

    return [(getattr(get_family(n), "title", n), n) for n in list_families()]


def family_advice() -> str:
    """One ``"Title — when to pick it."`` sentence per registered family, default first."""
    from cellsparse_app.models.base import get_family, list_families

    families = [get_family(n) for n in list_families()]
    return " ".join(f"{f.title} — {f.advice}." for f in families if f.advice)


def default_device() -> str:
    """``"cuda"`` or ``"cpu"``: where ``device="auto"`` trains."""
    from cellsparse_app.runtime.device import resolve_device

    return resolve_device("auto").type


def describe_device() -> str:
    """Where training runs, in words (GPU name, or CPU with its thread count)."""
    import torch

    from cellsparse_app.runtime.device import resolve_device

    device = resolve_device("auto")
    if device.type == "cuda":
        return f"**Device:** GPU — {torch.cuda.get_device_name(device)}"
    return (f"**Device:** CPU ({torch.get_num_threads()} threads; no GPU found) — training "
            "takes minutes, not seconds")

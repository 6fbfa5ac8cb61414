"""Markdown table and summary of the sparse benchmark's result rows."""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np

COLUMNS = ("data set", "family", "condition", "objects", "AP@0.5", "AP@0.75", "train s",
           "steps", "patches/s", "vs fp32 loop", "pred Mpx/s")


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (data set, family, k, mode): means and standard deviations over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["family"], r["k"], r["mode"]), []).append(r)
    out = []
    for (ds, fam, k, mode), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        entry = {"dataset": ds, "family": fam, "k": k, "mode": mode,
                 "condition": rs[0]["condition"], "seeds": len(rs), "failed": len(rs) - len(ok),
                 "annotated": float(np.mean([r["annotated"] for r in rs]))}
        for key in ("ap50", "ap75", "train_s", "steps", "patches_per_s", "pred_mpx_per_s"):
            vals = [r[key] for r in ok if r.get(key) is not None and not _nan(r[key])]
            entry[key] = float(np.mean(vals)) if vals else math.nan
            entry[key + "_std"] = float(np.std(vals)) if vals else math.nan
        out.append(entry)
    return out


def markdown_report(result: dict[str, Any]) -> str:
    """The table plus the paper's comparisons, as markdown."""
    settings, reference = result["settings"], result.get("reference", {})
    agg = aggregate(result["rows"])
    load = result.get("load_average") or {}
    lines = [
        "# Sparse-annotation benchmark (Sugawara 2023 conditions)",
        "",
        f"{len(settings['seeds'])} seed(s) {list(settings['seeds'])}, {_budget(settings)} of "
        f"training per run, {settings['n_train']} training / up to {settings['n_test']} held-out "
        f"test images per data set; machine: {platform.machine()}, {_cpus()} CPU(s), device "
        f"{settings['device']}. AP pooled over test images, mean ± std over seeds. Background = "
        "all background pixels of the dense ground truth (band: a 6-px ring of it around each "
        "annotated object). objects = annotated objects in total.",
        "",
        f"Load average (1/5/15 min) at start {load.get('start')}, at end {load.get('end')}: "
        f"timings are comparable only on an otherwise idle machine ({_cpus()} cores).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for e in agg:
        ref = reference.get(f"{e['dataset']}/{e['family']}", {}).get("patches_per_s")
        has_rate = ref and not _nan(e["patches_per_s"])
        ratio = f"{e['patches_per_s'] / ref:.2f}x" if has_rate else "n/a"
        failed = f" ({e['failed']} failed)" if e["failed"] else ""
        cells = [
            e["dataset"], e["family"], e["condition"] + failed,
            f"{e['annotated']:.0f}", _pm(e, "ap50"), _pm(e, "ap75"), f"{e['train_s']:.1f}",
            f"{e['steps']:.0f}", f"{e['patches_per_s']:.1f}", ratio, _pm(e, "pred_mpx_per_s"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Plain fp32 PyTorch loop of the same network (patches/s, same run): "
              + (", ".join(f"{k} {v['patches_per_s']:.1f}" for k, v in reference.items()) or "n/a")]
    lines += ["", *summary_lines(agg)]
    wins = family_lines(agg)
    if wins:
        lines += ["", "Which family wins where (AP@0.5; a tie when the lead is within the larger "
                  "spread over seeds):", "", *wins]
    return "\n".join(lines) + "\n"


def summary_lines(agg: list[dict[str, Any]]) -> list[str]:
    """The paper's claims, checked per data set and family: 5% + bg vs dense and vs naive."""
    index = {(e["dataset"], e["family"], e["k"], e["mode"]): e for e in agg}
    out = []
    for ds, fam in sorted({(e["dataset"], e["family"]) for e in agg}):
        dense = index.get((ds, fam, "100%", "bg"))
        for k in sorted({e["k"] for e in agg if e["k"] != "100%"}, key=_k_order):
            bg = index.get((ds, fam, k, "bg"))
            naive = index.get((ds, fam, k, "naive"))
            nobg = index.get((ds, fam, k, "nobg"))
            if bg is None:
                continue
            parts = [f"- {ds} / {fam}, k={k}: sparse+bg AP@0.5 {bg['ap50']:.3f}"]
            if dense is not None and dense["ap50"] > 0:
                parts.append(f"= {bg['ap50'] / dense['ap50']:.2f}x dense ({dense['ap50']:.3f})")
            if naive is not None:
                parts.append(f"; {bg['ap50'] - naive['ap50']:+.3f} vs naive ({naive['ap50']:.3f})")
            if nobg is not None:
                parts.append(
                    f"; {bg['ap50'] - nobg['ap50']:+.3f} vs no background ({nobg['ap50']:.3f})"
                )
            out.append(" ".join(parts))
    return out


def family_lines(agg: list[dict[str, Any]]) -> list[str]:
    """Per data set and condition trained with several families: the best family by AP@0.5.

    The lead over the runner-up is called a tie when it is not larger than the larger of the two
    standard deviations over seeds (one seed: any lead counts).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in agg:
        if not _nan(e["ap50"]):
            groups.setdefault((e["dataset"], e["k"], e["mode"]), []).append(e)
    out = []
    for (ds, k, mode), es in sorted(groups.items(), key=lambda kv: (kv[0][0], _k_order(kv[0][1]),
                                                                    kv[0][2])):
        if len({e["family"] for e in es}) < 2:
            continue
        es = sorted(es, key=lambda e: -e["ap50"])
        best, second = es[0], es[1]
        spread = max(_zero_if_nan(best["ap50_std"]), _zero_if_nan(second["ap50_std"]))
        lead = best["ap50"] - second["ap50"]
        verdict = f"**{best['family']}** wins by {lead:.3f}" if lead > spread else (
            f"tie between {best['family']} and {second['family']} ({lead:.3f} <= {spread:.3f})")
        others = ", ".join(f"{e['family']} {_pm(e, 'ap50')}" for e in es)
        out.append(f"- {ds}, {best['condition']}: {verdict} ({others})")
    return out


def _zero_if_nan(v: float) -> float:
    return 0.0 if _nan(v) else float(v)


def _budget(settings: dict[str, Any]) -> str:
    steps = settings.get("steps")
    return f"{steps} steps" if steps else f"{settings['seconds']:g} s"


def _k_order(k: str) -> tuple[int, float]:
    return (1, float(k[:-1])) if k.endswith("%") else (0, float(k))


def _pm(e: dict[str, Any], key: str) -> str:
    if _nan(e[key]):
        return "n/a"
    return f"{e[key]:.3f} ± {e[key + '_std']:.3f}"


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0

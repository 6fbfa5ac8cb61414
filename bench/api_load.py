"""Load test of the REST server: N concurrent clients clicking SAM prompts while a model trains.

    python -m bench.api_load                     # starts its own `cellsparse serve`
    python -m bench.api_load --url http://127.0.0.1:8000 --clients 8 --seconds 20

Two phases against the same server, in the same run: SAM prompts alone (the reference), then the
same load while a training job runs (real image and sparse labels from ``shared/data``). Prints
latency percentiles (p50/p95/p99) of both and their ratio, plus how far training got meanwhile,
so "training does not block SAM clicks" is a number, not a hope.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _b64png(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _sample() -> tuple[np.ndarray, np.ndarray]:
    """A real 256x256 fluorescence image (uint8 gray) and its dense annotation."""
    from bench.datasets import load_dataset

    samples, _ = load_dataset("dsb2018_fluo_dev")
    for s in samples:
        if s.image.shape[:2] == (256, 256) and s.mask.max() > 8:
            image = s.image if s.image.ndim == 2 else s.image[..., :3].mean(-1)
            return np.asarray(image).astype(np.uint8), s.mask
    raise RuntimeError("no 256x256 sample in dsb2018_fluo_dev")


def _percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies) * 1000.0
    if a.size == 0:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan")}
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def _clients(url: str, n: int, seconds: float, sam_type: str, images: list[str],
             headers: dict[str, str]) -> tuple[list[float], list[str]]:
    """``n`` threads posting point prompts for ``seconds``; returns latencies and errors."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def user(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            while time.perf_counter() < stop_at:
                x, y = (int(v) for v in rng.integers(8, 120, size=2))
                body = {"type": sam_type, "b64img": images[k % len(images)],
                        "point_coords": [[x, y]], "point_labels": [1], "multimask_output": False}
                t0 = time.perf_counter()
                try:
                    r = client.post("/sam/", json=body)
                    ok = r.status_code == 200 and isinstance(r.json(), list)
                    err = None if ok else f"{r.status_code}: {r.text[:200]}"
                except Exception as exc:  # record, keep loading the server
                    err = f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    if err is None:
                        latencies.append(dt)
                    else:
                        errors.append(err)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def run(url: str, clients: int = 8, seconds: float = 15.0, sam_type: str = "vit_t",
        train_seconds: float | None = None, token: str | None = None,
        views: int = 4) -> dict[str, Any]:
    """Both phases against the server at ``url``; returns the numbers (also for tests).

    ``views`` distinct 128x128 image views are shared by the clients (as QuPath sends the
    viewer region); each is encoded once before the phases, so the latencies are those of
    clicks on an image already shown, the interactive case.
    """
    import httpx

    from cellsparse_app.data.labels import select_sparse, to_wire

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    image, mask = _sample()
    crops = [image[r:r + 128, c:c + 128] for r in (0, 128) for c in (0, 128)][:max(1, views)]
    rgb = [_b64png(np.stack([c] * 3, -1)) for c in crops]
    with httpx.Client(base_url=url, timeout=300, headers=headers) as client:
        for b64 in rgb:  # warm-up: load the model, encode each view once
            warm = client.post("/sam/", json={"type": sam_type, "b64img": b64,
                                              "point_coords": [[64, 64]], "point_labels": [1]})
            warm.raise_for_status()
    reference, ref_errors = _clients(url, clients, seconds, sam_type, rgb, headers)

    ids = np.unique(mask)[1:]
    wire = to_wire(select_sparse(mask, ids[:: max(1, len(ids) // 8)]))
    job_body = {"family": "cellpose", "model_name": "load-test", "images": [_b64png(image)],
                "labels": [_b64png(wire)], "max_seconds": train_seconds or seconds + 10,
                "resume": False}
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        job = client.post("/api/v1/jobs", json=job_body)
        job.raise_for_status()
        job_id = job.json()["id"]
        deadline = time.time() + 60
        while client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "queued":
            if time.time() > deadline:
                raise RuntimeError("the training job never started")
            time.sleep(0.2)
        step0 = client.get(f"/api/v1/jobs/{job_id}").json()["step"]
        loaded, load_errors = _clients(url, clients, seconds, sam_type, rgb, headers)
        during = client.get(f"/api/v1/jobs/{job_id}").json()
        client.post(f"/api/v1/jobs/{job_id}/cancel")
    return {
        "clients": clients, "seconds": seconds, "sam_type": sam_type,
        "reference": _percentiles(reference), "during_training": _percentiles(loaded),
        "errors": ref_errors + load_errors,
        "train_steps_during": int(during["step"]) - int(step0),
        "train_state": during["state"],
    }


def print_table(res: dict[str, Any]) -> None:
    """The result as a small table with ratios against the no-training reference."""
    ref = res["reference"]
    print(f"SAM prompts ({res['sam_type']}), {res['clients']} concurrent clients, "
          f"{res['seconds']:.0f} s per phase")
    print(f"{'phase':<18}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"
          f"{'p50 ratio':>11}")
    for name in ("reference", "during_training"):
        r = res[name]
        ratio = r["p50"] / ref["p50"] if ref["p50"] else float("nan")
        print(f"{name:<18}{r['n']:>6}{r['p50']:>10.0f}{r['p95']:>10.0f}{r['p99']:>10.0f}"
              f"{r['max']:>10.0f}{ratio:>11.2f}")
    print(f"training steps done during the loaded phase: {res['train_steps_during']} "
          f"(job {res['train_state']}); errors: {len(res['errors'])}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="existing server (default: start one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--sam-type", default="vit_t", help="vit_t (random weights when the "
                        "server was started by this script), fallback ...")
    parser.add_argument("--token", default=os.environ.get("CELLSPARSE_API_TOKEN"))
    args = parser.parse_args(argv)
    proc = None
    url = args.url
    with tempfile.TemporaryDirectory() as tmp:
        if url is None:
            import httpx

            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            env = dict(os.environ, CELLSPARSE_HOME=str(Path(tmp) / "data"),
                       CELLSPARSE_SAM_RANDOM_INIT="1", CELLSPARSE_SAM_ENCODER="torch",
                       PYTHONPATH=str(REPO))
            proc = subprocess.Popen([sys.executable, "-m", "cellsparse_app.cli", "serve",
                                     "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            for _ in range(600):
                try:
                    if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
        try:
            res = run(url, args.clients, args.seconds, args.sam_type, token=args.token)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print_table(res)
    return 0 if not res["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

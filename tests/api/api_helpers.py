"""Helpers for the REST API tests: encoders, a real annotated image, a live server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from cellsparse_app.data.labels import select_sparse, to_wire

REPO = Path(__file__).resolve().parents[2]


def b64png(array: np.ndarray) -> str:
    """Base64 PNG of a uint8/uint16 gray or uint8 RGB array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def b64tiff(array: np.ndarray) -> str:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.asarray(array))
    return base64.b64encode(buf.getvalue()).decode()


def sparse_wire_labels(mask: np.ndarray, fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """cellsparse-api wire labels (uint16) annotating some cells of a dense mask + background."""
    ids = np.unique(mask)
    ids = ids[ids > 0]
    rng = np.random.default_rng(seed)
    keep = rng.choice(ids, size=max(2, int(len(ids) * fraction)), replace=False)
    return to_wire(select_sparse(mask, keep))


def gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image[..., :3].mean(-1).astype(image.dtype)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: Path) -> set[str]:
    """Relative paths of everything under ``root``."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


class LiveServer:
    """A real ``cellsparse serve`` process on 127.0.0.1 and a free port."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.data = workdir / "data"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update(
            HOME=str(self.home), TMPDIR=str(self.home), CELLSPARSE_HOME=str(self.data),
            PYTHONPATH=str(REPO), CELLSPARSE_MAX_BODY_MB="8",
        )
        full_env.update(env or {})
        self.log = open(workdir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellsparse_app.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=workdir, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start in 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def output(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

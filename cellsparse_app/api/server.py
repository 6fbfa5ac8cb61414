"""The app factory and ``cellsparse serve``: REST API + web UI in one process.

``create_app(settings)`` builds a FastAPI app with the cellsparse-api and samapi compatible routes,
our ``/api/v1`` routes, the safety middleware (body size cap, optional token) and, when
``cellsparse_app.ui`` is installed, the Gradio UI mounted at ``/ui``. ``serve`` runs it with
uvicorn, bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

import cellsparse_app
from cellsparse_app.api import routes_cellsparse, routes_sam, routes_v1
from cellsparse_app.api.errors import install_handlers
from cellsparse_app.api.security import BodySizeLimit, TokenAuth
from cellsparse_app.api.settings import ServerSettings
from cellsparse_app.api.state import AppState
from cellsparse_app.json_config import config_from_values

logger = logging.getLogger(__name__)

UI_PATH = "/ui"
#: Body cap under /ui (file uploads; Gradio enforces its own, smaller, max_file_size).
UI_MAX_BODY_BYTES = 512 * 2**20
#: Seconds a stopping server waits for requests in flight (a training stops at its next step
#: and answers 503 well within this).
GRACEFUL_SHUTDOWN_SECONDS = 30

_DESCRIPTION = """
Train cell-segmentation models from sparse annotations, and segment with Segment Anything.

* **cellsparse-api compatible** routes (`/cellpose/`, `/stardist/`, `/elephant/`, `.../reset/`)
  for qupath-extension-cellsparse: label PNG/TIFF 0 unlabelled, 1 background, >=2 cells.
* **samapi compatible** routes (`/sam/...`) for qupath-extension-sam.
* **/api/v1**: asynchronous training jobs with progress and cancel, label TIFF predictions,
  metrics, model download.

Images are base64 PNG/TIFF/JPEG (8/16-bit, gray or RGB). If the server was started with a token
(`CELLSPARSE_API_TOKEN`), send `Authorization: Bearer <token>` or use `/t/<token>/` as URL prefix.
"""


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the server app.

    Args:
        settings: server settings (default: :meth:`ServerSettings.from_env`).
    """
    settings = settings or ServerSettings.from_env()
    state = AppState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="cellsparse app",
        version=cellsparse_app.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.cellsparse = state
    install_handlers(app)
    app.include_router(routes_cellsparse.router)
    app.include_router(routes_sam.router)
    app.include_router(routes_v1.router)
    ui = settings.mount_ui and _mount_ui(app, state)

    @app.get("/", summary="Redirect to the web UI (or the API docs without UI)",
             response_class=RedirectResponse, status_code=307)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PATH}/" if ui else "/docs", status_code=307)

    # Added last = outermost: the Host header is checked first, then the token, then the size.
    # The UI has its own upload limit (Gradio's max_file_size); its bodies may be larger.
    ui_cap = max(settings.max_body_bytes, UI_MAX_BODY_BYTES)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       prefix_limits={UI_PATH: ui_cap} if ui else None)
    if settings.token:
        app.add_middleware(TokenAuth, token=settings.token, exempt=("/api/v1/health",))
    hosts = settings.host_allowlist()
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return app


def _mount_ui(app: FastAPI, state: AppState) -> bool:
    """Mount the Gradio UI at ``/ui`` if ``cellsparse_app.ui`` provides ``build_demo``."""
    try:
        from cellsparse_app.ui import build_demo
    except ImportError as exc:
        logger.info("web UI not available (%s); serving the API only", exc)
        return False
    try:
        import gradio as gr

        demo = build_demo(*_ui_context(state))
        options: dict[str, Any] = {}
        with contextlib.suppress(ImportError):
            from cellsparse_app.ui import launch_options

            accepted = inspect.signature(gr.mount_gradio_app).parameters
            options = {k: v for k, v in launch_options().items() if k in accepted}
        gr.mount_gradio_app(app, demo, path=UI_PATH, **options)
    except Exception:  # the API must keep working even if the UI cannot be built
        logger.exception("building the web UI failed; serving the API only")
        return False
    logger.info("web UI mounted at %s", UI_PATH)
    return True


def _ui_context(state: AppState) -> tuple[Any, ...]:
    """``build_demo`` arguments keeping the UI's per-session folders inside the data dir."""
    try:
        from cellsparse_app.ui.context import AppContext, AppSettings
    except ImportError:
        return ()
    # A UI without ``session_root`` gets its defaults, as without a context.
    ui_settings = config_from_values(
        AppSettings, {"session_root": state.settings.data_dir / "sessions",
                      "weights_dir": state.settings.weights_dir}, ignore_unknown=True)
    return (AppContext(ui_settings),)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: str | Path | None = None,
    **overrides: Any,
) -> None:
    """Run the server with uvicorn until interrupted (``cellsparse serve``).

    Args:
        host: interface to bind (loopback by default; set a token before exposing it).
        port: TCP port.
        data_dir: where models, weights and temporary files go (default ``$CELLSPARSE_HOME`` or
            ``~/.cellsparse``).
        overrides: other :class:`ServerSettings` fields.
    """
    import uvicorn

    settings = ServerSettings.from_env(host=host, port=port, data_dir=data_dir, **overrides)
    if not settings.is_loopback and not settings.token:
        logger.warning(
            "serving on %s without an API token: anyone who can reach this port can train "
            "models and use the CPU/GPU; set CELLSPARSE_API_TOKEN", settings.host
        )
    point_process_files_at(settings)
    app = create_app(settings)
    logger.info("cellsparse app %s on http://%s:%d (data: %s)", cellsparse_app.__version__,
                settings.host, settings.port, settings.data_dir)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    _stopping_server(config, app.state.cellsparse).run()


def point_process_files_at(settings: ServerSettings) -> None:
    """Keep everything this process writes inside the data dir, temporary files included.

    The only place the server sets environment variables: libraries we do not control (the
    ``tempfile`` module, gradio, torch inductor, ONNX Runtime and matplotlib through XDG) pick
    their folders from them, so they must be set before those are imported. Our own code gets
    its folders from :class:`ServerSettings` (the mounted web app its weights cache too).
    """
    tmp = settings.data_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "torchinductor"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp / "gradio"))
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp / "cache"))


def _stopping_server(config: Any, state: AppState) -> Any:
    """A uvicorn server that stops training the moment SIGTERM/SIGINT arrives.

    uvicorn first waits for requests in flight and only then runs the app's shutdown; a client
    waiting for a blocking training would be cut with a bare 500. Stopping the job first lets
    that request answer a clear 503 (JSON) before the connection closes.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.begin_shutdown()
            super().handle_exit(sig, frame)

    return Server(config)

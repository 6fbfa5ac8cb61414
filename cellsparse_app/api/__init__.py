"""REST API front end: one FastAPI app serving the cellsparse-api and samapi wire formats, our
``/api/v1`` routes and (when installed) the web UI at ``/ui``. See :mod:`.server`.

The core never imports this package; it imports the core.
"""

from cellsparse_app.api.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]


def create_app(settings: ServerSettings | None = None):  # noqa: ANN201 (FastAPI, lazily)
    """Build the FastAPI app (see :func:`cellsparse_app.api.server.create_app`)."""
    from cellsparse_app.api.server import create_app as _create_app

    return _create_app(settings)


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir=None, **overrides) -> None:
    """Run the server (see :func:`cellsparse_app.api.server.serve`)."""
    from cellsparse_app.api.server import serve as _serve

    _serve(host=host, port=port, data_dir=data_dir, **overrides)

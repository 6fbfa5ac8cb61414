"""Turn core exceptions into readable ``gr.Error`` messages (never a traceback in the page)."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

import gradio as gr

logger = logging.getLogger(__name__)

#: Exceptions the core raises for things the user can fix; their message is shown as is.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, RuntimeError, FileNotFoundError, KeyError, PermissionError,
)
KEPT = "Your images, annotations and trained rounds are kept."


def to_gr_error(exc: BaseException) -> gr.Error:
    """The ``gr.Error`` shown for ``exc``: its message for user errors, a summary otherwise."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, USER_ERRORS):
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return gr.Error(message or type(exc).__name__, title="Cannot do that")
    logger.exception("unexpected error in a UI handler")
    return gr.Error(f"Unexpected {type(exc).__name__}: {exc}. {KEPT}", title="Something went wrong")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for handlers: exceptions become :func:`to_gr_error` (generators too)."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # the edge of the app: every failure becomes a message
                raise to_gr_error(exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # the edge of the app: every failure becomes a message
            raise to_gr_error(exc) from exc

    return wrapper


def require(workspace: Any) -> Any:
    """The session's workspace, or a clear error while the page is still starting."""
    if workspace is None:
        raise gr.Error("The page is still starting; try again in a second (or reload it).")
    return workspace

"""The Gradio web app (a thin front end over :mod:`cellsparse_app.session.workspace`).

    from cellsparse_app.ui import build_demo, launch_options
    build_demo().launch(**launch_options())

To serve it from a FastAPI app: ``gr.mount_gradio_app(app, build_demo(), path="/ui",
**launch_options())`` (theme and CSS are launch options in Gradio 6).
"""

from cellsparse_app.ui.layout import build_demo
from cellsparse_app.ui.style import launch_options

__all__ = ["build_demo", "launch_options"]

"""Look of the app: a Gradio theme with local fonts only (works offline) and a little CSS."""

from __future__ import annotations

from typing import Any

import gradio as gr

_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial",
          "sans-serif"]
_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.cs-header { display:flex; align-items:baseline; gap:1em; flex-wrap:wrap; margin-bottom:-.4em }
.cs-header h1 { margin:0; font-size:1.6em; letter-spacing:-.02em; display:flex;
                align-items:center; gap:.35em }
.cs-header .cs-tagline { color: var(--body-text-color-subdued); }
#cs-sam-status p, #cs-device p { font-size:.85em; margin:0; color: var(--body-text-color-subdued) }
#canvas img { cursor: crosshair; }
.cs-legend { display:flex; flex-wrap:wrap; gap:.4em 1em; font-size:.85em; padding:.2em 0 }
.cs-legend i { display:inline-block; width:.95em; height:.95em; border-radius:3px;
               margin-right:.35em; vertical-align:-.12em }
.cs-progress { position:relative; min-height:2em; border-radius:8px; overflow:hidden;
               background: var(--neutral-200); border:1px solid var(--border-color-primary) }
.dark .cs-progress { background: var(--neutral-800) }
.cs-bar { position:absolute; left:0; top:0; bottom:0; background: var(--color-accent); opacity:.75;
          transition: width .4s ease }
.cs-done .cs-bar { background:#16a34a } .cs-stopped .cs-bar { background:#d97706 }
.cs-failed .cs-bar { background:#dc2626; width:100% !important; opacity:.35 }
/* In the flow, not absolute: a long message (a refusal, a round's notes) wraps and the box grows. */
.cs-progress-text { position:relative; display:block; padding:.3em .7em; font-size:.9em;
                    font-weight:600; font-variant-numeric: tabular-nums }
#cs-status p { margin:.2em 0; font-size:.92em }
#cs-summary p { margin:.2em 0 }
.cs-step-help p { font-size:.88em; color: var(--body-text-color-subdued); margin:.1em 0 }
footer { display:none !important }
"""


def theme() -> Any:
    """A calm teal theme; fonts are the system's, so nothing is fetched from the internet."""
    return gr.themes.Soft(
        primary_hue="teal", secondary_hue="sky", neutral_hue="slate", font=_FONTS, font_mono=_MONO
    )


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` or ``gr.mount_gradio_app`` (theme, CSS, limits)."""
    return {"theme": theme(), "css": CSS, "max_file_size": "500mb"}

"""Optional number fields of the web app: empty means "the default", never 0.

Gradio's ``gr.Number(None)`` shows and sends 0, and its ``minimum`` check refuses the event before
any handler runs (the user sees "Value 0 is less than minimum value 1." and nothing else happens).
So optional settings are text boxes whose placeholder names the default, parsed here, and numbers
with a default are checked here too: every refusal is a message that names the field and value.
"""

from __future__ import annotations

import math
from typing import Any


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    text = str(value).strip()
    return text or None


def optional_float(
    value: Any, name: str, *, low: float | None = None, high: float | None = None,
    low_inclusive: bool = True,
) -> float | None:
    """``value`` (a field's text or number) as a float; None when the field is empty.

    Raises:
        ValueError: naming ``name`` and the value, when it is not a number in range.
    """
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number (or empty for the default), got {text!r}") \
            from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {text!r}")
    below = low is not None and (number < low if low_inclusive else number <= low)
    if below or (high is not None and number > high):
        bounds = []
        if low is not None:
            bounds.append(f"{'>=' if low_inclusive else '>'} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise ValueError(f"{name} must be {' and '.join(bounds)} (or empty for the default), "
                         f"got {text}")
    return number


def optional_int(value: Any, name: str, *, low: int | None = None) -> int | None:
    """``value`` as a whole number >= ``low``; None when the field is empty."""
    number = optional_float(value, name, low=low)
    if number is None:
        return None
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {_text(value)}")
    return int(number)

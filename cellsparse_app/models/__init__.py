"""Model families (Cellpose-style, StarDist-style, ELEPHANT-style) behind one registry."""

from cellsparse_app.models.base import (
    ModelConfig,
    ModelFamily,
    get_family,
    list_families,
    register_family,
)

__all__ = ["ModelConfig", "ModelFamily", "get_family", "list_families", "register_family"]

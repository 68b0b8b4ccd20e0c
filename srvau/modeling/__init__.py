"""Model and processor loading. Importing this package makes torchvision importable (srvau.compat)."""

from srvau.compat import ensure_torchvision

ensure_torchvision()

from srvau.modeling.loading import (  # noqa: E402
    load_model,
    load_processor,
    vision_token_ids,
)

__all__ = ["load_model", "load_processor", "vision_token_ids"]

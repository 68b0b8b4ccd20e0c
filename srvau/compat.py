"""Environment shims, in one place.

torchvision on CPU-only torch: for torch 2.13 the package registry only carries a CUDA build of
torchvision (0.28.0). Its compiled ops cannot load against the CPU torch, and its import then fails in
``_meta_registrations`` (``operator torchvision::nms does not exist``) because it registers fake kernels
for ops it assumes exist. Qwen2.5-VL's video processor needs torchvision's pure-torch transforms, not
those ops. ``ensure_torchvision()`` therefore tries to load torchvision's own compiled ops first (a
healthy install: nothing else happens) and only when that fails defines the two op *schemas* so the
import succeeds. Detection / NMS code would still fail loudly, which is what we want.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


@functools.cache
def ensure_torchvision() -> str:
    """Make ``import torchvision`` work; returns 'native', 'shimmed', 'absent' or 'already-imported'."""
    import sys

    if "torchvision" in sys.modules:
        return "already-imported"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    import torch

    pkg = Path(next(iter(spec.submodule_search_locations)))
    for lib in sorted(pkg.glob("_C*.so")) + sorted(pkg.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(lib))
            return "native"
        except (OSError, RuntimeError):
            break
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        try:
            lib.define(schema)
        except RuntimeError:  # already defined by someone else
            pass
    # Keep the Library object alive: its registrations die with it.
    ensure_torchvision._lib = lib  # type: ignore[attr-defined]
    log.debug("torchvision compiled ops unavailable; registered op schemas only")
    return "shimmed"

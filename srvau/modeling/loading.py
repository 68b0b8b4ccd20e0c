"""One loader for every checkpoint: the offline tiny model, a local folder or a Hub id.

``local_files_only`` is set whenever the name is an existing folder, so a missing file fails loudly
instead of reaching for the network; a Hub id obeys the usual ``HF_HUB_OFFLINE`` switch.
``trust_remote_code`` comes from params (off by default) and is never implied.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from srvau.compat import ensure_torchvision
from srvau.config import ModelConfig

log = logging.getLogger(__name__)

VISION_PLACEHOLDERS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _source(name_or_path: str | Path) -> tuple[str, bool]:
    p = Path(name_or_path)
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} is a folder but holds no config.json: not a checkpoint")
        return str(p), True
    # A Hub id is "org/name" (dots allowed: Qwen/Qwen2.5-VL-3B-Instruct); anything else that does
    # not exist is a mistyped local path, reported as such rather than sent to the Hub.
    name = str(name_or_path)
    local_looking = name.startswith((".", "/")) or Path(name.split("/")[0]).is_dir()  # e.g. models/sft
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or local_looking:
        raise FileNotFoundError(f"model path {p} does not exist (and it is not a Hub id of the form org/name)")
    return str(name_or_path), False


def load_processor(name_or_path: str | Path, cfg: ModelConfig | None = None):
    ensure_torchvision()
    from transformers import AutoProcessor

    cfg = cfg or ModelConfig()
    src, local = _source(name_or_path)
    return AutoProcessor.from_pretrained(src, local_files_only=local, trust_remote_code=cfg.trust_remote_code)


def load_model(name_or_path: str | Path, cfg: ModelConfig | None = None, device_map=None):
    ensure_torchvision()
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = cfg or ModelConfig()
    src, local = _source(name_or_path)
    dtype = "auto" if cfg.torch_dtype == "auto" else getattr(torch, cfg.torch_dtype)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        src,
        local_files_only=local,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype,
        attn_implementation=cfg.attn_implementation,
        device_map=device_map,
    )
    log.info("loaded %s (%s, %.1f M params)", src, cfg.torch_dtype, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def vision_token_ids(tokenizer) -> list[int]:
    """Placeholder ids that generation must never emit: an untrained policy samples them, and the
    next forward then fails with 'Video features and video tokens do not match' (docs/pitfalls.md)."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_PLACEHOLDERS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]

"""The one generation path: evaluation, the policy teacher and the registered model all decode here.

* Settings are explicit (:class:`GenerationSettings`). transformers 5 fills every field a passed
  ``GenerationConfig`` leaves unset from the checkpoint's own ``generation_config.json``; Qwen2.5-VL's
  Hub file carries ``repetition_penalty=1.05`` (and sampling settings), which would then change the
  outputs silently. So every decoding field is set here, to transformers' neutral default unless the
  settings say otherwise. ``use_checkpoint_defaults=True`` is the explicit opt-in to the file's values.
* Several (prompt, video) pairs share one ``generate()`` call with *left* padding; under greedy
  decoding the tokens equal one-at-a-time generation (tested).
* Vision placeholder ids are suppressed: an untrained model samples ``<|video_pad|>`` and the next
  forward then fails ("Video features and video tokens do not match").
* Outputs are cut after the first end-of-sequence token (a batch keeps padding finished rows).
* A video asked several questions in one batch goes through the vision encoder once: its features are
  computed per distinct clip and handed to ``generate()`` as ``mm_encoder_outputs`` (transformers'
  own slot for precomputed encoder outputs). The vision encoder treats every video on its own (block-
  diagonal attention), so the features, and the tokens, are those of one video per call (tested).
  The evaluation orders its prompts video by video so that a batch holds few videos.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

Clip = tuple[np.ndarray, dict]  # (uint8 (T, H, W, 3) frames, video metadata): srvau.video.cache.load_frames
ClipSource = Union[Clip, str, Path]  # a clip, or the path of its frame-cache entry (loaded per batch)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    seed: int = 1234  # seeds torch once per run when sampling
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    use_checkpoint_defaults: bool = False  # True: the checkpoint's generation_config decides the decoding

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    text: str  # decoded, special tokens skipped
    token_ids: list[int]  # new tokens up to and including the first end-of-sequence
    prompt_tokens: int  # prompt length without padding


def inference_device_map() -> str | None:
    """Where a model for generation goes: the accelerator when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def chat_text(processor, prompt: str, system: str | None = None) -> str:
    """The chat-templated prompt (one video, then the text) with the assistant turn opened."""
    from srvau.modeling.inputs import user_message

    return processor.apply_chat_template(user_message(prompt, system), add_generation_prompt=True, tokenize=False)


def generation_config(model, tokenizer, settings: GenerationSettings):
    """A ``GenerationConfig`` with nothing left for the checkpoint's file to fill (see the module docstring)."""
    from transformers import GenerationConfig

    from srvau.modeling.loading import vision_token_ids

    ckpt = model.generation_config
    eos = ckpt.eos_token_id if ckpt.eos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    if settings.use_checkpoint_defaults:
        cfg = copy.deepcopy(ckpt)
        suppress = sorted(set(cfg.suppress_tokens or []) | set(vision_token_ids(tokenizer)))
        cfg.update(max_new_tokens=settings.max_new_tokens, suppress_tokens=suppress)
        if cfg.pad_token_id is None:
            cfg.pad_token_id = pad
        if cfg.eos_token_id is None:
            cfg.eos_token_id = eos
        return cfg
    neutral = {k: v for k, v in GenerationConfig._get_default_generation_params().items() if v is not None}
    # the budget is max_new_tokens (min_length beside min_new_tokens only makes transformers warn at every
    # generate()); the rest are deprecated
    for key in ("max_length", "min_length", "num_beam_groups", "diversity_penalty"):
        neutral.pop(key, None)
    sampling = {} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
    return GenerationConfig(
        **{
            **neutral,
            "max_new_tokens": settings.max_new_tokens,
            "min_new_tokens": 0,
            "do_sample": not settings.greedy,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "suppress_tokens": vision_token_ids(tokenizer),
            **sampling,
        }
    )


def generation_kwargs(model, tokenizer, settings: GenerationSettings) -> dict[str, Any]:
    """``generate()`` keyword arguments for ``settings`` (the config of :func:`generation_config`)."""
    return {"generation_config": generation_config(model, tokenizer, settings)}


def seed_sampling(settings: GenerationSettings) -> None:
    """Seed torch once per run, so a sampled run is reproducible (greedy needs no seed)."""
    if not settings.greedy or settings.use_checkpoint_defaults:
        import torch

        torch.manual_seed(settings.seed)


def _eos_ids(gen_kwargs: dict[str, Any]) -> set[int]:
    eos = gen_kwargs["generation_config"].eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def _trim(ids: list[int], eos: set[int]) -> list[int]:
    """Tokens up to and including the first end-of-sequence (a batch pads finished rows after it)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def _distinct(clips: Sequence[Clip]) -> list[int]:
    """For each clip, the position of its first occurrence (the same frames object = the same video)."""
    first: dict[int, int] = {}
    return [first.setdefault(id(c[0]), i) for i, c in enumerate(clips)]


def _shared_video_features(model, inputs, owner: Sequence[int]) -> dict | None:
    """``mm_encoder_outputs`` holding each distinct video's features once per row that shows it, or
    None when every row has its own video (generate() then encodes them itself, as always)."""
    if len(set(owner)) == len(owner) or "pixel_values_videos" not in inputs:
        return None
    encode = getattr(model, "get_video_features", None)
    if encode is None:  # not a Qwen2.5-VL-style model: leave the encoding to generate()
        return None
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    grid = inputs["video_grid_thw"]
    rows = torch.split(inputs["pixel_values_videos"], grid.prod(-1).tolist())
    keep = sorted(set(owner))
    feats = encode(torch.cat([rows[i] for i in keep]), grid[keep], return_dict=True).pooler_output
    by_owner = dict(zip(keep, feats))
    return {"video": BaseModelOutputWithPooling(pooler_output=tuple(by_owner[o] for o in owner))}


def generate_batch(model, processor, texts: Sequence[str], clips: Sequence[Clip], gen_kwargs: dict) -> list[Generation]:
    """One left-padded ``generate()`` over several (chat text, clip) pairs, on the model's device.

    Rows that share a clip (the same frames object) share its vision features (module docstring)."""
    import torch

    from srvau.modeling.inputs import processor_inputs

    inputs = processor_inputs(processor, texts, [c[0] for c in clips], [c[1] for c in clips], padding_side="left")
    inputs = inputs.to(model.device)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    width = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        shared = _shared_video_features(model, inputs, _distinct(clips))
        if shared is not None:
            inputs = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
            inputs["mm_encoder_outputs"] = shared
        out = model.generate(**inputs, **gen_kwargs)
    eos = _eos_ids(gen_kwargs)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    gens = []
    for row, n_prompt in zip(out[:, width:].tolist(), lengths):
        ids = _trim(row, eos)
        text = processor.tokenizer.decode(ids, skip_special_tokens=True)
        gens.append(Generation(text=text, token_ids=ids, prompt_tokens=int(n_prompt)))
    return gens


def _load(clip: ClipSource) -> Clip:
    if isinstance(clip, (str, Path)):
        from srvau.video.cache import load_frames

        if not Path(clip).is_file():
            raise FileNotFoundError(f"frame cache entry {clip} not found")
        return load_frames(clip)
    return clip


def _load_batch(sources: Sequence[ClipSource]) -> list[Clip]:
    """The batch's clips, a path named twice loaded once (so its rows share one video encoding)."""
    by_path: dict[str, Clip] = {}
    out = []
    for src in sources:
        if isinstance(src, (str, Path)):
            key = str(src)
            if key not in by_path:
                by_path[key] = _load(src)
            out.append(by_path[key])
        else:
            out.append(src)
    return out


def generate(
    model,
    processor,
    texts: Sequence[str],
    clips: Sequence[ClipSource],
    settings: GenerationSettings,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate for every (chat text, clip) in batches of ``batch_size``, in the given order.

    Frame-cache paths are loaded one batch at a time (memory stays bounded); ``on_batch(n)`` is called
    after each batch of ``n`` (progress bars).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if len(texts) != len(clips):
        raise ValueError(f"{len(texts)} texts but {len(clips)} clips")
    gen_kwargs = generation_kwargs(model, processor.tokenizer, settings)
    seed_sampling(settings)
    out: list[Generation] = []
    for start in range(0, len(texts), batch_size):
        idx = range(start, min(start + batch_size, len(texts)))
        out += generate_batch(model, processor, [texts[i] for i in idx], _load_batch([clips[i] for i in idx]), gen_kwargs)
        if on_batch:
            on_batch(len(idx))
    return out

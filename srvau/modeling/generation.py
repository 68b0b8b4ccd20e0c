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
* A video asked several questions is processed and encoded once: :class:`VideoCache` keeps each clip's
  processed video (``srvau.modeling.inputs.video_inputs``, the processor's own tensors) and its vision
  features for the following batches, and ``generate()`` gets the features as ``mm_encoder_outputs``
  (transformers' own slot for precomputed encoder outputs). The vision encoder treats every video on its
  own (block-diagonal attention), so the features, and the tokens, are those of one video per call.
* Rows of a batch that agree up to the end of their video (same system prompt, same clip) share that
  prefix's prefill: it runs once per group and its key/value cache is copied to the group's rows, which
  then prefill only their own text (:func:`_shared_prefix_generate`). Greedy tokens equal one-at-a-time
  generation (tested). The evaluation orders its prompts video by video, one system prompt together, so
  that a batch holds few videos and whole groups.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
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
    finished: bool = True  # False: the budget (max_new_tokens) ran out before an end-of-sequence token


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


class VideoCache:
    """Each clip's processed video and vision features, made once and kept for the next batches (LRU).

    A clip is known by its frames object (``FrameStore`` and :func:`generate` hand out one object per
    frame-cache entry); an entry keeps that object alive, so its id cannot name another clip while
    cached. Features belong to one model: use one cache per model (``run_inference`` makes one per call).
    ``capacity`` bounds memory (videos kept); 0 keeps nothing beyond the current batch."""

    def __init__(self, capacity: int = 32):
        self.capacity = max(0, capacity)
        self._items: OrderedDict[int, _Video] = OrderedDict()

    def videos(self, processor, clips: Sequence[Clip]) -> list["_Video"]:
        """One entry per clip (rows showing the same frames object share it), processed when new."""
        from srvau.modeling.inputs import video_inputs

        batch: dict[int, _Video] = {}
        for frames, meta in clips:
            key = id(frames)
            if key in batch:
                continue
            video = self._items.get(key)
            if video is None:
                video = _Video(frames, video_inputs(processor, frames, meta))
            batch[key] = video
        for key, video in batch.items():  # newest last; the batch's own videos outlive its evictions
            self._items[key] = video
            self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return [batch[id(frames)] for frames, _ in clips]

    @staticmethod
    def encode(model, videos: Sequence["_Video"]) -> None:
        """Vision features of the videos that lack them, in one encoder call (it treats every video on its
        own: block-diagonal attention, so a video's features do not depend on its company)."""
        import torch

        todo = list({id(v): v for v in videos if v.features is None}.values())
        if not todo:
            return
        pixels = torch.cat([v.inputs["pixel_values_videos"] for v in todo]).to(model.device, model.dtype)
        grid = torch.cat([v.inputs["video_grid_thw"] for v in todo]).to(model.device)
        for v, f in zip(todo, model.get_video_features(pixels, grid, return_dict=True).pooler_output):
            v.features = f
            v.inputs = {k: t for k, t in v.inputs.items() if k != "pixel_values_videos"}  # done with; the bulk


@dataclass
class _Video:
    frames: np.ndarray  # pinned, see VideoCache
    inputs: dict[str, Any]  # srvau.modeling.inputs.video_inputs
    features: Any = None  # vision-encoder output on the model's device


def _mm_outputs(features: Sequence[Any]) -> dict:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}


def _video_fields(videos: Sequence[_Video], device) -> dict[str, Any]:
    import torch

    return {k: torch.cat([v.inputs[k] for v in videos]).to(device) for k in ("video_grid_thw", "second_per_grid_ts")}


def _prefix_ends(ids: list[int], vision_end: int) -> int:
    """Length of a prompt's shared part: everything up to and including its video (system prompt, chat
    header, video tokens); the text after it is the row's own. 0 when the prompt has no video."""
    return ids.index(vision_end) + 1 if vision_end in ids else 0


def _shared_prefix_generate(model, enc, videos: Sequence[_Video], gen_kwargs: dict):
    """generate() with the part each row shares with other rows of the batch computed once per group.

    Rows whose prompts agree up to the end of their video (same system prompt, same clip) form a group;
    the group's prefix goes through the model once (groups of one length together, unpadded: the kernels
    of a one-prompt prefill), and its key/value cache is copied to every row of the group. generate() then
    runs the rows' own text on top of that cache. The rows are laid out [pad | prefix | pad | own text]:
    padding inside the prompt is masked out like left padding, and the 3D rope positions (Qwen2.5-VL's
    ``get_rope_index``) count only real tokens, so every real token sees the keys and positions it would
    alone. Returns (output ids, prompt width) or None when no two rows share a prefix.
    """
    import torch
    from transformers import StaticCache

    vision_end = getattr(model.config, "vision_end_token_id", None)
    rope_index = getattr(getattr(model, "model", None), "get_rope_index", None)
    if vision_end is None or rope_index is None:
        return None
    mask = enc["attention_mask"].bool()
    rows = [ids[m].tolist() for ids, m in zip(enc["input_ids"], mask)]
    types = [t[m].tolist() for t, m in zip(enc["mm_token_type_ids"], mask)]
    ends = [_prefix_ends(r, vision_end) for r in rows]
    if not all(0 < e < len(r) for e, r in zip(ends, rows)):
        return None
    groups: dict[tuple, list[int]] = {}
    for i, (r, e) in enumerate(zip(rows, ends)):
        groups.setdefault((id(videos[i]), tuple(r[:e])), []).append(i)
    if len(groups) == len(rows):
        return None
    device = model.device
    # the groups' prefixes, one forward per prefix length
    by_length: dict[int, list[list[int]]] = {}
    for members in groups.values():
        by_length.setdefault(ends[members[0]], []).append(members)
    n_rows, width_p = len(rows), max(ends)
    width_s = max(len(r) - e for r, e in zip(rows, ends))
    layers: list[list[torch.Tensor]] | None = None
    for p, group_list in by_length.items():
        heads = [g[0] for g in group_list]
        out = model(
            input_ids=torch.tensor([rows[i][:p] for i in heads], device=device),
            attention_mask=torch.ones(len(heads), p, dtype=torch.long, device=device),
            mm_token_type_ids=torch.tensor([types[i][:p] for i in heads], device=device),
            mm_encoder_outputs=_mm_outputs([videos[i].features for i in heads]),
            **_video_fields([videos[i] for i in heads], device),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        members = [i for g in group_list for i in g]
        source = torch.tensor([k for k, g in enumerate(group_list) for _ in g], device=device)
        target = torch.tensor(members, device=device)
        if layers is None:
            layers = [[k.new_zeros(n_rows, *k.shape[1:2], width_p, k.shape[-1]) for k in (layer.keys, layer.values)]
                      for layer in cache.layers]
        for (keys, values), layer in zip(layers, cache.layers):
            keys[target, :, width_p - p:] = layer.keys[source]
            values[target, :, width_p - p:] = layer.values[source]
    # the rows laid out as [pad | prefix | pad | own text]
    pad = gen_kwargs["generation_config"].pad_token_id
    ids = torch.full((n_rows, width_p + width_s), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mm_types = torch.zeros_like(ids)
    for i, (r, t, e) in enumerate(zip(rows, types, ends)):
        own = len(r) - e
        for cols, part in ((slice(width_p - e, width_p), slice(0, e)), (slice(width_p + width_s - own, None), slice(e, None))):
            ids[i, cols] = torch.tensor(r[part])
            mm_types[i, cols] = torch.tensor(t[part])
            attention[i, cols] = 1
    ids, attention, mm_types = ids.to(device), attention.to(device), mm_types.to(device)
    text_positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    rope, _ = rope_index(ids, mm_token_type_ids=mm_types, attention_mask=attention, **_video_fields(videos, device))
    # a preallocated cache: a growing one copies every row's keys and values at each decoding step
    cache = StaticCache(config=model.config, max_cache_len=width_p + width_s + gen_kwargs["generation_config"].max_new_tokens)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    # generate() would compile the forward for a static cache on a GPU, anew for every batch's shapes
    config = copy.deepcopy(gen_kwargs["generation_config"])
    config.update(disable_compile=True, cache_implementation=None)  # the cache is ours
    out = model.generate(input_ids=ids, attention_mask=attention, position_ids=torch.cat([text_positions[None], rope]),
                         past_key_values=cache, **{**gen_kwargs, "generation_config": config})
    return out, width_p + width_s


def generate_batch(
    model, processor, texts: Sequence[str], clips: Sequence[Clip], gen_kwargs: dict, videos: VideoCache | None = None
) -> list[Generation]:
    """One left-padded ``generate()`` over several (chat text, clip) pairs, on the model's device.

    Each distinct clip is processed and encoded once (``videos`` keeps them for later batches), and rows
    that share a clip and a system prompt share the prefill of that prefix (module docstring)."""
    import torch

    from srvau.modeling.inputs import text_inputs

    shown = (videos if videos is not None else VideoCache(0)).videos(processor, clips)  # the video of each row
    enc = text_inputs(processor, texts, [v.inputs for v in shown], padding_side="left")
    with torch.inference_mode():
        VideoCache.encode(model, shown)
        shared = _shared_prefix_generate(model, enc, shown, gen_kwargs)
        if shared is not None:
            out, width = shared
        else:
            out = model.generate(**enc.to(model.device), **_video_fields(shown, model.device),
                                 mm_encoder_outputs=_mm_outputs([v.features for v in shown]), **gen_kwargs)
            width = enc["input_ids"].shape[1]
    eos = _eos_ids(gen_kwargs)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    gens = []
    for row, n_prompt in zip(out[:, width:].tolist(), lengths):
        ids = _trim(row, eos)
        text = processor.tokenizer.decode(ids, skip_special_tokens=True)
        gens.append(Generation(text=text, token_ids=ids, prompt_tokens=int(n_prompt), finished=bool(ids) and ids[-1] in eos))
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

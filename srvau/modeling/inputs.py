"""Turning (prompt, cached frames) into Qwen2.5-VL model inputs: shared by SFT, GRPO and evaluation.

Frames come from the frame cache (``srvau.video.cache``): uint8 (T, H, W, 3) already sampled by the one
policy, so the processor must not sample again (``do_sample_frames=False``). The metadata (source fps,
total frames, sampled indices) is passed on: without it Qwen2.5-VL assumes 24 fps and its temporal
positions (``second_per_grid_ts``) are wrong, which matters for grounding in seconds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def user_message(prompt: str, system: str | None = None) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": system}]})
    msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]})
    return msgs


def conversation(prompt: str, answer: str | None = None, system: str | None = None) -> list[dict[str, Any]]:
    msgs = user_message(prompt, system)
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def video_metadata(meta: dict[str, Any], num_frames: int) -> dict[str, Any]:
    """The subset of cache metadata that transformers' ``VideoMetadata`` takes."""
    return {
        "total_num_frames": int(meta.get("total_num_frames") or num_frames),
        "fps": float(meta["fps"]) if meta.get("fps") else None,
        "frames_indices": [int(i) for i in meta.get("frames_indices", range(num_frames))],
        # the frame cache says "duration" (VideoMetadata's name); older callers said "duration_s"
        "duration": float(d) if (d := meta.get("duration", meta.get("duration_s"))) else None,
    }


def even_frames(frames: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Qwen2.5-VL packs frames in temporal pairs; an odd count repeats the last frame (as the processor
    would) but we do it here so the metadata's indices stay in step with the pixels."""
    if len(frames) % 2 == 0:
        return frames, meta
    meta = dict(meta)
    idx = list(meta.get("frames_indices", range(len(frames))))
    meta["frames_indices"] = idx + [idx[-1]]
    return np.concatenate([frames, frames[-1:]], axis=0), meta


def processor_inputs(
    processor,
    texts: Sequence[str],
    videos: Sequence[np.ndarray],
    metas: Sequence[dict[str, Any]],
    padding_side: str = "left",
    **kwargs,
):
    """Batch chat-templated ``texts`` with their videos; left padding for generation."""
    frames, vmeta = [], []
    for v, m in zip(videos, metas, strict=True):
        v, m = even_frames(v, m)
        frames.append(v)
        vmeta.append(video_metadata(m, len(v)))
    processor.tokenizer.padding_side = padding_side
    # Frames are already sized by our one policy (multiples of 28 within the pixel budgets). Pin the
    # processor's pixel bounds to them so no checkpoint's own defaults (the Hub processors floor frames
    # at 128*28*28 pixels) resize them again and break the token budget.
    if "size" not in kwargs:
        pixels = [int(f.shape[1]) * int(f.shape[2]) for f in frames]
        kwargs["size"] = {"shortest_edge": min(pixels), "longest_edge": max(pixels)}
    return processor(
        text=list(texts),
        videos=frames,
        video_metadata=vmeta,
        do_sample_frames=False,
        padding=True,
        return_tensors="pt",
        **kwargs,
    )


# Generation reuses one clip's processed video across the prompts that ask about it (evaluation asks
# each video several questions). The two functions below split processor_inputs in its video and text
# halves; together they give exactly its tensors (tested), so training, which keeps processor_inputs,
# and generation feed the model the same inputs.


def video_inputs(processor, frames: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """One clip's processed video, as :func:`processor_inputs` makes it: ``pixel_values_videos``,
    ``video_grid_thw`` (1, 3) and ``second_per_grid_ts`` (1,)."""
    frames, meta = even_frames(frames, meta)
    pixels = int(frames.shape[1]) * int(frames.shape[2])
    out = processor(
        videos=[frames],
        video_metadata=[video_metadata(meta, len(frames))],
        do_sample_frames=False,
        size={"shortest_edge": pixels, "longest_edge": pixels},  # as processor_inputs pins them
        return_tensors="pt",
    )
    return {k: out[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}


def text_inputs(processor, texts: Sequence[str], videos: Sequence[dict[str, Any]], padding_side: str = "left"):
    """``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` of chat-templated ``texts`` whose one
    video each is ``videos[i]`` (:func:`video_inputs`), without processing the videos again.

    The processor expands the placeholder to one token per merged patch (``replace_video_token``:
    ``video_grid_thw.prod() / merge_size**2``) before tokenising; the placeholder is a special token, so
    expanding its id after tokenising gives the same ids without tokenising thousands of them."""
    import torch

    placeholder = processor.video_token_id
    merge = processor.video_processor.merge_size ** 2
    rows = []
    for ids, video in zip(processor.tokenizer(list(texts))["input_ids"], videos, strict=True):
        if ids.count(placeholder) != 1:
            raise ValueError(f"a text must hold exactly one {processor.video_token}")
        at = ids.index(placeholder)
        rows.append(ids[:at] + [placeholder] * (int(video["video_grid_thw"].prod()) // merge) + ids[at + 1 :])
    processor.tokenizer.padding_side = padding_side
    enc = processor.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    enc["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(enc["input_ids"]), dtype=torch.long)
    return enc

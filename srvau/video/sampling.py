"""THE frame-sampling policy: which frames of a video the model sees, and at what size.

One policy (``srvau.config.VideoConfig``) serves ingestion, training and evaluation. VAU-R1 trained
and evaluated with different frame/pixel budgets; we do not, so a model is always scored on inputs
shaped like the ones it learned from.

Frame count
    ``n = round(duration_s * fps)``, clamped to ``[min_frames, max_frames]``. An even count is
    preferred: Qwen2.5-VL packs frames in temporal patches of 2 (``temporal_patch_size``) and pads
    an odd count by repeating the last frame, which costs tokens and shows the model a frozen
    frame. An odd ``n`` therefore moves up by one when ``max_frames`` allows, else down by one when
    ``min_frames`` allows (only ``min_frames == max_frames`` odd stays odd). ``n`` is then capped
    so that ``n`` frames of the smallest legal size (28x28) fit in ``total_pixels``. Clips with
    fewer frames than ``n`` repeat frames (``min_frames`` is honoured, so token counts stay uniform).

Frame choice
    Evenly spaced in *time*, first to last frame, like ``np.linspace(0, N-1, n).round()`` over a
    constant-frame-rate clip (the qwen-vl-utils / VAU-R1 rule). Positions are taken from the real
    presentation timestamps and snapped to the nearest frame, so a variable-frame-rate clip is
    sampled evenly in seconds (annotation intervals are in seconds) rather than evenly in frames.

Frame size
    ``smart_resize`` semantics of Qwen2.5-VL: height and width multiples of 28 (patch 14 x merge 2),
    aspect ratio kept, area at most ``min(max_pixels_per_frame, total_pixels // n_even)``, where
    ``n_even`` counts the padding frame of an odd clip. Departure: ``total_pixels`` here is the
    literal pixel sum over the sampled frames, while qwen-vl-utils' ``total_pixels`` counts one
    28x28 cell per *pair* of frames (a token), i.e. it allows twice as many pixels for the same value.
    We keep the literal meaning configs/defaults.yaml documents.

``smart_resize`` is reimplemented here (15 lines, same arithmetic as transformers 5.23
``models/qwen2_vl/image_processing_qwen2_vl.smart_resize``; a test checks they agree) because
importing it from transformers costs ~4 s and pulls torch and torchvision into every ingest worker.

``policy_fingerprint`` hashes the fields that change the sampled frames (not the probe timeout or
the decoder choice) plus ``POLICY_VERSION``; the frame cache is invalid when it changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the probe child must not pay for pydantic: any object with these fields will do
    from srvau.config import VideoConfig


class SamplingPolicy(Protocol):
    """The fields of ``srvau.config.VideoConfig`` this module reads."""

    fps: float
    min_frames: int
    max_frames: int
    max_pixels_per_frame: int
    total_pixels: int

# Bump when the sampling arithmetic below changes: invalidates every cached clip.
POLICY_VERSION = 1
PATCH_FACTOR = 28  # Qwen2.5-VL: patch_size 14 x spatial merge_size 2
TEMPORAL_PATCH = 2  # Qwen2.5-VL temporal_patch_size
MIN_FRAME_PIXELS = PATCH_FACTOR * PATCH_FACTOR
_FINGERPRINT_FIELDS = ("fps", "min_frames", "max_frames", "max_pixels_per_frame", "total_pixels")


@dataclass(frozen=True)
class SamplingPlan:
    """What to decode from one video: frame indices, their timestamps, and the output size."""

    indices: np.ndarray  # int64, ascending (repeats allowed for clips shorter than min_frames)
    timestamps: np.ndarray  # float64 seconds, presentation time of each chosen frame
    height: int
    width: int
    fingerprint: str

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def policy_fingerprint(policy: SamplingPolicy | VideoConfig) -> str:
    """Stable hex digest of the frame-shaping policy fields (cache key component)."""
    fields = {name: getattr(policy, name) for name in _FINGERPRINT_FIELDS}
    fields["fps"] = float(fields["fps"])
    fields["version"] = POLICY_VERSION
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def num_sampled_frames(duration_s: float, policy: SamplingPolicy | VideoConfig) -> int:
    """How many frames the policy takes from a clip of ``duration_s`` seconds."""
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration must be a finite non-negative number, got {duration_s!r}")
    n = min(max(round(duration_s * policy.fps), policy.min_frames), policy.max_frames)
    if n % 2:
        if n + 1 <= policy.max_frames:
            n += 1
        elif n - 1 >= policy.min_frames:
            n -= 1
    fit = policy.total_pixels // MIN_FRAME_PIXELS  # frames of the smallest legal size that fit
    if n + n % 2 > fit:
        n = max(fit - fit % 2, 1)
    return n


def frame_indices(frame_times: np.ndarray, n: int) -> np.ndarray:
    """``n`` frame indices evenly spaced in time between the first and the last frame.

    ``frame_times`` are the presentation times of all frames, in presentation order. For a
    constant-rate clip this equals ``np.linspace(0, N - 1, n).round()`` (up to ties at .5).
    """
    t = np.asarray(frame_times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("frame_times must be a non-empty 1-D array")
    if n < 1:
        raise ValueError("n must be >= 1")
    if t.size == 1:
        return np.zeros(n, dtype=np.int64)
    targets = np.linspace(t[0], t[-1], n)
    right = np.clip(np.searchsorted(t, targets), 1, t.size - 1)
    left = right - 1
    pick_left = (targets - t[left]) <= (t[right] - targets)
    return np.where(pick_left, left, right).astype(np.int64)


def smart_resize(
    height: int, width: int, factor: int = PATCH_FACTOR, min_pixels: int = MIN_FRAME_PIXELS, max_pixels: int = 12544
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: multiples of ``factor``, area in [min_pixels, max_pixels], aspect kept."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_pixel_budget(n: int, policy: SamplingPolicy | VideoConfig) -> int:
    """Largest area one frame may have when ``n`` frames are sampled."""
    n_even = n + n % 2  # the processor pads an odd clip with one repeated frame
    return max(MIN_FRAME_PIXELS, min(policy.max_pixels_per_frame, policy.total_pixels // n_even))


def resize_target(height: int, width: int, n: int, policy: SamplingPolicy | VideoConfig) -> tuple[int, int]:
    """Output (height, width) of every sampled frame of an ``height`` x ``width`` clip."""
    return smart_resize(height, width, PATCH_FACTOR, MIN_FRAME_PIXELS, frame_pixel_budget(n, policy))


def plan_sampling(
    frame_times: np.ndarray, duration_s: float, height: int, width: int, policy: SamplingPolicy | VideoConfig
) -> SamplingPlan:
    """The full plan for one video from its frame timestamps, duration and native size."""
    t = np.asarray(frame_times, dtype=np.float64)
    n = num_sampled_frames(duration_s, policy)
    idx = frame_indices(t, n)
    h, w = resize_target(height, width, n, policy)
    return SamplingPlan(indices=idx, timestamps=t[idx], height=h, width=w, fingerprint=policy_fingerprint(policy))


def constant_rate_times(num_frames: int, fps: float) -> np.ndarray:
    """Frame timestamps of a constant-frame-rate clip (for callers that only know N and fps)."""
    return np.arange(num_frames, dtype=np.float64) / fps

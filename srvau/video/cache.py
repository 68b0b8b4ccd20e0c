"""The frame cache: the sampled frames of one video, decoded once and reused by every later stage.

Contract (training and evaluation feed the Qwen2.5-VL processor from here, never from the mp4):

    frames, metadata = load_frames(path)           # path = out_dir / manifest.frames_path
    inputs = processor(text=[prompt], videos=[frames], video_metadata=[metadata], return_tensors="pt")

``frames`` is uint8 ``(T, H, W, 3)`` RGB, already sampled and resized by the one policy
(``srvau.video.sampling``: T even when the policy allows, H and W multiples of 28, inside the
per-frame and total pixel budgets). ``metadata`` holds exactly the fields of
``transformers.video_utils.VideoMetadata`` (``total_num_frames``, ``fps``, ``width``, ``height``
(of the source), ``duration``, ``video_backend``, ``frames_indices``), so Qwen2.5-VL derives the
true seconds per temporal patch instead of assuming 24 fps. Build the processor with
``do_sample_frames=False`` (frames are already sampled) and pixel limits that leave the policy size
unchanged: ``min_pixels <= 28*28`` and ``max_pixels >= video.max_pixels_per_frame`` (with
``cap_pixels_per_frame=True``, also ``max_video_tokens`` large enough that its per-frame share is
not below ``max_pixels_per_frame``). Frame timestamps (seconds since the first frame) are not a
``VideoMetadata`` field; :func:`load_cached` returns them with everything else.

File layout: one uncompressed ``np.savez`` archive per video (loads without pickle)::

    frames            uint8   (T, H, W, 3)
    indices           int64   (T,)   frame index in presentation order in the source video
    timestamps        float64 (T,)   seconds since the source's first frame
    fps               float64 ()     average source rate = total_num_frames / duration
    total_num_frames  int64   ()
    duration          float64 ()     seconds
    source_size       int64   (2,)   source (height, width)
    backend           str     ()     decord | pyav
    fingerprint       str     ()     ``sampling.policy_fingerprint`` of the policy that made it
    sha256            str     ()     of the source file
    info              str     ()     JSON of the probe's ``VideoInfo`` (a re-run needs no probe)
    version           int64   ()     layout version (``CACHE_VERSION``)

An entry is fresh when its sha256 and fingerprint equal the current file's and policy's
(:func:`is_fresh`); ingestion then skips probing and decoding that video.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CACHE_VERSION = 1
_HEADER_KEYS = ("indices", "timestamps", "fps", "total_num_frames", "duration", "source_size", "backend",
                "fingerprint", "sha256", "info", "version")


@dataclass
class CachedFrames:
    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    total_num_frames: int
    duration_s: float
    source_height: int
    source_width: int
    backend: str
    fingerprint: str
    sha256: str
    info: dict[str, Any]

    def video_metadata(self) -> dict[str, Any]:
        """Keyword arguments of ``transformers.video_utils.VideoMetadata``."""
        return {
            "total_num_frames": self.total_num_frames,
            "fps": self.fps,
            "width": self.source_width,
            "height": self.source_height,
            "duration": self.duration_s,
            "video_backend": self.backend,
            "frames_indices": [int(i) for i in self.indices],
        }


def cache_filename(relpath: str) -> str:
    """File name of a video's cache entry, from its path relative to the video root (unique, flat)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", relpath.replace("/", "__")).lstrip(".")[-120:]
    return f"{stem}-{hashlib.sha1(relpath.encode()).hexdigest()[:8]}.npz"


def save_frames(path: str | os.PathLike, clip: Any, *, info: Any, fingerprint: str) -> None:
    """Write ``clip`` (a ``srvau.video.decode.DecodedClip``) with its provenance to ``path``.

    ``info`` is the probe's ``VideoInfo`` (or its dict). The file is written as given; callers that
    need atomicity write to a temporary name and rename (``probe.probe_and_sample`` does).
    """
    info_d = info if isinstance(info, dict) else info.to_dict()
    with open(path, "wb") as f:
        np.savez(
            f,
            frames=np.ascontiguousarray(clip.frames, dtype=np.uint8),
            indices=np.asarray(clip.indices, dtype=np.int64),
            timestamps=np.asarray(clip.timestamps, dtype=np.float64),
            fps=np.float64(clip.fps),
            total_num_frames=np.int64(clip.total_num_frames),
            duration=np.float64(clip.duration_s),
            source_size=np.asarray([clip.source_height, clip.source_width], dtype=np.int64),
            backend=np.str_(clip.backend),
            fingerprint=np.str_(fingerprint),
            sha256=np.str_(info_d["sha256"]),
            info=np.str_(json.dumps(info_d, sort_keys=True)),
            version=np.int64(CACHE_VERSION),
        )


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Everything but the frames (cheap: npz members load lazily). Raises on a missing/corrupt file."""
    with np.load(path, allow_pickle=False) as z:
        h = {k: z[k] for k in _HEADER_KEYS}
        frame_shape = _member_shape(z, "frames")
    return {
        "indices": h["indices"],
        "timestamps": h["timestamps"],
        "fps": float(h["fps"]),
        "total_num_frames": int(h["total_num_frames"]),
        "duration_s": float(h["duration"]),
        "source_height": int(h["source_size"][0]),
        "source_width": int(h["source_size"][1]),
        "backend": str(h["backend"]),
        "fingerprint": str(h["fingerprint"]),
        "sha256": str(h["sha256"]),
        "info": json.loads(str(h["info"])),
        "version": int(h["version"]),
        "n_frames": int(frame_shape[0]),
        "frame_shape": tuple(int(x) for x in frame_shape),
    }


def _member_shape(z: Any, name: str) -> tuple[int, ...]:
    """Shape of an npz member from its .npy header, without reading the array."""
    with z.zip.open(f"{name}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        return read(f)[0]


def is_fresh(path: str | os.PathLike, sha256: str, fingerprint: str) -> bool:
    """True when ``path`` holds a readable entry made from these bytes with this policy."""
    if not Path(path).is_file():
        return False
    try:
        h = read_header(path)
    except Exception:  # unreadable or partial entry: rebuild it
        return False
    return h["version"] == CACHE_VERSION and h["sha256"] == sha256 and h["fingerprint"] == fingerprint


def load_cached(path: str | os.PathLike) -> CachedFrames:
    """The whole entry: frames plus timing and provenance."""
    h = read_header(path)
    with np.load(path, allow_pickle=False) as z:
        frames = z["frames"]
    return CachedFrames(
        frames=frames,
        indices=h["indices"],
        timestamps=h["timestamps"],
        fps=h["fps"],
        total_num_frames=h["total_num_frames"],
        duration_s=h["duration_s"],
        source_height=h["source_height"],
        source_width=h["source_width"],
        backend=h["backend"],
        fingerprint=h["fingerprint"],
        sha256=h["sha256"],
        info=h["info"],
    )


def load_frames(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """``(frames, metadata)``: uint8 (T, H, W, 3) and the processor's ``video_metadata`` dict."""
    c = load_cached(path)
    return c.frames, c.video_metadata()

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

File layout: one ``np.savez`` archive per video (loads without pickle). The frames are stored as an
H.264 stream coded directly in RGB (x264's RGB mode, 4:4:4, no colour conversion either way; ``crf``
:data:`CRF`, preset :data:`PRESET`, tune :data:`TUNE`) inside an in-memory mp4, because raw frames
are 14-16 MB per video at the paper settings and the frames of one clip are 0.5 s apart, so
inter-frame prediction still pays. The tuning is for the read, which every training and evaluation
step makes: CAVLC instead of CABAC and no deblocking, and the decoder's G, B, R planes copied
straight into packed RGB (no swscale pass), read 5x faster than version 3's YUV 4:4:4 CABAC
stream at the paper settings, at the same size and error. docs/frame-cache.md has the measurements behind the choice, the
tolerance (PSNR >= 38 dB against the decoded frames on every clip, mean absolute error <= 2/255 at
the paper settings, the same on the model's normalised input) and why the encoder runs without its
SIMD paths (so the same frames give the same bytes)::

    video             uint8   (N,)   the mp4 bytes: T frames, H x W, in sampling order
    frame_shape       int64   (4,)   (T, H, W, 3) of the frames the mp4 holds
    codec             str     ()     ``CODEC``: how ``video`` was encoded
    indices           int64   (T,)   frame index in presentation order in the source video
    timestamps        float64 (T,)   seconds since the source's first frame
    fps               float64 ()     average source rate = total_num_frames / duration
    total_num_frames  int64   ()
    duration          float64 ()     seconds
    source_size       int64   (2,)   source (height, width)
    backend           str     ()     decord | pyav (the decoder that read the source)
    fingerprint       str     ()     ``sampling.policy_fingerprint`` of the policy that made it
    sha256            str     ()     of the source file
    info              str     ()     JSON of the probe's ``VideoInfo`` (a re-run needs no probe)
    version           int64   ()     layout version (``CACHE_VERSION``)

An entry is fresh when its version, sha256 and fingerprint equal the current layout's, file's and
policy's (:func:`is_fresh`); ingestion then skips probing and decoding that video. An entry of another
version is stale: :func:`read_header` refuses it, so ingestion rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# 2: frames stored as H.264 4:4:4 instead of raw uint8 (1); 3: encoded without SIMD (reproducible bytes);
# 4: coded in RGB, tuned for decoding speed (docs/frame-cache.md).
# Bump on any change to the layout or to the encoding below: older entries are then stale and re-made.
CACHE_VERSION = 4
ENCODER = "libx264rgb"  # x264 coding the G, B, R planes as they are: no YUV round trip, no swscale on read
CRF = 21  # x264 constant-rate factor: <= 3 MB per video at the paper settings on a worst-case texture
PRESET = "slow"  # vs "medium": 6 % smaller and 10 % less error at crf 21, ~3x the encode time, once per video
TUNE = "fastdecode"  # CAVLC, no deblocking, no weighted prediction: 2-4x faster decoding than CABAC, same size and error
DECODED_FORMAT = "gbrp"  # what the h264 decoder hands back for an RGB stream: planes G, B, R
NOMINAL_RATE = Fraction(2)  # frames per second told to x264 (the default sampling rate)
CODEC = f"h264-rgb-crf{CRF}-{PRESET}-{TUNE}-noasm"
_HEADER_KEYS = ("frame_shape", "codec", "indices", "timestamps", "fps", "total_num_frames", "duration",
                "source_size", "backend", "fingerprint", "sha256", "info")


class StaleCacheEntry(ValueError):
    """A cache entry written by another layout version: re-run ingestion to re-make it."""


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


def encode_frames(frames: np.ndarray) -> bytes:
    """uint8 (T, H, W, 3) RGB -> the bytes of an mp4 holding them as H.264 (see the module docstring)."""
    import av

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames with T >= 1, got shape {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:  # the policy makes multiples of 28
        raise ValueError(f"frame size {h}x{w} is not even")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        # A fixed nominal rate (x264's rate control depends on it); the true timing lives in the header.
        stream = container.add_stream(ENCODER, rate=NOMINAL_RATE)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"  # x264rgb takes packed RGB as is
        # One thread (ingestion already runs one process per video, ingest.workers) and x264's plain C
        # paths: with its SIMD paths the same frames gave up to 4 different byte streams in 16 encodes
        # here, and DVC, which hashes the frames, would then re-run every stage after a rebuilt cache.
        stream.options = {"crf": str(CRF), "preset": PRESET, "tune": TUNE, "threads": "1", "x264-params": "asm=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_video_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The frames of :func:`encode_frames`'s mp4, checked against the ``(T, H, W, 3)`` they must have."""
    import av

    t, h, w = (int(x) for x in shape[:3])
    out = np.empty((t, h, w, 3), np.uint8)
    n = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"  # frame threads: the read is on training's data path
        for frame in container.decode(stream):
            if n >= t:
                raise ValueError(f"cache entry holds more than the {t} frames its header declares")
            if (frame.height, frame.width) != (h, w):
                raise ValueError(f"cache entry frames are {frame.height}x{frame.width}, its header declares {h}x{w}")
            if frame.format.name != DECODED_FORMAT:
                raise ValueError(f"cache entry decodes to {frame.format.name}, expected {DECODED_FORMAT} (RGB H.264)")
            # Each plane straight into its channel: 3-4x cheaper than swscale's gbrp -> rgb24 pass here.
            for channel, plane in zip((1, 2, 0), frame.planes):  # G, B, R
                rows = np.frombuffer(plane, np.uint8, count=h * plane.line_size).reshape(h, plane.line_size)
                out[n, :, :, channel] = rows[:, :w]
            n += 1
    if n != t:
        raise ValueError(f"cache entry holds {n} frames, its header declares {t}")
    return out


def save_frames(path: str | os.PathLike, clip: Any, *, info: Any, fingerprint: str) -> None:
    """Write ``clip`` (a ``srvau.video.decode.DecodedClip``) with its provenance to ``path``.

    ``info`` is the probe's ``VideoInfo`` (or its dict). The file is written as given; callers that
    need atomicity write to a temporary name and rename (``probe.probe_and_sample`` does).
    """
    info_d = info if isinstance(info, dict) else info.to_dict()
    frames = np.asarray(clip.frames)
    video = np.frombuffer(encode_frames(frames), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(  # not savez_compressed: the H.264 bytes do not deflate
            f,
            video=video,
            frame_shape=np.asarray(frames.shape, dtype=np.int64),
            codec=np.str_(CODEC),
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
    """Everything but the frames (cheap: npz members load lazily, nothing is decoded).

    Raises StaleCacheEntry for an entry of another layout version, and on a missing/corrupt file."""
    with np.load(path, allow_pickle=False) as z:
        version = int(z["version"]) if "version" in z.files else 0
        if version != CACHE_VERSION:
            raise StaleCacheEntry(f"{path}: frame-cache layout version {version}, this code reads "
                                  f"{CACHE_VERSION}; re-run `srvau ingest` to re-make it")
        h = {k: z[k] for k in _HEADER_KEYS}
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
        "version": version,
        "codec": str(h["codec"]),
        "n_frames": int(h["frame_shape"][0]),
        "frame_shape": tuple(int(x) for x in h["frame_shape"]),
    }


def is_fresh(path: str | os.PathLike, sha256: str, fingerprint: str) -> bool:
    """True when ``path`` holds a readable entry of this layout made from these bytes with this policy."""
    if not Path(path).is_file():
        return False
    try:
        h = read_header(path)
    except Exception:  # stale, unreadable or partial entry: rebuild it
        return False
    return h["sha256"] == sha256 and h["fingerprint"] == fingerprint


def load_cached(path: str | os.PathLike) -> CachedFrames:
    """The whole entry: frames plus timing and provenance."""
    h = read_header(path)
    with np.load(path, allow_pickle=False) as z:
        data = z["video"].tobytes()
    return CachedFrames(
        frames=decode_video_bytes(data, h["frame_shape"]),
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

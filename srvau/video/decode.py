"""Decode the sampled frames of a video: decord first, PyAV when decord fails.

:func:`decode_frames` takes the frame indices and output size chosen by ``srvau.video.sampling``
and returns a :class:`DecodedClip`: uint8 frames ``(T, H, W, 3)`` plus the timing that
Qwen2.5-VL's video processor needs (``DecodedClip.video_metadata()`` is a dict with exactly the
fields of ``transformers.video_utils.VideoMetadata``).

decord: ``VideoReader(path, ctx=cpu(0), num_threads=1, width=W, height=H)`` and ``get_batch``. The
resize happens inside FFmpeg (its scale filter, i.e. swscale) while decoding, so full-size RGB
frames are never materialised. decord seeks to the keyframe before each index and decodes forward, reusing the
decoder when the next index lies in the same GOP.

Checks against decord's known silent failures: when the container's packet index (``timeline`` from
the probe) is given, decord must see the same frame count and place each chosen frame within half a
frame of the index's timestamp; otherwise the result is discarded and PyAV decodes instead. Any
decord exception (including a missing decord) also falls back; ``DecodedClip.fallback_reason`` says why.

PyAV: the same seek-then-decode-forward strategy, driven by the demuxed keyframe list, with
``to_ndarray(width, height, format="rgb24", interpolation="BICUBIC")`` (swscale again; the two
backends agree to about one grey level on average, see tests/test_video.py). A frame is identified
by its presentation timestamp, so frame index ``i`` means "the i-th frame in presentation order"
for both backends. The packet index (:class:`srvau.video.timeline.Timeline`) comes from
``srvau.video.timeline``, which the probe uses too: this module never imports the probe.

These functions open the file in the calling process. Untrusted files go through
``srvau.video.probe.probe_and_sample`` (a killable child process) instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from srvau.video.timeline import Timeline, read_timeline

log = logging.getLogger(__name__)

Backend = Literal["decord", "pyav"]


class DecodeError(Exception):
    """The requested frames could not be decoded (by any backend)."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    indices: np.ndarray  # int64 (T,), frame index in presentation order
    timestamps: np.ndarray  # float64 (T,), seconds since the first frame
    fps: float  # average frame rate of the source: total_num_frames / duration_s
    total_num_frames: int
    duration_s: float
    source_height: int
    source_width: int
    backend: str
    fallback_reason: str | None = None

    def video_metadata(self) -> dict[str, Any]:
        """Keyword arguments of ``transformers.video_utils.VideoMetadata`` (pass as ``video_metadata``).

        ``fps`` is the average rate, so ``VideoMetadata.sampled_fps`` = T / duration, which is what
        Qwen2.5-VL turns into ``second_per_grid_ts``; that holds for variable-rate clips too because
        the policy samples evenly in time.
        """
        return {
            "total_num_frames": int(self.total_num_frames),
            "fps": float(self.fps),
            "width": int(self.source_width),
            "height": int(self.source_height),
            "duration": float(self.duration_s),
            "video_backend": self.backend,
            "frames_indices": [int(i) for i in self.indices],
        }


def decode_frames(
    path: str | os.PathLike,
    indices: np.ndarray | list[int],
    size: tuple[int, int] | None = None,
    *,
    backend: Backend = "decord",
    timeline: Timeline | None = None,
) -> DecodedClip:
    """Decode frames ``indices`` of ``path`` resized to ``size`` = (height, width) (None: native)."""
    path = str(path)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0 or idx.min() < 0:
        raise DecodeError(f"indices must be a non-empty 1-D array of non-negative ints, got {indices!r}")
    reason = None
    if backend == "decord":
        try:
            return _decode_decord(path, idx, size, timeline)
        except Exception as e:  # decord raises assorted types (DECORDError, RuntimeError, IndexError...)
            reason = f"decord: {type(e).__name__}: {str(e).strip()[:200]}"
            log.debug("%s: falling back to PyAV (%s)", path, reason)
    elif backend != "pyav":
        raise ValueError(f"unknown backend {backend!r}")
    try:
        clip = _decode_pyav(path, idx, size, timeline)
    except DecodeError as e:
        raise DecodeError(f"{reason}; pyav: {e}" if reason else f"pyav: {e}") from None
    except Exception as e:
        detail = f"pyav: {type(e).__name__}: {str(e).strip()[:200]}"
        raise DecodeError(f"{reason}; {detail}" if reason else detail) from None
    clip.fallback_reason = reason
    return clip


def _decode_decord(path: str, idx: np.ndarray, size: tuple[int, int] | None, timeline: Timeline | None) -> DecodedClip:
    import decord

    kwargs = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kwargs)
    n = len(vr)
    if timeline is not None and n != timeline.num_frames:
        raise DecodeError(f"sees {n} frames, the container index has {timeline.num_frames}")
    if int(idx.max()) >= n:
        raise DecodeError(f"index {int(idx.max())} out of range for {n} frames")
    uniq = np.unique(idx)
    first = float(vr.get_frame_timestamp([0])[0, 0])
    times = vr.get_frame_timestamp(uniq)[:, 0].astype(np.float64) - first
    if timeline is not None:
        expected = timeline.times[uniq]
        half_frame = 0.5 * timeline.duration_s / max(timeline.num_frames, 1)
        worst = float(np.max(np.abs(times - expected)))
        if worst > half_frame + 1e-3:
            raise DecodeError(f"frame timestamps disagree with the container index by {worst:.3f} s")
        times = expected
    frames = vr.get_batch(uniq).asnumpy()
    if timeline is not None:
        duration = timeline.duration_s
    else:
        duration = float(vr.get_frame_timestamp([n - 1])[0, 1]) - first
    if timeline is not None and timeline.height and timeline.width:
        src_h, src_w = timeline.height, timeline.width
    else:
        src_h, src_w = _source_size(vr, size, path)
    pos = np.searchsorted(uniq, idx)
    return _clip(frames[pos], idx, times[pos], n, duration, src_h, src_w, "decord", size)


def _source_size(vr: Any, size: tuple[int, int] | None, path: str) -> tuple[int, int]:
    if size is None:
        h, w = vr[0].shape[:2] if len(vr) else (0, 0)
        return int(h), int(w)
    import av  # decord only reports the resized shape

    with av.open(path) as c:
        cc = c.streams.video[0].codec_context
        return int(cc.height), int(cc.width)


def _decode_pyav(path: str, idx: np.ndarray, size: tuple[int, int] | None, timeline: Timeline | None) -> DecodedClip:
    import av

    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        tl = timeline if timeline is not None else read_timeline(container, stream)
        if tl.num_frames == 0:
            raise DecodeError("no frames")
        if int(idx.max()) >= tl.num_frames:
            raise DecodeError(f"index {int(idx.max())} out of range for {tl.num_frames} frames")
        uniq = np.unique(idx)
        targets = tl.pts[uniq]
        wanted = set(int(p) for p in targets)
        got: dict[int, np.ndarray] = {}
        reformat: dict[str, Any] = {"format": "rgb24", "interpolation": "BICUBIC"}
        if size is not None:
            reformat.update(height=int(size[0]), width=int(size[1]))
        frames_iter = None
        last_pts: int | None = None
        src_hw = (0, 0)
        for target in (int(t) for t in targets):
            k = np.searchsorted(tl.keyframe_pts, target, side="right") - 1
            key = int(tl.keyframe_pts[k]) if k >= 0 else int(tl.pts[0])
            if frames_iter is None or last_pts is None or key > last_pts:
                container.seek(key, stream=stream, backward=True, any_frame=False)
                frames_iter = container.decode(stream)
            for frame in frames_iter:
                if frame.pts is None:
                    continue
                last_pts = frame.pts
                if frame.pts in wanted and frame.pts not in got:
                    got[frame.pts] = frame.to_ndarray(**reformat)
                    src_hw = (frame.height, frame.width)
                if frame.pts >= target:
                    break
            else:
                frames_iter = None  # decoder exhausted
            if target not in got:
                raise DecodeError(f"frame at pts {target} not produced by the decoder")
    frames = np.stack([got[int(t)] for t in targets])
    pos = np.searchsorted(uniq, idx)
    return _clip(frames[pos], idx, tl.times[uniq][pos], tl.num_frames, tl.duration_s, *src_hw, "pyav", size)


def _clip(frames, idx, times, n, duration, src_h, src_w, backend, size) -> DecodedClip:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != idx.size:
        raise DecodeError(f"unexpected frame array shape {frames.shape}")
    if size is not None and frames.shape[1:3] != tuple(size):
        raise DecodeError(f"frames came out {frames.shape[1:3]}, asked for {tuple(size)}")
    duration = float(duration)
    return DecodedClip(
        frames=frames,
        indices=idx.copy(),
        timestamps=np.asarray(times, dtype=np.float64),
        fps=n / duration if duration > 0 else 0.0,
        total_num_frames=int(n),
        duration_s=duration,
        source_height=int(src_h),
        source_width=int(src_w),
        backend=backend,
    )

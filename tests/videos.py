"""Real H.264 mp4 files for the video tests, written with PyAV, whose pixels encode the frame number.

Frame ``i`` is painted as ``BITS`` vertical stripes, stripe ``b`` white when bit ``b`` of ``i`` is
set and black otherwise. The stripes are wide, so the number survives H.264 compression and any
downscale the sampling policy applies; :func:`frame_number` reads it back from a decoded RGB frame.
Tests use this to check that the frames in the cache are the frames the policy asked for.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

BITS = 10  # frame numbers 0..1023


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, BITS + 1).round().astype(int)
    for b in range(BITS):
        if (i >> b) & 1:
            img[:, edges[b] : edges[b + 1]] = 255
    return img


def frame_number(frame: np.ndarray) -> int:
    """The number painted by :func:`frame_image`, read from an RGB frame of any size."""
    h, w = frame.shape[:2]
    band = frame[h // 4 : 3 * h // 4].astype(np.float64).mean(axis=(0, 2))
    edges = np.linspace(0, w, BITS + 1)
    n = 0
    for b in range(BITS):
        lo, hi = edges[b], edges[b + 1]
        third = (hi - lo) / 3
        centre = band[int(np.ceil(lo + third)) : max(int(np.floor(hi - third)), int(np.ceil(lo + third)) + 1)]
        if centre.mean() > 127:
            n |= 1 << b
    return n


def write_video(
    path: str | Path,
    num_frames: int = 40,
    fps: int = 8,
    width: int = 112,
    height: int = 112,
    *,
    pts_ms: Sequence[int] | None = None,
    faststart: bool = False,
    preset: str = "veryfast",
    gop: int | None = None,
) -> Path:
    """Write an H.264 mp4 of ``num_frames`` numbered frames.

    ``pts_ms`` gives each frame's presentation time in milliseconds (a variable-frame-rate file);
    ``preset="veryfast"`` produces B-frames (decode order != presentation order), ``faststart`` puts
    the index (moov) before the media data.
    """
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset}
        if gop:
            stream.codec_context.gop_size = gop
        if pts_ms is not None:
            if len(pts_ms) != num_frames:
                raise ValueError("pts_ms needs one entry per frame")
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def vfr_pts_ms(num_frames: int, short_ms: int = 40, long_ms: int = 160) -> list[int]:
    """Alternating short/long frame durations: a clearly variable frame rate."""
    steps = [long_ms if i % 2 == 0 else short_ms for i in range(num_frames - 1)]
    return [0, *np.cumsum(steps).tolist()]


def truncate(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)

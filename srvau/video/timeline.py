"""The packet index of a video stream (demux only, no decoding), shared by probing and decoding.

``srvau.video.probe`` builds a :class:`Timeline` while checking a file and hands it to
``srvau.video.decode``, which also builds one itself when called without it. Both import it from
here, so neither imports the other for it (probe -> decode is the only edge between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np


@dataclass
class Timeline:
    """The packet index of a video stream, in presentation order (from demuxing, no decoding)."""

    pts: np.ndarray  # int64, ascending, stream time_base ticks
    keyframe_pts: np.ndarray  # int64, ascending
    time_base: Fraction
    duration_s: float
    declared_frames: int  # what the container header claims (0 = unknown)
    end_byte: int  # one past the last packet's last byte (0 = unknown)
    height: int = 0  # coded size from the stream header (0 = unknown)
    width: int = 0

    @property
    def times(self) -> np.ndarray:
        """Seconds since the first frame."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    @property
    def num_frames(self) -> int:
        return int(self.pts.size)

    @property
    def vfr(self) -> bool:
        if self.pts.size < 3:
            return False
        d = np.diff(self.pts)
        med = float(np.median(d))
        return bool(np.any(np.abs(d - med) > max(2.0, 0.02 * med)))


def read_timeline(container: Any, stream: Any) -> Timeline:
    """Demux every packet of ``stream`` (no decoding) and build its presentation timeline."""
    pts: list[int] = []
    keys: list[int] = []
    end_byte = 0
    last_dur = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:  # flush packets / packets without timestamps
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
        if packet.pos is not None and packet.pos >= 0:
            end_byte = max(end_byte, packet.pos + packet.size)
        last_dur = packet.duration or last_dur
    arr = np.sort(np.asarray(pts, dtype=np.int64))
    tb = stream.time_base or Fraction(1, 1)
    if arr.size:
        step = int(np.median(np.diff(arr))) if arr.size > 1 else last_dur
        duration = float((int(arr[-1] - arr[0]) + (last_dur or step)) * tb)
    else:
        duration = 0.0
    return Timeline(
        pts=arr,
        keyframe_pts=np.sort(np.asarray(keys, dtype=np.int64)),
        time_base=tb,
        duration_s=duration,
        declared_frames=int(stream.frames or 0),
        end_byte=end_byte,
        height=int(stream.codec_context.height or 0),
        width=int(stream.codec_context.width or 0),
    )

"""Placeholder videos for VAU-Bench annotation CSVs: ``srvau data placeholders``.

The VAU-Bench videos are not redistributable, so a rehearsal of the paper recipe on a machine without
them needs real mp4 files at the paths ingest looks up. For the first ``limit_per_csv`` rows of each
CSV (as the importer keeps them, in file order) this writes a small H.264 clip (112x112, seeded by the
video id, so the same name always gets the same bytes) long enough to contain the row's anomaly
interval. Rows left without a placeholder are quarantined by ingest as ``missing``, as for a user who
has only part of the data. The content is a moving square: it carries no information about the
annotation; the rehearsal checks the machinery, not what a model learns.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath

import numpy as np

from srvau.data.synth import write_mp4
from srvau.data.vau_bench import read_vau_bench, split_prefix

log = logging.getLogger(__name__)

SIZE = 112  # pixels, square: above ingest's degenerate-video floor, one 4x4 grid of 28x28 patch cells
MIN_DURATION_S = 4.0  # a few seconds: enough frames for the sampling policy's min_frames
MAX_FPS = 8
MAX_FRAMES = 240  # long intervals (VAU-Bench has some past an hour) get a lower frame rate, not more frames


@dataclass(frozen=True)
class Placeholder:
    rel: str  # path under the video root, as ingest resolves it
    duration_s: float
    seed: int


def placeholder_rel(video_name: str, dataset: str) -> str:
    """Where ingest finds a video (srvau.data.ingest.resolve_video): ``<Video Name>`` when the name
    carries its dataset prefix, else ``<dataset>/<Video Name>`` (the test CSVs' bare names, whose
    dataset comes from the file name). The name is kept as written, extension or not."""
    prefixed, _ = split_prefix(video_name)
    if prefixed is None and dataset and dataset != "unknown":
        return (PurePosixPath(dataset) / video_name).as_posix()
    return video_name


def duration_for(end_s: float) -> float:
    """A clip that contains an interval ending at ``end_s`` (NaN for normal/unavailable rows)."""
    if not math.isfinite(end_s) or end_s + 1.0 <= MIN_DURATION_S:
        return MIN_DURATION_S
    return float(math.ceil(end_s) + 1)


def plan(csvs: list[Path], limit_per_csv: int) -> list[Placeholder]:
    """One placeholder per video of the first ``limit_per_csv`` importable rows of each CSV; a video
    named in several rows (or files) gets one clip, as long as its longest interval needs."""
    longest: dict[str, float] = {}
    seeds: dict[str, int] = {}
    for csv in csvs:
        rows = read_vau_bench(csv).rows.head(limit_per_csv)
        for row in rows.itertuples(index=False):
            rel = placeholder_rel(str(row.video_name), str(row.dataset))
            end = float(row.end_s) if row.interval_kind == "anomaly" else float("nan")
            longest[rel] = max(longest.get(rel, 0.0), duration_for(end))
            seeds[rel] = int.from_bytes(hashlib.sha256(str(row.video_id).encode()).digest()[:4], "little")
    return [Placeholder(rel, longest[rel], seeds[rel]) for rel in sorted(longest)]


def render(p: Placeholder) -> tuple[list[np.ndarray], Fraction]:
    """Frames (RGB, uint8) and the frame rate of one placeholder: a seeded background colour and a
    square crossing the frame, so consecutive frames differ and the codec has real motion to encode."""
    fps = Fraction(MAX_FPS)
    if p.duration_s * MAX_FPS > MAX_FRAMES:
        fps = (Fraction(MAX_FRAMES) / Fraction(p.duration_s)).limit_denominator(1000)
    n = max(2, int(round(p.duration_s * fps)))
    rng = np.random.default_rng(p.seed)
    background = rng.integers(30, 200, size=3, dtype=np.uint8)
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    frames = []
    for k in range(n):
        img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        img[:] = background
        x = int((SIZE - 24) * k / max(1, n - 1))
        img[44:68, x : x + 24] = colour
        frames.append(img)
    return frames, fps


def write_placeholders(csvs: list[Path], out: Path, limit_per_csv: int) -> dict[str, int]:
    """Write the placeholders of :func:`plan` under ``out``; existing files are kept (a re-run is cheap)."""
    written = kept = 0
    for p in plan([Path(c) for c in csvs], limit_per_csv):
        target = out.joinpath(*PurePosixPath(p.rel).parts)
        if target.is_file():
            kept += 1
            continue
        frames, fps = render(p)
        write_mp4(target, frames, fps)
        written += 1
    log.info("placeholders under %s: %d written, %d already there", out, written, kept)
    return {"written": written, "kept": kept}

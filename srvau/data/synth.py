"""The demo dataset: synthetic anomaly videos as real H.264 mp4 files plus VAU-Bench-format CSVs.

Every clip shows a quiet scene (grey road, a pedestrian square walking across). Anomaly clips add one
event of a class from the VAU-Bench list during ``[start, end)`` seconds; each class has its own colour,
shape and motion so that a tiny model can tell them apart from a handful of frames, and the interval is
visible frame by frame. The CSVs use exactly VAU-Bench's columns and conventions (``0,0`` = normal
video, letter in ``Correct Option``), so the same importer reads demo and real data.

Reflection needs something to find: a share of the clips (``synth.decoy_share``) also shows a *decoy*,
another class's look for a moment (``synth.decoy_s``) before the real event (or anywhere in a normal
clip). A first glance that takes the decoy for the event is wrong for a reason visible in the video,
and a second look over the whole clip fixes it. The annotation records the decoy in its ``Reasoning``
text as a ``### Misleading Cue: ...`` part (what, when, which class it resembles), so the annotation
teacher can write the mistaken first pass that this cue causes (docs/contracts.md).

Correct letters are balanced within each split (A-D in turn, then shuffled), so no letter prior pays.

Deterministic: the same seed and settings give the same CSVs and the same mp4 bytes (x264 runs with
one thread).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from srvau.config import SynthConfig
from srvau.io import atomic_path
from srvau.contract.vocab import LETTERS, NORMAL, canonical_class
from srvau.data.vau_bench import VAU_COLUMNS
from srvau.progress import progress

log = logging.getLogger(__name__)

VAU_BENCH_COLUMNS = list(VAU_COLUMNS)
PREFIX = "demo_"
BACKGROUND = (70, 70, 70)
PEDESTRIAN = (230, 230, 230)
TIME_BAR = (160, 160, 160)
TIME_BAR_HEIGHT = 0.12  # share of the frame's height: about one 14-pixel patch row at 112 pixels


@dataclass(frozen=True)
class Style:
    """How an event looks: the RGB colour that marks it, and the words that describe it."""

    color: tuple[int, int, int]
    key_object: str
    option: str  # the multiple-choice option text naming this event; its first words are its own (the colour)
    description: str
    evidence: str


STYLES: dict[str, Style] = {
    "Fire": Style(
        (255, 90, 0),
        "orange flames",
        "Orange flames break out at the bottom of the scene and flicker",
        "Orange flames appear at the bottom of the scene and flicker while they burn.",
        "flickering orange flames at the bottom of the frame",
    ),
    "Explosion": Style(
        (255, 255, 0),
        "yellow blast",
        "Yellow blast expands rapidly from the centre of the scene",
        "A bright yellow blast bursts from the centre of the scene and expands quickly.",
        "a yellow circle that grows rapidly from the centre",
    ),
    "Fighting": Style(
        (220, 0, 220),
        "two people fighting",
        "Magenta figures clash and strike each other repeatedly",
        "Two magenta figures rush together in the middle of the scene and strike each other repeatedly.",
        "two magenta figures that collide and bounce apart again and again",
    ),
    "Traffic_accident": Style(
        (0, 200, 255),
        "colliding cars",
        "Cyan cars drive into each other and crash",
        "Two cyan cars drive towards each other along the road and crash in the middle.",
        "two cyan rectangles that move together and stop on impact",
    ),
    "Water_incident": Style(
        (0, 40, 255),
        "flood water",
        "Blue flood water rises from the bottom and covers the road",
        "Blue water rises from the bottom of the scene and floods the road.",
        "a blue band that rises from the bottom of the frame",
    ),
    "Robbery": Style(
        (0, 230, 0),
        "masked robber",
        "Green figure chases the pedestrian and grabs their bag",
        "A green figure runs after the pedestrian and grabs their bag.",
        "a green square chasing the white pedestrian",
    ),
}
NORMAL_OPTION = "White pedestrian walks across the road and nothing unusual happens"


@dataclass(frozen=True)
class Clip:
    name: str
    split: str
    cls: str
    start_s: float
    end_s: float
    ped_y: float = 0.35  # pedestrian's row (fraction of height): varies so no two clips are identical
    ped_speed: float = 1.0  # share of the width walked during the clip
    letter: str = "A"  # where the correct option goes (balanced per split)
    decoy: str | None = None  # class whose look flashes up briefly (a misleading cue)
    decoy_start_s: float = 0.0
    decoy_end_s: float = 0.0


def _disc(img: np.ndarray, cy: float, cx: float, r: float, color) -> None:
    h, w, _ = img.shape
    yy, xx = np.ogrid[:h, :w]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = color


def _rect(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, color) -> None:
    h, w, _ = img.shape
    y0, y1 = int(max(0, y0)), int(min(h, y1))
    x0, x1 = int(max(0, x0)), int(min(w, x1))
    if y1 > y0 and x1 > x0:
        img[y0:y1, x0:x1] = color


def render_frame(clip: Clip, t: float, h: int, w: int, rng: np.random.Generator, duration: float,
                 time_bar: bool = True) -> np.ndarray:
    """One RGB frame at time ``t`` seconds."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    if time_bar:  # elapsed time, as a CCTV overlay shows it (see SynthConfig.time_bar)
        _rect(img, 0, 0, TIME_BAR_HEIGHT * h, w * t / max(duration, 1e-6), TIME_BAR)
    _rect(img, 0.55 * h, 0, 0.6 * h, w, (110, 110, 110))  # road marking: part of every scene
    px = (t / duration) * clip.ped_speed * (w - 0.1 * w)
    py = clip.ped_y * h
    _rect(img, py, px, py + 0.1 * h, px + 0.08 * w, PEDESTRIAN)
    if clip.decoy is not None and clip.decoy_start_s <= t < clip.decoy_end_s:
        u = (t - clip.decoy_start_s) / max(clip.decoy_end_s - clip.decoy_start_s, 1e-6)
        _draw_event(img, clip.decoy, u, t, px, py, rng)
    if clip.cls != NORMAL and clip.start_s <= t < clip.end_s:
        u = (t - clip.start_s) / max(clip.end_s - clip.start_s, 1e-6)  # progress through the event
        _draw_event(img, clip.cls, u, t, px, py, rng)
    return img


def _draw_event(img: np.ndarray, cls: str, u: float, t: float, px: float, py: float, rng: np.random.Generator) -> None:
    """Draw class ``cls``'s look at progress ``u`` in [0, 1) of its event."""
    h, w, _ = img.shape
    st = STYLES[cls]
    if cls == "Fire":
        for k in range(3):
            flick = 0.12 * h * (1 + 0.5 * rng.random())
            _disc(img, 0.9 * h, (0.25 + 0.25 * k) * w, flick, st.color)
    elif cls == "Explosion":
        _disc(img, 0.5 * h, 0.5 * w, (0.1 + 0.35 * u) * min(h, w), st.color)
    elif cls == "Fighting":
        off = 0.08 * w * (1 + np.sin(t * 12.0))
        _rect(img, 0.3 * h, 0.32 * w - off, 0.6 * h, 0.45 * w - off, st.color)
        _rect(img, 0.3 * h, 0.55 * w + off, 0.6 * h, 0.68 * w + off, st.color)
    elif cls == "Traffic_accident":
        gap = 0.3 * w * max(0.0, 1 - 2 * u)
        _rect(img, 0.6 * h, 0.2 * w - 0.15 * w + (0.3 * w - gap) / 2, 0.75 * h, 0.45 * w - gap / 2, st.color)
        _rect(img, 0.6 * h, 0.55 * w + gap / 2, 0.75 * h, 0.95 * w - (0.3 * w - gap) / 2, st.color)
    elif cls == "Water_incident":
        _rect(img, (1 - (0.2 + 0.4 * u)) * h, 0, h, w, st.color)
    elif cls == "Robbery":
        _rect(img, py - 0.02 * h, px - 0.12 * w + 0.1 * w * u, py + 0.12 * h, px - 0.02 * w + 0.1 * w * u, st.color)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int | Fraction) -> None:
    """H.264 mp4 with deterministic bytes, written atomically and as mp4 whatever the file's name (a
    VAU-Bench Video Name may lack its extension)."""
    import av

    h, w, _ = frames[0].shape
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        # crf 18: colours survive compression. Deterministic bytes need one thread AND x264's plain C
        # paths: with its SIMD paths (asm) the same frames encoded to different bytes in ~1 of 4 runs
        # once decord had decoded in the same process (measured; test_synth.test_deterministic_by_seed)
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        stream.thread_count = 1
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def misleading_cue_text(clip: Clip) -> str:
    """The ``Reasoning`` part that records a clip's decoy (parsed by the annotation teacher)."""
    st = STYLES[clip.decoy]
    return (
        f"### Misleading Cue: a brief {st.key_object} ({st.evidence}) from {_fmt(clip.decoy_start_s)} s to "
        f"{_fmt(clip.decoy_end_s)} s looks like {clip.decoy.replace('_', ' ')} but vanishes at once "
    )


def annotation_row(clip: Clip, rng: np.random.Generator, classes: list[str]) -> dict[str, str]:
    """A CSV row in VAU-Bench's columns, consistent with what ``render_frame`` draws."""
    cue = misleading_cue_text(clip) if clip.decoy is not None else ""
    if clip.cls == NORMAL:
        correct = NORMAL_OPTION
        question = "What happens in the video?"
        key_object = "pedestrian"
        description = "A pedestrian walks across a quiet road from left to right. No unusual event occurs."
        reasoning = (
            "### Specific Anomaly Type: None ### Key Evidence: ['a white pedestrian walking steadily', "
            f"'no sustained flames, blasts, fights, crashes or water'] {cue}"
            "### Conclusion: Everyday activity; the video is normal."
        )
        start = end = 0.0
        pool = [c for c in classes if c != clip.decoy]
        distractors = [STYLES[c].option for c in rng.permutation(pool)[: 3 - (clip.decoy is not None)]]
    else:
        st = STYLES[clip.cls]
        correct = st.option
        question = "What anomalous event occurs in the video?"
        key_object = st.key_object
        description = (
            f"A pedestrian walks across the road. From {_fmt(clip.start_s)} s to {_fmt(clip.end_s)} s, "
            + st.description[0].lower()
            + st.description[1:]
        )
        reasoning = (
            f"### Specific Anomaly Type: {clip.cls.replace('_', ' ')} ### Key Evidence: ['{st.evidence}'] {cue}"
            f"### Detailed Explanation: {st.description} This is not part of normal street activity. "
            f"### Conclusion: The video shows {clip.cls.replace('_', ' ').lower()} between "
            f"{_fmt(clip.start_s)} s and {_fmt(clip.end_s)} s."
        )
        start, end = clip.start_s, clip.end_s
        pool = [c for c in classes if c not in (clip.cls, clip.decoy)]
        distractors = [STYLES[c].option for c in rng.permutation(pool)[: 2 - (clip.decoy is not None)]] + [NORMAL_OPTION]
    if clip.decoy is not None:
        distractors.append(STYLES[clip.decoy].option)  # the option a first glance at the decoy picks
    distractors = [distractors[i] for i in rng.permutation(len(distractors))]
    k = LETTERS.index(clip.letter)
    options = distractors[:k] + [correct] + distractors[k:]
    return {
        "Video Name": clip.name,
        "Question": question,
        "Option 1": options[0],
        "Option 2": options[1],
        "Option 3": options[2],
        "Option 4": options[3],
        "Correct Option": clip.letter,
        "Key Object": key_object,
        "Description": description,
        "Reasoning": reasoning,
        "Anomaly Class": clip.cls,
        "Start Time": _fmt(start),
        "End Time": _fmt(end),
    }


def plan_clips(cfg: SynthConfig, seed: int) -> list[Clip]:
    """Clips per split: classes balanced, correct letters balanced (A-D in turn, shuffled), a share with a
    decoy. A decoy is another class's look for ``decoy_s`` seconds, before the event with a gap of at
    least half a second (anywhere in a normal clip), so the two never overlap."""
    rng = np.random.default_rng(seed)
    classes = [canonical_class(c) or c for c in cfg.classes]
    clips: list[Clip] = []
    n = 0
    for split, count in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        n_normal = int(round(count * cfg.normal_share))
        # balanced classes: cycle through them, then shuffle within the split
        labels = [NORMAL] * n_normal + [classes[i % len(classes)] for i in range(count - n_normal)]
        labels = [labels[i] for i in rng.permutation(len(labels))]
        letters = [LETTERS[i % 4] for i in range(count)]
        letters = [letters[i] for i in rng.permutation(count)]
        n_decoy = int(round(count * cfg.decoy_share))
        decoyed = set(rng.permutation(count)[:n_decoy].tolist())
        for i, cls in enumerate(labels):
            n += 1
            decoy, d0, d1 = None, 0.0, 0.0
            if i in decoyed:
                decoy = str(rng.choice([c for c in classes if c != cls]))
                d0 = round(float(rng.uniform(0.3, 1.0)), 1)
                d1 = round(d0 + cfg.decoy_s, 1)
            if cls == NORMAL:
                start = end = 0.0
            else:
                length = rng.uniform(cfg.min_event_s, cfg.max_event_s)
                earliest = d1 + 0.5 if decoy else 0.5
                start = rng.uniform(earliest, max(earliest, cfg.duration_s - length - 0.5))
                start = round(start, 1)
                end = round(min(cfg.duration_s - 0.1, start + length), 1)
            ped_y, ped_speed = round(rng.uniform(0.2, 0.4), 3), round(rng.uniform(0.5, 1.0), 3)
            clips.append(Clip(f"{PREFIX}{n:04d}.mp4", split, cls, start, end, ped_y, ped_speed, letters[i], decoy, d0, d1))
    return clips


def synthesize(out_dir: Path, cfg: SynthConfig, seed: int) -> dict[str, int]:
    """Write ``out_dir/videos/*.mp4`` and ``out_dir/{train,val,test}.csv``; returns counts per split."""
    for c in cfg.classes:
        if canonical_class(c) is None:
            raise ValueError(f"synth.classes: {c!r} is not a VAU-Bench class name")
        if canonical_class(c) not in STYLES:
            raise ValueError(f"synth.classes: no drawing style for {c!r}; available: {sorted(STYLES)}")
    classes = [canonical_class(c) for c in cfg.classes]
    clips = plan_clips(cfg, seed)
    rows: dict[str, list[dict[str, str]]] = {"train": [], "val": [], "test": []}
    n_frames = int(round(cfg.duration_s * cfg.fps))
    for i, clip in enumerate(progress(clips, desc="synth videos", unit="video")):
        rng = np.random.default_rng([seed, i])
        frames = [render_frame(clip, k / cfg.fps, cfg.height, cfg.width, rng, cfg.duration_s, cfg.time_bar) for k in range(n_frames)]
        write_mp4(out_dir / "videos" / clip.name, frames, cfg.fps)
        rows[clip.split].append(annotation_row(clip, rng, classes))
    for split, split_rows in rows.items():
        with open(out_dir / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=VAU_BENCH_COLUMNS)
            writer.writeheader()
            writer.writerows(split_rows)
    counts = {split: len(r) for split, r in rows.items()}
    log.info("synthesised %s videos into %s", counts, out_dir)
    return counts

"""The frame cache's storage (srvau.video.cache): compressed entries, pixel tolerance, layout version.

Frames come from real mp4 bytes through the stage's own decode path (probe_and_sample); "the pixels
of today" are what the decoder hands over (decode.decode_frames with the same plan), so the tolerance
measured here is exactly what compression adds on top of decoding.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from srvau.config import VideoConfig, load_params
from srvau.data.ingest import ingest
from srvau.video import cache, decode, sampling
from srvau.video.probe import probe_and_sample, probe_inprocess
from videos import frame_number, write_video

# A larger frame than the demo policy, so compression has something to work on: 16 frames of 168x224.
POLICY = VideoConfig(max_frames=16, max_pixels_per_frame=224 * 224, total_pixels=16 * 224 * 224)
MAE_MAX = 2.0  # mean absolute error, in 0-255 levels (docs/frame-cache.md)
PSNR_MIN_DB = 38.0


def write_scene(path: Path, seconds: float = 8.0, fps: int = 10, width: int = 320, height: int = 240) -> Path:
    """A surveillance-like H.264 clip: smooth background, sensor noise, a few moving blocks."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 80 * xx / width, 70 + 60 * yy / height,
                           90 + 40 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(seconds * fps)):
            img = background + rng.normal(0, 3, background.shape)
            for k in range(4):
                x, y = (i * (3 + k) + 70 * k) % (width - 20), int(height * (k + 1) / 6)
                img[y - 12 : y + 12, x : x + 20] = (200 - 40 * k, 50 * k, 120)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_texture(path: Path, seconds: float = 4.0, fps: int = 10, width: int = 320, height: int = 240) -> Path:
    """A hard case: a scrolling texture of random 8x8 blocks (close to noise after the policy's downscale)."""
    import av

    rng = np.random.default_rng(1)
    tex = rng.integers(0, 256, (height // 8, (2 * width) // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(int(seconds * fps)):
            img = np.ascontiguousarray(tex[:, (3 * i) % width : (3 * i) % width + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("frame-cache")
    return {
        "stripes": write_video(d / "stripes.mp4", 100, fps=10, width=320, height=240),
        "scene": write_scene(d / "scene.mp4"),
        "texture": write_texture(d / "texture.mp4"),
    }


def decoded_today(path: Path, policy: VideoConfig) -> np.ndarray:
    """The frames the decoder produces for this policy: what the cache held, bit for bit, before compression."""
    info, tl = probe_inprocess(str(path))
    plan = sampling.plan_sampling(tl.times, info.duration_s, info.height, info.width, policy)
    return decode.decode_frames(str(path), plan.indices, plan.size, backend=policy.decoder, timeline=tl).frames


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("name", ["stripes", "scene", "texture"])
def test_cached_pixels_stay_within_tolerance(clips, tmp_path, name):
    entry = tmp_path / "e.npz"
    probe_and_sample(clips[name], POLICY, entry)
    frames, meta = cache.load_frames(entry)
    want = decoded_today(clips[name], POLICY)
    assert frames.shape == want.shape and frames.dtype == np.uint8
    err = np.abs(frames.astype(np.int16) - want.astype(np.int16))
    assert err.mean() <= MAE_MAX, f"mean abs error {err.mean():.2f} levels"
    assert psnr_db(frames, want) >= PSNR_MIN_DB
    assert len(meta["frames_indices"]) == frames.shape[0]
    if name == "stripes":  # the frame order survives: every frame still shows its own number
        assert [frame_number(f) for f in frames] == meta["frames_indices"]


def test_entries_are_compressed(clips, tmp_path):
    """Raw uint8 frames were 5x-50x larger than needed; an entry must now be a fraction of them."""
    entry = tmp_path / "scene.npz"
    probe_and_sample(clips["scene"], POLICY, entry)
    h = cache.read_header(entry)
    raw = int(np.prod(h["frame_shape"]))
    assert entry.stat().st_size <= raw / 5, (entry.stat().st_size, raw)
    assert h["codec"] == cache.CODEC


def test_entries_load_without_pickle_and_header_reads_without_decoding(clips, tmp_path):
    entry = tmp_path / "s.npz"
    probe_and_sample(clips["stripes"], POLICY, entry)
    with np.load(entry, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        members = {k: z[k] for k in z.files}
    h = cache.read_header(entry)
    assert h["version"] == cache.CACHE_VERSION and h["frame_shape"][0] == h["n_frames"] == 16
    # a header still reads with the video bytes gone; loading the frames does not
    members["video"] = members["video"][:100]
    np.savez(entry, **members)
    assert cache.read_header(entry)["frame_shape"] == h["frame_shape"]
    with pytest.raises(ValueError):  # av's InvalidDataError is one
        cache.load_frames(entry)


def test_a_frame_count_mismatch_is_refused(clips, tmp_path):
    entry = tmp_path / "s.npz"
    probe_and_sample(clips["stripes"], POLICY, entry)
    with np.load(entry, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    members["frame_shape"] = members["frame_shape"] + np.array([2, 0, 0, 0])
    np.savez(entry, **members)
    with pytest.raises(ValueError, match="declares"):
        cache.load_frames(entry)


def write_v1_entry(path: Path, src: Path, fingerprint: str) -> None:
    """An entry in the version-1 layout (raw uint8 frames), as the previous code wrote them."""
    import hashlib

    frames = decoded_today(src, POLICY)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    info = {"sha256": sha, "size_bytes": src.stat().st_size, "codec": "h264", "width": 320, "height": 240,
            "num_frames": 100, "fps": 10.0, "duration_s": 10.0, "vfr": False, "start_s": 0.0}
    np.savez(path, frames=frames, indices=np.arange(len(frames), dtype=np.int64),
             timestamps=np.arange(len(frames), dtype=np.float64), fps=np.float64(10), total_num_frames=np.int64(100),
             duration=np.float64(10), source_size=np.asarray([240, 320], np.int64), backend=np.str_("decord"),
             fingerprint=np.str_(fingerprint), sha256=np.str_(sha), info=np.str_(json.dumps(info)),
             version=np.int64(1))


def test_old_layout_entries_are_stale_and_ingest_remakes_them(clips, tmp_path):
    fingerprint = sampling.policy_fingerprint(POLICY)
    old = tmp_path / "old.npz"
    write_v1_entry(old, clips["stripes"], fingerprint)
    with np.load(old) as z:
        sha = str(z["sha256"])
    assert not cache.is_fresh(old, sha, fingerprint)
    with pytest.raises(cache.StaleCacheEntry, match="version 1"):
        cache.load_frames(old)

    # the stage: a version-1 entry where ingest looks for this video's entry is decoded again
    root = tmp_path / "videos"
    root.mkdir()
    (root / "demo_a.mp4").write_bytes(clips["stripes"].read_bytes())
    ann = tmp_path / "a.csv"
    with open(ann, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option",
                    "Key Object", "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time"])
        w.writerow(["demo_a.mp4", "What happens?", "A fire", "A fight", "Nothing", "Rain", "A", "flames",
                    "A fire starts.", "Smoke then flames.", "Fire", "2.0", "6.0"])
    out = tmp_path / "out"
    params = load_params(overrides={"video": POLICY.model_dump()})
    (out / "frames").mkdir(parents=True)
    write_v1_entry(out / "frames" / cache.cache_filename("demo_a.mp4"), clips["stripes"], fingerprint)
    result = ingest([ann], root, out, params)
    assert not result.failed, result.failure
    assert (result.counts["videos_decoded"], result.counts["videos_reused"]) == (1, 0)
    entry = out / result.manifest.iloc[0]["frames_path"]
    assert cache.read_header(entry)["version"] == cache.CACHE_VERSION
    frames, meta = cache.load_frames(entry)
    assert [frame_number(f) for f in frames] == meta["frames_indices"]


def test_dvc_hashes_the_frame_cache_but_neither_stores_nor_pushes_it():
    """docs/frame-cache.md: the frames are derived from the videos, so DVC keeps no copy of them."""
    from dvc.repo import Repo

    with Repo(str(Path(__file__).resolve().parents[2])) as repo:
        stage = next(s for s in repo.index.stages if s.name == "ingest")
    outs = {o.def_path: o for o in stage.outs}
    frames = outs["data/ingest/frames"]
    assert not frames.use_cache  # hashed into dvc.lock, never copied into .dvc/cache, so never pushed
    assert frames.persist  # dvc repro keeps it, so ingestion reuses its fresh entries
    assert outs["data/ingest/manifest.parquet"].use_cache and outs["data/ingest/quarantine.jsonl"].use_cache


def test_the_same_frames_always_encode_to_the_same_bytes(clips):
    """DVC hashes the cache: a rebuilt entry must not change its bytes (with x264's SIMD paths the same
    frames gave up to 4 byte streams in 16 encodes, more often after decord had run in the process)."""
    frames = decoded_today(clips["texture"], load_params().video)
    digests = set()
    for _ in range(8):
        decoded_today(clips["scene"], load_params().video)  # decord in between, as ingestion does
        digests.add(hash(cache.encode_frames(frames)))
    assert len(digests) == 1


def test_the_model_input_stays_within_tolerance(clips, tmp_path):
    """What the model sees (the processor's normalised patches) from a cache entry is as close to the
    decoded frames' as the pixels are: no resize in between, the error in 0-255 levels unchanged."""
    from srvau.modeling.generation import chat_text
    from srvau.modeling.inputs import processor_inputs
    from srvau.modeling.tiny import build_processor, train_tokenizer

    entry = tmp_path / "texture.npz"
    probe_and_sample(clips["texture"], POLICY, entry)
    frames, meta = cache.load_frames(entry)
    assert frames.flags["C_CONTIGUOUS"] and frames.dtype == np.uint8
    proc = build_processor(train_tokenizer(["what happens in the video"] * 4, 400), POLICY)
    text = chat_text(proc, "What happens?")
    cached = processor_inputs(proc, [text], [frames], [meta])
    today = processor_inputs(proc, [text], [decoded_today(clips["texture"], POLICY)], [meta])
    assert cached["video_grid_thw"].equal(today["video_grid_thw"])
    std = np.asarray(proc.video_processor.image_std)
    diff = (cached["pixel_values_videos"] - today["pixel_values_videos"]).abs().double().numpy()
    levels = diff.reshape(diff.shape[0], 3, -1) * std[None, :, None] * 255  # patches are channel-major
    assert levels.mean() <= MAE_MAX
    assert 10 * np.log10(255.0**2 / (levels**2).mean()) >= PSNR_MIN_DB

"""Benchmark: sampled frames per second and peak RSS of frame sampling, three ways, side by side.

For N frames (default 16) spread over videos of several lengths and resolutions:

    ours        srvau.video.decode.decode_frames: decord get_batch with the resize done inside FFmpeg
                to the policy size (the stage's decode path; probe and cache write excluded)
    floor       decord alone: VideoReader(num_threads=1) + get_batch at native size (the floor)
    pyav_seek   our PyAV fallback (seek to the keyframe before each frame, decode forward)
    naive       PyAV decode-everything-then-subsample: every frame to RGB in a list, then pick N
    stage       the whole per-video stage step: probe_and_sample in its child process (probe, sha256,
                plan, decode, cache write), for reference; one video per measurement, so the probe
                server's start (its imports) and stop are included, as a subprocess per video was

Each measurement runs in a fresh subprocess (imports done before the clock starts) and reports its
wall time and ``ru_maxrss`` (peak RSS; for ``stage`` the child's). Times are the best of
``--repeats`` runs, variants interleaved (the usual estimator on a shared, noisy machine; the median
is stored in the JSON too); ``naive`` runs once. Everything decodes on one thread (decord num_threads=1,
PyAV thread_count=1): the machines this runs on are small and shared, and it keeps the comparison
about the method, not the thread pool. ``naive`` is skipped when it would hold more than
``--naive-max-gib`` of frames (its memory grows with the video: that is the point).

Videos are synthetic H.264 (libx264 ultrafast, 30 fps, keyframe every 2 s, moving texture) written
with PyAV into a temporary folder (``--keep DIR`` reuses them). Prints a table with ratios and the
targets, writes JSON to bench/results/ingest.json.

    python bench/ingest.py [--frames 16] [--lengths 10 60 180] [--res 240 480] [--repeats 5]

Part two (``--part cache``) sizes the frame cache: for each clip at the demo settings (params.yaml) and
at the paper settings (configs/recipe/paper-3b.yaml), the bytes of one entry and the time of
``srvau.video.cache.load_frames`` (the read every training and evaluation step makes), today's layout
against the raw one (layout 1: uint8 frames in an uncompressed ``np.savez``, rebuilt here from the
same frames), side by side. Clips: ``texture`` (the scrolling random-block texture above, close to
noise once downscaled: a worst case for any codec) and ``scene`` (a still, smooth background with
sensor noise and moving blocks: what a surveillance camera films). Reads are timed warm (file in the
page cache, best of ``--repeats``) and cold (the file evicted with ``posix_fadvise(DONTNEED)`` first,
as at paper scale, where 73 GB of raw entries does not stay in memory). A third time is training's
per-sample cost: the read plus the Qwen2.5-VL processor on the frames (resize check, rescale,
normalise, patchify: what the SFT collator and GRPO do per video), on one torch thread as in a
DataLoader worker. Layout 3 (H.264 YUV 4:4:4, crf 13, CABAC) is measured alongside as the previous
compressed layout. It also reports the pixel
error of the entry against the raw frames (and on the model's input: the processor's normalised
patches, in 0-255 levels), the one-off encode time, and the disk for VAU-Bench's
4.6k videos and for 20k. Prints a table, writes JSON to bench/results/ingest_cache.json.

    python bench/ingest.py --part cache [--cache-clips texture:60:480 scene:120:720] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESOLUTIONS = {240: (426, 240), 360: (640, 360), 480: (854, 480), 720: (1280, 720)}
FPS = 30
GOP_S = 2
VARIANTS = ("ours", "floor", "pyav_seek", "naive", "stage")


# --- bench videos ---------------------------------------------------------------------------------


def encode_bench_video(path: Path, frames, width: int, height: int, crf: int) -> None:
    """The bench's input videos: fast x264 at FPS with a keyframe every GOP_S seconds (what seeking
    costs depends on it), unlike the demo's deterministic writer (srvau.data.synth.write_mp4)."""
    import av

    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = GOP_S * FPS
        s.options = {"preset": "ultrafast", "crf": str(crf)}
        for img in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    tmp.replace(path)


def make_video(path: Path, seconds: float, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (height // 16 + 2, (2 * width) // 16 + 2, 3), dtype=np.uint8)
    tex = tex.repeat(16, 0).repeat(16, 1)[:height, : 2 * width]
    ramp = (np.arange(width, dtype=np.uint16)[None, :] * 255 // max(width - 1, 1)).astype(np.uint8)

    def frames():
        for i in range(int(seconds * FPS)):
            x = (i * 4) % width
            img = np.ascontiguousarray(tex[:, x : x + width])
            img[: height // 3, :, 0] = ramp + np.uint8(i % 256)  # a band that changes every frame
            yield img

    encode_bench_video(path, frames(), width, height, crf=26)


# --- one measurement (runs in its own process) ----------------------------------------------------


def _worker(variant: str, path: str, n: int) -> dict:
    from srvau.config import VideoConfig
    from srvau.video import sampling

    policy = VideoConfig(max_frames=max(n, 2), min_frames=min(4, max(n, 2)))
    with __import__("av").open(path) as c:
        st = c.streams.video[0]
        total, h, w = st.frames, st.codec_context.height, st.codec_context.width
    idx = np.linspace(0, total - 1, n).round().astype(np.int64)
    size = sampling.resize_target(h, w, n, policy)
    if variant in ("ours", "pyav_seek"):
        import av  # noqa: F401  decode_frames imports its backends lazily: keep imports off the clock
        import decord  # noqa: F401

        from srvau.video.decode import decode_frames
    elif variant == "floor":
        import decord
    elif variant == "naive":
        import av
    elif variant == "stage":
        from srvau.video.probe import probe_and_sample, stop_server
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t0 = time.perf_counter()
    if variant == "ours":
        out = decode_frames(path, idx, size, backend="decord").frames
    elif variant == "pyav_seek":
        out = decode_frames(path, idx, size, backend="pyav").frames
    elif variant == "floor":
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        out = vr.get_batch(idx).asnumpy()
    elif variant == "naive":
        with av.open(path) as c:
            st = c.streams.video[0]
            st.codec_context.thread_count = 1
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
        out = np.stack([frames[i] for i in idx])
    elif variant == "stage":
        with tempfile.TemporaryDirectory() as d:
            res = probe_and_sample(path, policy.model_copy(update={"probe_timeout_s": 600}), Path(d) / "x.npz")
        stop_server()  # reaps the server, so RUSAGE_CHILDREN below covers it and the child it forked
        out = np.zeros((res.frames, res.height, res.width, 3), np.uint8)
    seconds = time.perf_counter() - t0

    who = resource.RUSAGE_CHILDREN if variant == "stage" else resource.RUSAGE_SELF
    return {"seconds": seconds, "frames": int(out.shape[0]), "shape": list(out.shape[1:3]),
            "peak_rss_mb": resource.getrusage(who).ru_maxrss / 1024, "base_rss_mb": base_kb / 1024}


def measure(variant: str, path: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, str(path), str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} on {path.name} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="srvau-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for res in args.res:
        w, h = RESOLUTIONS[res]
        for length in args.lengths:
            path = folder / f"bench_{length}s_{res}p.mp4"
            if not path.exists():
                t = time.perf_counter()
                make_video(path, length, w, h)
                print(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s",
                      file=sys.stderr)
            entry: dict = {"video": path.name, "seconds": length, "resolution": f"{w}x{h}", "frames_total": length * FPS,
                           "size_mb": round(path.stat().st_size / 1e6, 2), "n": args.frames, "variants": {}}
            naive_gib = length * FPS * w * h * 3 / 2**30
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for r in range(args.repeats):
                order = ["ours", "floor", "pyav_seek", "stage"]
                for v in order if r % 2 == 0 else order[::-1]:  # alternate to spread drift over variants
                    runs[v].append(measure(v, path, args.frames))
            if naive_gib <= args.naive_max_gib:
                runs["naive"].append(measure("naive", path, args.frames))
            for v, ms in runs.items():
                if not ms:
                    entry["variants"][v] = {"skipped": f"would hold {naive_gib:.1f} GiB of frames (> --naive-max-gib)"}
                    continue
                sec = min(m["seconds"] for m in ms)
                entry["variants"][v] = {
                    "seconds": sec, "median_seconds": statistics.median(m["seconds"] for m in ms),
                    "frames_per_s": args.frames / sec, "peak_rss_mb": max(m["peak_rss_mb"] for m in ms),
                    "base_rss_mb": min(m["base_rss_mb"] for m in ms), "out_shape": ms[0]["shape"],
                    "runs": [m["seconds"] for m in ms]}
            results.append(entry)
            print(f"measured {path.name}", file=sys.stderr)
    if not args.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return {"frames": args.frames, "repeats": args.repeats, "fps": FPS, "gop_s": GOP_S, "results": results,
            "targets": targets(results, args.frames), "machine": machine()}


def _sec(entry: dict, v: str) -> float | None:
    return entry["variants"].get(v, {}).get("seconds")


def targets(results: list[dict], n: int) -> dict:
    out: dict = {}
    ratios = {e["video"]: _sec(e, "ours") / _sec(e, "floor") for e in results}
    out["ours_vs_floor_max_ratio"] = max(ratios.values())
    out["ours_within_1.3x_floor"] = all(r <= 1.3 for r in ratios.values())
    ref = [e for e in results if e["seconds"] == 60 and e["resolution"] == "854x480"]
    if ref and _sec(ref[0], "naive") is not None and n == 16:
        out["naive_over_ours_60s_480p"] = _sec(ref[0], "naive") / _sec(ref[0], "ours")
        out["ours_3x_faster_than_naive_60s_480p"] = out["naive_over_ours_60s_480p"] >= 3
    flat = {}
    for res in sorted({e["resolution"] for e in results}):
        row = sorted((e for e in results if e["resolution"] == res), key=lambda e: e["seconds"])
        if len(row) > 1:
            first, last = row[0]["variants"]["ours"]["peak_rss_mb"], row[-1]["variants"]["ours"]["peak_rss_mb"]
            flat[res] = {"shortest_mb": first, "longest_mb": last, "growth_mb": last - first}
    out["ours_peak_rss_by_length"] = flat
    # "flat": the longest video costs < 20 % more peak RSS than the shortest (18x shorter by default),
    # where decode-everything grows with every frame. decord's get_batch itself adds a few MB on long
    # files (its reader alone does not; our PyAV path is exactly flat), hence not 0 %.
    out["ours_rss_flat"] = all(v["longest_mb"] <= 1.2 * v["shortest_mb"] for v in flat.values())
    return out


def machine() -> dict:
    import av
    import decord

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "av": av.__version__, "decord": decord.__version__, "numpy": np.__version__}


def table(report: dict) -> str:
    head = (f"{'video':<20} {'N':>3} {'ours ms':>8} {'floor ms':>9} {'pyav ms':>8} {'naive ms':>9} {'stage ms':>9} "
            f"{'ours/floor':>10} {'naive/ours':>10} {'ours fr/s':>9} {'RSS ours':>9} {'floor':>6} {'naive':>6}")
    lines = [head, "-" * len(head)]
    for e in report["results"]:
        v = e["variants"]

        def ms(k):
            s = v[k].get("seconds")
            return f"{s * 1000:.0f}" if s is not None else "skip"

        def rss(k):
            r = v[k].get("peak_rss_mb")
            return f"{r:.0f}" if r is not None else "-"

        naive = v["naive"].get("seconds")
        ratio = f"{naive / v['ours']['seconds']:.1f}x" if naive is not None else "-"
        lines.append(
            f"{e['seconds']:>4}s {e['resolution']:<14} {e['n']:>3} {ms('ours'):>8} {ms('floor'):>9} {ms('pyav_seek'):>8} "
            f"{ms('naive'):>9} {ms('stage'):>9} {v['ours']['seconds'] / v['floor']['seconds']:>9.2f}x {ratio:>10} "
            f"{v['ours']['frames_per_s']:>9.0f} {rss('ours'):>8}M {rss('floor'):>5}M {rss('naive'):>5}M")
    t = report["targets"]
    lines.append("")
    lines.append(f"target ours <= 1.3x floor on every video: {'PASS' if t['ours_within_1.3x_floor'] else 'FAIL'}"
                 f" (worst {t['ours_vs_floor_max_ratio']:.2f}x)")
    if "naive_over_ours_60s_480p" in t:
        lines.append(f"target >= 3x faster than decode-everything, 16 frames of 60 s 480p: "
                     f"{'PASS' if t['ours_3x_faster_than_naive_60s_480p'] else 'FAIL'} ({t['naive_over_ours_60s_480p']:.1f}x)")
    growth = ", ".join(f"{k}: {v['shortest_mb']:.0f} -> {v['longest_mb']:.0f} MB" for k, v in t["ours_peak_rss_by_length"].items())
    lines.append(f"target peak RSS flat as the video gets longer: {'PASS' if t['ours_rss_flat'] else 'FAIL'} ({growth})")
    return "\n".join(lines)


# --- part two: the frame cache -----------------------------------------------------------------------

PAPER_RECIPE = "paper-3b"
DATASET_VIDEOS = {"vau_bench_4.6k": 4600, "20k": 20000}
TARGET_PAPER_MB = 3.0  # bytes per entry at the paper settings
TARGET_READ_RATIO = 1.2  # load_frames time against the raw layout


def make_scene_video(path: Path, seconds: float, width: int, height: int) -> None:
    """A fixed camera: smooth background, sensor noise (a bank of 8 noise frames), moving blocks."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([60 + 80 * xx / width, 70 + 60 * yy / height,
                           90 + 40 * np.sin(xx / 37.0) * np.cos(yy / 23.0)], -1)
    noisy = [np.clip(background + rng.normal(0, 3, background.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    bh, bw = height // 12, width // 24

    def frames():
        for i in range(int(seconds * FPS)):
            img = noisy[i % len(noisy)].copy()
            for k in range(5):
                x, y = (i * (2 + k) + k * width // 5) % (width - bw), (k + 1) * height // 7
                img[y : y + bh, x : x + bw] = (200 - 30 * k, 50 * k, 120)
            yield img

    encode_bench_video(path, frames(), width, height, crf=23)


def save_raw_npz(path: Path, clip, info, fingerprint: str) -> None:
    """The previous layout (CACHE_VERSION 1): the same header with the decoded frames as raw uint8."""
    with open(path, "wb") as f:
        np.savez(f, frames=clip.frames, indices=clip.indices, timestamps=clip.timestamps, fps=np.float64(clip.fps),
                 total_num_frames=np.int64(clip.total_num_frames), duration=np.float64(clip.duration_s),
                 source_size=np.asarray([clip.source_height, clip.source_width], np.int64),
                 backend=np.str_(clip.backend), fingerprint=np.str_(fingerprint), sha256=np.str_(info.sha256),
                 info=np.str_(json.dumps(info.to_dict())), version=np.int64(1))


def load_raw_npz(path: Path) -> np.ndarray:
    """How the raw layout's load_frames read its frames."""
    with np.load(path, allow_pickle=False) as z:
        return z["frames"]


def save_v3_npz(path: Path, frames: np.ndarray) -> None:
    """The layout before this one (CACHE_VERSION 3), frames only: H.264 High 4:4:4 in YUV, crf 13, CABAC."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=2)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"crf": "13", "preset": "medium", "threads": "1", "x264-params": "asm=0"}
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    np.savez(path, video=np.frombuffer(buf.getvalue(), np.uint8), frame_shape=np.asarray(frames.shape, np.int64))


def load_v3_npz(path: Path) -> np.ndarray:
    """How version 3's load_frames read its frames (decode, then swscale to packed RGB)."""
    import io

    import av

    with np.load(path, allow_pickle=False) as z:
        data, shape = z["video"].tobytes(), tuple(int(x) for x in z["frame_shape"])
    out = np.empty(shape, np.uint8)
    with av.open(io.BytesIO(data)) as c:
        st = c.streams.video[0]
        st.codec_context.thread_type = "AUTO"
        for i, f in enumerate(c.decode(st)):
            out[i] = f.to_ndarray(format="rgb24")
    return out


def _evict(path: Path) -> None:
    """Drop ``path`` from the page cache (a no-op on tmpfs: keep the work folder on a disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn, path: Path, cold: bool) -> float:
    if cold:
        _evict(path)
    t0 = time.perf_counter()
    fn(path)
    return time.perf_counter() - t0


def bench_processor(policy):
    """The real Qwen2.5-VL processor (tiny tokenizer; the video path is the 3B model's) and a chat text."""
    from srvau.modeling.generation import chat_text
    from srvau.modeling.tiny import build_processor, train_tokenizer

    proc = build_processor(train_tokenizer(["What happens in this video? Answer with one letter."] * 4, 400), policy)
    return proc, chat_text(proc, "What happens in this video?", "Think, then answer.")


def model_input_error(proc, text: str, want: np.ndarray, got: np.ndarray, meta: dict) -> dict:
    """Error on what the model sees (the processor's normalised patches), in 0-255 levels."""
    from srvau.modeling.inputs import processor_inputs

    a = processor_inputs(proc, [text], [want], [meta])["pixel_values_videos"].double()
    b = processor_inputs(proc, [text], [got], [meta])["pixel_values_videos"].double()
    std = np.asarray(proc.video_processor.image_std, np.float64)
    # patches are (T/2 * grid, C * 2 * 14 * 14), channel-major: one std per channel block
    levels = (a - b).abs().numpy().reshape(a.shape[0], 3, -1) * std[None, :, None] * 255
    mse = float((levels**2).mean())
    return {"mae": float(levels.mean()), "max_abs": float(levels.max()),
            "psnr_db": 10 * np.log10(255.0**2 / mse) if mse else None}


LAYOUTS = ("raw", "v3", "new")


def measure_cache(video: Path, settings: str, policy, repeats: int, work: Path) -> dict:
    from srvau.modeling.inputs import processor_inputs
    from srvau.video import cache
    from srvau.video.decode import decode_frames
    from srvau.video.probe import probe_inprocess
    from srvau.video.sampling import plan_sampling

    # the stage's own steps (probe_and_sample's child), with the decoded frames kept for the raw layout
    info, tl = probe_inprocess(str(video))
    plan = plan_sampling(tl.times, info.duration_s, info.height, info.width, policy)
    clip = decode_frames(str(video), plan.indices, plan.size, backend=policy.decoder, timeline=tl)
    frames = clip.frames
    paths = {k: work / f"{video.stem}-{settings}-{k}.npz" for k in LAYOUTS}
    t0 = time.perf_counter()
    cache.save_frames(paths["new"], clip, info=info, fingerprint=plan.fingerprint)
    encode_s = time.perf_counter() - t0
    save_raw_npz(paths["raw"], clip, info, plan.fingerprint)
    save_v3_npz(paths["v3"], frames)
    readers = {"raw": load_raw_npz, "v3": load_v3_npz, "new": lambda p: cache.load_frames(p)[0]}
    meta = cache.load_frames(paths["new"])[1]
    proc, text = bench_processor(policy)

    def sample_fn(reader):  # what a training step does per video: the read, then the processor
        return lambda p: processor_inputs(proc, [text], [reader(p)], [meta])

    samplers = {k: sample_fn(fn) for k, fn in readers.items()}
    # The collator runs in DataLoader workers, which PyTorch starts with one intra-op thread each; on
    # this shared machine more threads only made the processor's times follow other processes' load.
    import torch

    torch.set_num_threads(1)
    sample_fn(readers["raw"])(paths["raw"])  # warm-up: the processor's first call builds its transforms
    times: dict[str, list[float]] = {f"{k}_{m}": [] for k in LAYOUTS for m in ("warm", "cold", "sample")}
    for r in range(repeats):  # interleaved, order alternating, so drift on a shared machine hits all alike
        for k in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            times[f"{k}_cold"].append(_timed(readers[k], paths[k], cold=True))
            times[f"{k}_warm"].append(_timed(readers[k], paths[k], cold=False))
            times[f"{k}_sample"].append(_timed(samplers[k], paths[k], cold=False))
    best = {k: min(v) for k, v in times.items()}
    out = {"settings": settings, "frames": int(frames.shape[0]), "frame_hw": list(frames.shape[1:3]),
           "pixels": int(np.prod(frames.shape[:3])), "encode_s": encode_s,  # save_frames, once per video at ingest
           "bytes": {k: p.stat().st_size for k, p in paths.items()},
           "read_s": best, "read_median_s": {k: statistics.median(v) for k, v in times.items()}}
    for k in ("v3", "new"):
        got = readers[k](paths[k])
        err = np.abs(got.astype(np.int16) - frames.astype(np.int16))
        mse = float(np.mean(err.astype(np.float64) ** 2))
        out[k] = {"size_ratio": out["bytes"]["raw"] / out["bytes"][k],
                  "read_ratio_warm": best[f"{k}_warm"] / best["raw_warm"],
                  "read_ratio_cold": best[f"{k}_cold"] / best["raw_cold"],
                  "sample_ratio": best[f"{k}_sample"] / best["raw_sample"],
                  "mae": float(err.mean()), "max_abs_err": int(err.max()),
                  "psnr_db": 10 * np.log10(255.0**2 / mse) if mse else None,
                  "model_input": model_input_error(proc, text, frames, got, meta)}
    return out


def run_cache(args: argparse.Namespace) -> dict:
    from srvau.config import load_params
    from srvau.video import cache

    policies = {"demo": load_params().video,
                "paper": load_params(recipe=PAPER_RECIPE).video}
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="srvau-bench-cache-"))
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="entries-", dir=folder))
    results = []
    for spec in args.cache_clips:
        kind, seconds, res = spec.split(":")
        w, h = RESOLUTIONS[int(res)]
        path = folder / f"{kind}_{seconds}s_{res}p.mp4"
        if not path.exists():
            t = time.perf_counter()
            (make_video if kind == "texture" else make_scene_video)(path, float(seconds), w, h)
            print(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
        for settings, policy in policies.items():
            m = measure_cache(path, settings, policy, args.repeats, work)
            results.append({"video": path.name, "kind": kind, "seconds": int(seconds), "resolution": f"{w}x{h}", **m})
            print(f"measured {path.name} at {settings} settings", file=sys.stderr)
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    if not args.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    paper = [r for r in results if r["settings"] == "paper"]
    worst_paper_mb = max(r["bytes"]["new"] for r in paper) / 1e6 if paper else None
    targets = {
        "paper_max_mb_per_video": worst_paper_mb,
        "paper_within_3mb": worst_paper_mb is not None and worst_paper_mb <= TARGET_PAPER_MB,
        "read_ratio_warm_max": max(r["new"]["read_ratio_warm"] for r in results),
        "read_ratio_cold_max": max(r["new"]["read_ratio_cold"] for r in results),
        "sample_ratio_max": max(r["new"]["sample_ratio"] for r in results),
        "sample_ratio_paper_max": max(r["new"]["sample_ratio"] for r in paper) if paper else None,
        "reads_within_1.2x_warm": all(r["new"]["read_ratio_warm"] <= TARGET_READ_RATIO for r in results),
        "reads_within_1.2x_cold": all(r["new"]["read_ratio_cold"] <= TARGET_READ_RATIO for r in results),
        "samples_within_1.2x": all(r["new"]["sample_ratio"] <= TARGET_READ_RATIO for r in results),
        "v3_sample_ratio_max": max(r["v3"]["sample_ratio"] for r in results),
        "mae_max": max(r["new"]["mae"] for r in results),
        "psnr_min_db": min(r["new"]["psnr_db"] or float("inf") for r in results),
        "model_input_max_abs": max(r["new"]["model_input"]["max_abs"] for r in results),
        "disk_gb_paper": {name: {"raw": n * max(r["bytes"]["raw"] for r in paper) / 1e9,
                                 "new_worst": n * worst_paper_mb / 1e3,
                                 "new_best": n * min(r["bytes"]["new"] for r in paper) / 1e9}
                          for name, n in DATASET_VIDEOS.items()} if paper else {},
    }
    return {"codec": cache.CODEC, "cache_version": cache.CACHE_VERSION, "repeats": args.repeats, "results": results,
            "targets": targets, "machine": machine()}


def cache_table(report: dict) -> str:
    head = (f"{'video':<22} {'settings':<8} {'T x H x W':>13} {'MB raw/v3/new':>17} {'warm read ms raw/v3/new':>24} "
            f"{'new/raw':>7} {'cold new/raw':>12} {'read+proc ms raw/v3/new':>24} {'new/raw':>7} {'v3/raw':>6} "
            f"{'MAE':>5} {'PSNR':>5}")
    lines = [f"frame cache: layout {report['cache_version']} ({report['codec']}) against raw uint8 npz (layout 1) "
             f"and layout 3 (H.264 YUV 4:4:4 crf 13, CABAC); read+proc = load + the Qwen2.5-VL processor, "
             f"per sample", head, "-" * len(head)]
    for r in report["results"]:
        t, b, n = r["read_s"], r["bytes"], r["new"]
        shape = f"{r['frames']}x{r['frame_hw'][0]}x{r['frame_hw'][1]}"
        mb = f"{b['raw'] / 1e6:.2f}/{b['v3'] / 1e6:.2f}/{b['new'] / 1e6:.2f}"
        warm = f"{t['raw_warm'] * 1e3:.1f}/{t['v3_warm'] * 1e3:.0f}/{t['new_warm'] * 1e3:.0f}"
        sample = f"{t['raw_sample'] * 1e3:.0f}/{t['v3_sample'] * 1e3:.0f}/{t['new_sample'] * 1e3:.0f}"
        lines.append(
            f"{r['video']:<22} {r['settings']:<8} {shape:>13} {mb:>17} {warm:>24} {n['read_ratio_warm']:>6.1f}x "
            f"{n['read_ratio_cold']:>11.1f}x {sample:>24} {n['sample_ratio']:>6.2f}x {r['v3']['sample_ratio']:>5.2f}x "
            f"{n['mae']:>5.2f} {n['psnr_db'] or float('inf'):>5.1f}")
    t = report["targets"]
    lines.append("")
    if t["paper_max_mb_per_video"] is not None:
        lines.append(f"target <= {TARGET_PAPER_MB:g} MB per video at the paper settings: "
                     f"{'PASS' if t['paper_within_3mb'] else 'FAIL'} (largest {t['paper_max_mb_per_video']:.2f} MB)")
    lines.append(f"target training's per-sample read (load + processor) <= {TARGET_READ_RATIO:g}x the raw npz: "
                 f"{'PASS' if t['samples_within_1.2x'] else 'FAIL'} (worst {t['sample_ratio_max']:.2f}x; "
                 f"layout 3 worst {t['v3_sample_ratio_max']:.2f}x)")
    lines.append(f"raw read alone (load_frames vs np.load) <= {TARGET_READ_RATIO:g}x: warm "
                 f"{'PASS' if t['reads_within_1.2x_warm'] else 'FAIL'} (worst {t['read_ratio_warm_max']:.1f}x); "
                 f"cold {'PASS' if t['reads_within_1.2x_cold'] else 'FAIL'} (worst {t['read_ratio_cold_max']:.1f}x)")
    lines.append(f"pixel error against the raw frames: mean abs <= {t['mae_max']:.2f} of 255, PSNR >= "
                 f"{t['psnr_min_db']:.1f} dB; on the model's input max abs {t['model_input_max_abs']:.0f} levels")
    for name, d in t["disk_gb_paper"].items():
        lines.append(f"disk at the paper settings, {name} videos: raw {d['raw']:.0f} GB -> "
                     f"{d['new_best']:.0f}-{d['new_worst']:.0f} GB (scene-texture)")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 60, 180])
    ap.add_argument("--res", type=int, nargs="+", default=[240, 480], choices=sorted(RESOLUTIONS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-max-gib", type=float, default=4.0)
    ap.add_argument("--keep", help="folder to keep (and reuse) the generated videos in")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    ap.add_argument("--part", choices=["decode", "cache", "all"], default="all")
    ap.add_argument("--cache-clips", nargs="+", default=["texture:60:480", "scene:120:720"],
                    help="KIND:SECONDS:RES clips for the cache part (KIND texture | scene)")
    ap.add_argument("--cache-out", default=str(ROOT / "bench" / "results" / "ingest_cache.json"))
    args = ap.parse_args()
    parts = [("decode", run, table, args.out), ("cache", run_cache, cache_table, args.cache_out)]
    for name, runner, render, out in parts:
        if args.part not in (name, "all"):
            continue
        report = runner(args)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(render(report))
        print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Probing, sampling policy, decoding and frame cache on real mp4 bytes (srvau.video)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from srvau.config import VideoConfig
from srvau.video import cache, decode, probe, sampling, timeline
from srvau.io import sha256_file
from videos import frame_number, truncate, vfr_pts_ms, write_video

POLICY = VideoConfig()  # params.yaml defaults: 2 fps, 4..16 frames, 112*112 per frame, 16*112*112 total


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        # 100 frames at 10 fps with B-frames (decode order != presentation order)
        "cfr": write_video(d / "cfr.mp4", 100, fps=10),
        "vfr": write_video(d / "vfr.mp4", 40, pts_ms=vfr_pts_ms(40)),
        "big": write_video(d / "big.mp4", 6, fps=8, width=1920, height=1080, preset="ultrafast"),
        "faststart": write_video(d / "faststart.mp4", 80, gop=10, faststart=True),
    }


# --- sampling policy (pure) ----------------------------------------------------------------------


def test_smart_resize_matches_transformers():
    from srvau.compat import ensure_torchvision

    ensure_torchvision()
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    for h, w in [(1080, 1920), (480, 854), (240, 426), (112, 112), (100, 37), (2000, 30), (29, 29), (720, 1280)]:
        for max_pixels in (784, 3136, 12544, 50176, 1003520):
            for min_pixels in (784, 3136):
                assert sampling.smart_resize(h, w, 28, min_pixels, max_pixels) == hf_smart_resize(
                    h, w, 28, min_pixels, max_pixels
                ), (h, w, min_pixels, max_pixels)


@pytest.mark.parametrize(
    "duration, expected",
    [
        (0.5, 4),  # 1 frame at 2 fps -> raised to min_frames
        (2.5, 6),  # 5 -> odd -> 6 (even preferred)
        (4.0, 8),
        (7.6, 16),  # 15.2 -> 15 -> 16
        (60.0, 16),  # clamped to max_frames
        (0.0, 4),
    ],
)
def test_frame_count(duration, expected):
    assert sampling.num_sampled_frames(duration, POLICY) == expected


def test_frame_count_odd_bounds_and_pixel_cap():
    odd = VideoConfig(fps=1.0, min_frames=3, max_frames=5)
    assert sampling.num_sampled_frames(3.0, odd) == 4  # 3 -> 4 (within max)
    assert sampling.num_sampled_frames(100.0, odd) == 4  # 5 = max -> 4 (>= min)
    fixed = VideoConfig(fps=1.0, min_frames=5, max_frames=5)
    assert sampling.num_sampled_frames(10.0, fixed) == 5  # no even count allowed
    tight = VideoConfig(total_pixels=28 * 28 * 6, max_pixels_per_frame=28 * 28)
    n = sampling.num_sampled_frames(60.0, tight)
    assert n == 6 and n * 28 * 28 <= tight.total_pixels
    with pytest.raises(ValueError):
        sampling.num_sampled_frames(float("nan"), POLICY)


def test_frame_indices_constant_rate_equal_linspace():
    for total, n in [(100, 16), (40, 10), (1800, 16), (7, 4), (250, 8)]:
        times = sampling.constant_rate_times(total, 30.0)
        got = sampling.frame_indices(times, n)
        want = np.linspace(0, total - 1, n)
        # equal to linspace rounding except exact .5 ties, where the earlier frame is taken
        ties = np.isclose(want % 1, 0.5)
        assert np.array_equal(got[~ties], want[~ties].round().astype(int))
        assert np.all(got[ties] == np.floor(want[ties]))
        assert got[0] == 0 and got[-1] == total - 1


def test_frame_indices_short_clip_repeats_and_single_frame():
    assert sampling.frame_indices(np.arange(3) / 8.0, 4).tolist() == [0, 1, 1, 2]
    assert sampling.frame_indices(np.array([0.0]), 4).tolist() == [0, 0, 0, 0]


def test_frame_indices_variable_rate_even_in_time():
    # 30 frames at 25 fps, then 10 frames at 5 fps (a camera that lowered its rate)
    t = np.concatenate([np.arange(30) * 0.04, 1.16 + np.arange(1, 11) * 0.2])
    idx = sampling.frame_indices(t, 8)
    targets = np.linspace(t[0], t[-1], 8)
    for k, i in enumerate(idx):  # each pick is the frame nearest its target time
        assert abs(t[i] - targets[k]) == pytest.approx(np.min(np.abs(t - targets[k])))
    assert np.max(np.abs(t[idx] - targets)) <= 0.1 + 1e-9  # half the longest frame gap
    naive = np.linspace(0, t.size - 1, 8).round().astype(int)  # even in frames: far off in time
    assert np.max(np.abs(t[naive] - targets)) > 0.5


@pytest.mark.parametrize("h, w", [(1080, 1920), (2160, 3840), (480, 640), (1920, 1080), (112, 112), (90, 160)])
@pytest.mark.parametrize("duration", [1.0, 5.0, 600.0])
def test_resize_target_inside_budgets(h, w, duration):
    n = sampling.num_sampled_frames(duration, POLICY)
    th, tw = sampling.resize_target(h, w, n, POLICY)
    assert th % 28 == 0 and tw % 28 == 0
    assert th * tw <= POLICY.max_pixels_per_frame
    assert (n + n % 2) * th * tw <= POLICY.total_pixels
    assert abs(th / tw - h / w) / (h / w) < 0.35  # aspect kept up to the 28-pixel grid


def test_resize_target_tight_total_budget():
    pol = VideoConfig(max_pixels_per_frame=448 * 448, total_pixels=16 * 112 * 112, max_frames=16)
    th, tw = sampling.resize_target(1080, 1920, 16, pol)
    assert 16 * th * tw <= pol.total_pixels  # the total budget binds, not the per-frame one


def test_policy_fingerprint_tracks_frame_shaping_fields_only():
    base = sampling.policy_fingerprint(POLICY)
    assert base == sampling.policy_fingerprint(VideoConfig())
    for change in [{"fps": 1.0}, {"min_frames": 2}, {"max_frames": 32}, {"max_pixels_per_frame": 28 * 28 * 4},
                   {"total_pixels": 28 * 28 * 64}]:
        assert sampling.policy_fingerprint(VideoConfig(**change)) != base, change
    assert sampling.policy_fingerprint(VideoConfig(probe_timeout_s=5, decoder="pyav")) == base


# --- probe (subprocess) --------------------------------------------------------------------------


def test_probe_constant_rate(vids):
    info = probe.probe(vids["cfr"])
    assert (info.width, info.height, info.num_frames, info.codec) == (112, 112, 100, "h264")
    assert info.fps == pytest.approx(10.0)
    assert info.duration_s == pytest.approx(10.0)
    assert info.vfr is False
    assert info.sha256 == sha256_file(vids["cfr"])
    assert info.size_bytes == vids["cfr"].stat().st_size


def test_probe_variable_rate(vids):
    info = probe.probe(vids["vfr"])
    assert info.vfr is True
    assert info.num_frames == 40
    assert info.duration_s == pytest.approx(vfr_pts_ms(40)[-1] / 1000 + 0.16, abs=0.05)


def test_sha256_streams_large_file(tmp_path):
    p = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    p.write_bytes(data)
    import hashlib

    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def _reason(path, **kw) -> str:
    with pytest.raises(probe.ProbeError) as e:
        probe.probe(path, **kw)
    return e.value.reason


def test_probe_bad_inputs(tmp_path, vids):
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    assert _reason(zero) == "zero_byte"
    assert _reason(tmp_path / "absent.mp4") == "missing"
    assert _reason(tmp_path) == "not_a_file"
    rnd = tmp_path / "random.mp4"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    assert _reason(rnd) == "unreadable"
    # index (moov) at the end: cutting the file loses it
    assert _reason(truncate(vids["cfr"], tmp_path / "cut.mp4")) == "unreadable"
    # index at the front: the index survives, the media data is short
    assert _reason(truncate(vids["faststart"], tmp_path / "cut_fs.mp4")) == "truncated"


def test_probe_no_video_stream(tmp_path):
    import av

    p = tmp_path / "audio_only.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(10):
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    assert _reason(p) == "no_video_stream"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_probe_refuses_a_still_image_renamed_mp4(tmp_path, fmt):
    """FFmpeg opens an image as a 1-frame, 0.04 s "video"; the probe names it for what it is."""
    from PIL import Image

    p = tmp_path / f"{fmt.lower()}.mp4"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(p, format=fmt)
    assert _reason(p) == "image_not_video"


def _probe_grandchildren() -> list[int]:
    """Pids of the children the probe servers of this process forked (its grandchildren)."""
    ppid = {}
    for d in Path("/proc").iterdir():
        try:
            ppid[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    servers = {pid for pid, parent in ppid.items() if parent == os.getpid()}
    return [pid for pid, parent in ppid.items() if parent in servers]


def test_probe_timeout_kills_child_and_the_server_goes_on(vids, tmp_path):
    out = tmp_path / "frames" / "big.npz"
    with pytest.raises(probe.ProbeError) as e:
        probe.probe_and_sample(vids["big"], POLICY, out, timeout_s=0.005)  # decoding 1080p takes far longer
    assert e.value.reason == "timeout" and "killed" in e.value.detail
    assert not list(out.parent.iterdir())  # nothing half-written
    assert _probe_grandchildren() == []  # the child is gone, not left running
    assert probe.probe(vids["cfr"]).num_frames == 100  # the same server answers the next video


def test_a_child_killed_mid_video_is_reported_crashed_and_the_next_video_works(tmp_path):
    import signal
    import threading

    slow = write_video(tmp_path / "slow.mp4", 120, fps=4, width=1920, height=1080, preset="ultrafast")
    out = tmp_path / "frames" / "slow.npz"
    results: list = []

    def sample_twice():  # one thread, so both videos go to the same server
        for _ in range(2):
            try:
                results.append(probe.probe_and_sample(slow, POLICY, out, timeout_s=120).frames)
            except probe.ProbeError as err:
                results.append(err)

    worker = threading.Thread(target=sample_twice)
    worker.start()
    killed = None
    while worker.is_alive() and killed is None:
        for pid in _probe_grandchildren():
            os.kill(pid, signal.SIGKILL)  # what a segfaulting decoder looks like from outside
            killed = pid
    worker.join()
    assert killed is not None, "the child finished before it could be killed"
    first, second = results
    assert isinstance(first, probe.ProbeError) and first.reason == "crashed"
    assert first.detail.startswith("killed by signal 9")
    assert second == 16 and out.exists()  # the server survived its child and sampled the video again


def test_a_server_killed_mid_video_is_reported_crashed_and_replaced(tmp_path, vids):
    import signal
    import threading

    slow = write_video(tmp_path / "slow.mp4", 120, fps=4, width=1920, height=1080, preset="ultrafast")
    results: list = []

    def sample_then_probe():
        for run in (lambda: probe.probe_and_sample(slow, POLICY, tmp_path / "slow.npz", timeout_s=120),
                    lambda: probe.probe(vids["cfr"])):
            try:
                results.append(run())
            except probe.ProbeError as err:
                results.append(err)

    worker = threading.Thread(target=sample_then_probe)
    worker.start()
    orphans: list[int] = []
    while worker.is_alive() and not orphans:
        children = _probe_grandchildren()
        if children:  # the server has forked its child: kill the server itself
            servers = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in children}
            for pid in servers:
                os.kill(pid, signal.SIGKILL)
            orphans = children
    worker.join()
    assert orphans
    crashed, probed = results
    assert isinstance(crashed, probe.ProbeError) and crashed.reason == "crashed"
    assert "probe server died" in crashed.detail and "exit code -9" in crashed.detail
    assert probed.num_frames == 100  # a new server answered
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in orphans)  # the child died with its server
    assert not list(tmp_path.glob("*slow.npz*"))  # nor wrote its frames after the parent gave up


def test_a_dead_probe_server_is_replaced_at_the_next_video(vids):
    probe.probe(vids["cfr"])
    server = probe._servers.server
    server.proc.kill()
    server.proc.wait()
    assert probe.probe(vids["cfr"]).num_frames == 100
    assert probe._servers.server is not server


# --- decode + cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decoded_frames_are_the_requested_frames(vids, backend):
    idx = [0, 3, 3, 17, 50, 51, 99]  # repeats and neighbours; B-frames in the file
    clip = decode.decode_frames(vids["cfr"], idx, (56, 56), backend=backend)
    assert clip.backend == backend and clip.fallback_reason is None
    assert clip.frames.shape == (7, 56, 56, 3) and clip.frames.dtype == np.uint8
    assert [frame_number(f) for f in clip.frames] == idx
    assert clip.timestamps.tolist() == pytest.approx([i / 10 for i in idx])
    assert clip.total_num_frames == 100 and clip.fps == pytest.approx(10.0)
    assert (clip.source_height, clip.source_width) == (112, 112)


def test_backends_agree_on_pixels(vids):
    idx = [1, 40, 77]
    a = decode.decode_frames(vids["big"], [0, 5], (84, 140), backend="decord").frames.astype(int)
    b = decode.decode_frames(vids["big"], [0, 5], (84, 140), backend="pyav").frames.astype(int)
    assert np.abs(a - b).mean() < 2.0
    a = decode.decode_frames(vids["cfr"], idx, None, backend="decord").frames.astype(int)
    b = decode.decode_frames(vids["cfr"], idx, None, backend="pyav").frames.astype(int)
    assert np.abs(a - b).max() <= 2


def test_pyav_fallback_when_decord_unavailable(vids):
    """decord has no wheels for several platforms: decoding must still work, through PyAV."""
    code = (
        "import sys, json; sys.modules['decord'] = None\n"
        "sys.path.insert(0, 'tests')\n"
        "from srvau.video.decode import decode_frames\n"
        "from videos import frame_number\n"
        f"c = decode_frames({str(vids['cfr'])!r}, [2, 60], (56, 56))\n"
        "print(json.dumps([c.backend, c.fallback_reason, [frame_number(f) for f in c.frames]]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    backend, reason, numbers = json.loads(out.stdout.strip().splitlines()[-1])
    assert backend == "pyav" and "decord" in reason and numbers == [2, 60]


def test_decode_rejects_out_of_range(vids):
    with pytest.raises(decode.DecodeError, match="out of range"):
        decode.decode_frames(vids["cfr"], [0, 100], (56, 56), backend="pyav")
    with pytest.raises(decode.DecodeError):
        decode.decode_frames(vids["cfr"], [], (56, 56))


@pytest.mark.parametrize("name, n_expected", [("cfr", 16), ("vfr", 8), ("big", 4)])
def test_probe_and_sample_caches_the_policy_frames(vids, tmp_path, name, n_expected):
    out = tmp_path / f"{name}.npz"
    res = probe.probe_and_sample(vids[name], POLICY, out)
    c = cache.load_cached(out)
    info = res.info
    n = sampling.num_sampled_frames(info.duration_s, POLICY)
    assert n == n_expected == res.frames == c.frames.shape[0]
    # the frames in the cache are exactly the frames the policy picked
    with __import__("av").open(str(vids[name])) as container:
        tl = timeline.read_timeline(container, container.streams.video[0])
    plan = sampling.plan_sampling(tl.times, info.duration_s, info.height, info.width, POLICY)
    assert c.indices.tolist() == plan.indices.tolist()
    assert [frame_number(f) for f in c.frames] == plan.indices.tolist()
    assert c.timestamps == pytest.approx(tl.times[plan.indices])
    assert c.frames.shape[1:] == (plan.height, plan.width, 3)
    assert plan.height * plan.width <= POLICY.max_pixels_per_frame
    assert n * plan.height * plan.width <= POLICY.total_pixels
    assert (c.sha256, c.fingerprint) == (info.sha256, sampling.policy_fingerprint(POLICY))
    assert cache.is_fresh(out, info.sha256, sampling.policy_fingerprint(POLICY))
    assert not cache.is_fresh(out, info.sha256, sampling.policy_fingerprint(VideoConfig(fps=1.0)))
    assert not list(tmp_path.glob(".*.tmp"))


def test_cfr_cache_timestamps_and_metadata(vids, tmp_path):
    out = tmp_path / "c.npz"
    probe.probe_and_sample(vids["cfr"], POLICY, out)
    frames, meta = cache.load_frames(out)
    want = np.linspace(0, 99, 16).round().astype(int).tolist()
    assert meta["frames_indices"] == want
    assert [frame_number(f) for f in frames] == want
    assert cache.load_cached(out).timestamps == pytest.approx([i / 10 for i in want])
    assert meta == {"total_num_frames": 100, "fps": pytest.approx(10.0), "width": 112, "height": 112,
                    "duration": pytest.approx(10.0), "video_backend": "decord", "frames_indices": want}


def test_vfr_cache_is_even_in_time(vids, tmp_path):
    out = tmp_path / "v.npz"
    probe.probe_and_sample(vids["vfr"], POLICY, out)
    c = cache.load_cached(out)
    gaps = np.diff(c.timestamps)
    assert gaps.max() - gaps.min() <= 0.16 + 1e-6  # within one (long) frame of even spacing
    assert [frame_number(f) for f in c.frames] == c.indices.tolist()


def test_sample_failure_leaves_no_cache_entry(tmp_path, vids):
    bad = truncate(vids["faststart"], tmp_path / "cut.mp4")
    out = tmp_path / "frames" / "cut.npz"
    with pytest.raises(probe.ProbeError) as e:
        probe.probe_and_sample(bad, POLICY, out)
    assert e.value.reason == "truncated"
    assert not out.exists() and not list(out.parent.iterdir())


def test_cached_frames_feed_the_qwen_processor_unchanged(vids, tmp_path):
    """The cache contract: frames + metadata go into Qwen2.5-VL's video processor as they are."""
    from srvau.compat import ensure_torchvision

    ensure_torchvision()
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    out = tmp_path / "big.npz"
    probe.probe_and_sample(vids["big"], POLICY, out)
    frames, meta = cache.load_frames(out)
    vm = VideoMetadata(**meta)
    assert vm.sampled_fps == pytest.approx(frames.shape[0] / 0.75)
    proc = Qwen2VLVideoProcessor(
        min_pixels=28 * 28, max_pixels=POLICY.max_pixels_per_frame, do_sample_frames=False, cap_pixels_per_frame=False
    )
    batch = proc(videos=[frames], video_metadata=[meta], return_tensors="pt")
    t, h, w = frames.shape[:3]
    assert batch["video_grid_thw"].tolist() == [[t // 2, h // 14, w // 14]]  # no second resize

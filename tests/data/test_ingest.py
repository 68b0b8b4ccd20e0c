"""The ingest stage end to end on real files: VAU-Bench CSVs + mp4 bytes -> manifest, quarantine, cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from srvau.config import load_params
from srvau.data.ingest import MANIFEST_COLUMNS, UnsafePath, ingest, resolve_video
from srvau.cli.context import CliOptions
from srvau.cli.data import INGEST_CONTEXT_SETTINGS, ingest_cmd
from srvau.video.cache import load_cached, load_frames
from videos import frame_number, truncate, vfr_pts_ms, write_video

COLUMNS = ["Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option",
           "Key Object", "Description", "Reasoning", "Anomaly Class", "Start Time", "End Time"]
VAU_BENCH = Path("/work/shared/data/vau-bench")


def row(name: str, cls: str = "Fire", start: object = 2.0, end: object = 6.0) -> list[str]:
    return [name, "What happens?", "A fire", "A fight", "Nothing", "Rain", "A", "flames", "A fire starts.",
            "Smoke then flames.", cls, str(start), str(end)]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path


def params(**overrides):
    return load_params(overrides={"ingest.workers": 2, **overrides})


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """A video root holding the issue's bad-input matrix next to good videos, and its CSVs."""
    base = tmp_path_factory.mktemp("matrix")
    root = base / "videos"
    root.mkdir()
    outside = base / "outside"
    outside.mkdir()
    write_video(root / "demo_good.mp4", 100, fps=10)  # 10 s, B-frames
    write_video(root / "demo_normal.mp4", 40, fps=8)
    write_video(root / "demo_vfr.mp4", 40, pts_ms=vfr_pts_ms(40))
    write_video(root / "demo_big.mp4", 6, fps=8, width=1920, height=1080, preset="ultrafast")
    (root / "demo_zero.mp4").write_bytes(b"")
    truncate(write_video(base / "full.mp4", 60, gop=10), root / "demo_trunc.mp4")
    (root / "demo_random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 30000, dtype=np.uint8).tobytes())
    write_video(outside / "secret.mp4", 20)
    os.symlink(outside / "secret.mp4", root / "demo_link.mp4")
    train = write_csv(base / "train.csv", [
        row("demo_good.mp4"),
        row("demo_normal.mp4", "Normal", 0, 0),
        row("demo_vfr.mp4", "Explosion", 1, 3),
        row("demo_big.mp4", "Fighting", 0, 0.5),
        row("demo_zero.mp4"),
        row("demo_trunc.mp4"),
        row("demo_random.mp4"),
        row("demo_missing.mp4"),
        row("demo_link.mp4"),
        row("../outside/secret.mp4"),
        row(str(outside / "secret.mp4")),
        row("demo_good.mp4"),  # duplicate video name in one file
        row("demo_backwards.mp4", "Fire", 6, 2),
        row("demo_dancing.mp4", "Dancing"),
        row("demo_nan.mp4", "Fire", "abc", "7"),
    ])
    test = write_csv(base / "test.csv", [
        row("demo_good.mp4", "Fire", 2, 30),  # interval past the 10 s video
        row("demo_normal.mp4", "Normal", 0, 0),  # same video in another split: a valid second row
    ])
    extra = write_csv(base / "extra_train.csv", [row("demo_normal.mp4", "Normal", 0, 0)])  # train again
    return {"base": base, "root": root, "csvs": [train, test, extra]}


@pytest.fixture(scope="module")
def result(matrix):
    return ingest(matrix["csvs"], matrix["root"], matrix["base"] / "out", params())


EXPECTED_QUARANTINE = {
    "demo_zero.mp4": "zero_byte",
    "demo_trunc.mp4": "unreadable",
    "demo_random.mp4": "unreadable",
    "demo_missing.mp4": "missing",
    "demo_link.mp4": "unsafe_path",
    "../outside/secret.mp4": "unsafe_video_name",
    "demo_backwards.mp4": "end_before_start",
    "demo_dancing.mp4": "unknown_class",
    "demo_nan.mp4": "non_numeric_time",
}


def test_bad_input_matrix_lands_in_quarantine(result, matrix):
    lines = [json.loads(x) for x in result.quarantine_path.read_text().splitlines()]
    assert lines == json.loads(json.dumps(result.quarantine, default=str))
    assert all({"what", "why", "detail"} <= set(q) and q["why"] and q["detail"] for q in lines)
    by_name = {}
    for q in lines:
        by_name.setdefault(q["video_name"], []).append(q["why"])
    for name, why in EXPECTED_QUARANTINE.items():
        assert by_name.get(name) == [why], (name, by_name.get(name))
    absolute = str(matrix["base"] / "outside" / "secret.mp4")
    assert by_name[absolute] == ["unsafe_video_name"]
    # duplicate in one file (importer), duplicate (video, split) across files (ingest), interval past end
    assert sorted(by_name["demo_good.mp4"]) == ["duplicate_video_name", "interval_past_duration"]
    assert by_name["demo_normal.mp4"] == ["duplicate_video_id"]
    dup = next(q for q in lines if q["why"] == "duplicate_video_id")
    assert dup["source"].endswith("extra_train.csv") and "train.csv line 3" in dup["detail"]
    assert len(lines) == 13
    assert result.counts["quarantined"] == 13 and result.counts["quarantined_unreadable"] == 2


def test_the_rest_is_ingested(result, matrix):
    m = pd.read_parquet(result.manifest_path)
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert sorted(zip(m["video_id"], m["split"])) == [
        ("demo/big", "train"), ("demo/good", "train"), ("demo/normal", "test"), ("demo/normal", "train"),
        ("demo/vfr", "train")]
    assert not result.failed and result.exit_code == 0
    good = m.set_index(["video_id", "split"]).loc[("demo/good", "train")]
    assert good["path"] == "demo_good.mp4"
    assert (good["num_frames"], good["width"], good["height"], good["codec"]) == (100, 112, 112, "h264")
    assert good["fps"] == pytest.approx(10.0) and good["duration_s"] == pytest.approx(10.0)
    assert good["frames_path"].startswith("frames/") and not Path(good["frames_path"]).is_absolute()
    assert (result.manifest_path.parent / good["frames_path"]).is_file()
    # every row accounted for: kept + quarantined == read
    assert result.counts["rows_read"] == len(m) + result.counts["quarantined"]
    # each video file decoded once, however many rows use it
    assert result.counts["videos_ingested"] == 4 == result.counts["videos_decoded"]
    assert len(list((result.manifest_path.parent / "frames").iterdir())) == 4
    assert result.counts["frames_cached"] == int(m.drop_duplicates("path")["sampled_frames"].sum())


def test_large_resolution_comes_out_inside_the_pixel_budget(result):
    m = pd.read_parquet(result.manifest_path).set_index("video_id")
    big = m.loc["demo/big"]
    assert (big["width"], big["height"]) == (1920, 1080)
    pol = load_params().video
    frames, _ = load_frames(result.manifest_path.parent / big["frames_path"])
    t, h, w, _ = frames.shape
    assert (h, w) == (big["frame_height"], big["frame_width"])
    assert h % 28 == 0 and w % 28 == 0
    assert h * w <= pol.max_pixels_per_frame and (t + t % 2) * h * w <= pol.total_pixels


def test_variable_frame_rate_flagged_and_sampled_in_time(result):
    m = pd.read_parquet(result.manifest_path).set_index("video_id")
    assert bool(m.loc["demo/vfr", "vfr"]) and not bool(m.loc["demo/good", "vfr"])
    c = load_cached(result.manifest_path.parent / m.loc["demo/vfr", "frames_path"])
    assert [frame_number(f) for f in c.frames] == c.indices.tolist()
    assert np.ptp(np.diff(c.timestamps)) <= 0.16 + 1e-6


def test_cached_frames_are_the_requested_frames(result):
    m = pd.read_parquet(result.manifest_path).drop_duplicates("video_id").set_index("video_id")
    frames, meta = load_frames(result.manifest_path.parent / m.loc["demo/good", "frames_path"])
    want = np.linspace(0, 99, 16).round().astype(int).tolist()  # 10 s at 2 fps = 20 -> max_frames 16
    assert meta["frames_indices"] == want
    assert [frame_number(f) for f in frames] == want
    assert load_cached(result.manifest_path.parent / m.loc["demo/good", "frames_path"]).timestamps == pytest.approx(
        [i / 10 for i in want])


def warm_copy(result, dest: Path) -> Path:
    """A copy of the matrix run's output folder: its cache entries are reused, so reruns are quick."""
    shutil.copytree(result.manifest_path.parent, dest)
    return dest


def test_strict_fails_but_writes_outputs(matrix, result, tmp_path):
    res = ingest(matrix["csvs"], matrix["root"], warm_copy(result, tmp_path / "out"), params(), strict=True)
    assert res.failed and res.exit_code == 1 and "strict" in res.failure
    assert len(pd.read_parquet(res.manifest_path)) == 5 and res.quarantine_path.stat().st_size > 0


def test_nothing_valid_fails(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "demo_zero.mp4").write_bytes(b"")
    csv_path = write_csv(tmp_path / "train.csv", [row("demo_zero.mp4"), row("demo_gone.mp4")])
    res = ingest([csv_path], root, tmp_path / "out", params())
    assert res.failed and res.failure == "no valid row remains"
    assert pd.read_parquet(res.manifest_path).empty
    assert [q["why"] for q in res.quarantine] == ["zero_byte", "missing"]


def test_real_vau_bench_csv_without_videos_reports_every_row(tmp_path):
    (tmp_path / "videos").mkdir()
    res = ingest([VAU_BENCH / "ucf_subset_val.csv"], tmp_path / "videos", tmp_path / "out", params())
    assert res.counts["rows_read"] == 299 and res.counts["quarantined_missing"] == 299
    assert res.failed and len(res.quarantine_path.read_text().splitlines()) == 299


def test_missing_annotation_file_is_a_config_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "nope.csv"], tmp_path, tmp_path / "out", params())


def test_not_a_vau_bench_csv_is_quarantined(matrix, tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    res = ingest([junk, matrix["csvs"][1]], matrix["root"], tmp_path / "out", params())
    assert [q["why"] for q in res.quarantine][0] == "bad_annotation_file"
    assert not res.failed


def test_resolve_video_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "ucf").mkdir(parents=True)
    (root / "ucf" / "a.mp4").write_bytes(b"x")
    (tmp_path / "out.mp4").write_bytes(b"x")
    os.symlink(tmp_path, root / "up")  # a folder link leading out
    os.symlink(root / "ucf" / "a.mp4", root / "inside.mp4")  # a link that stays inside is fine
    for bad in ["../out.mp4", "/etc/passwd", "C:\\x.mp4", "up/out.mp4", "a/../../out.mp4", ""]:
        with pytest.raises(UnsafePath):
            resolve_video(root, bad)
    assert resolve_video(root, "a.mp4", "ucf") == ((root / "ucf" / "a.mp4").resolve(), "ucf/a.mp4")
    assert resolve_video(root, "inside.mp4")[1] == "inside.mp4"
    with pytest.raises(FileNotFoundError):
        resolve_video(root, "b.mp4", "ucf")


# --- degenerate inputs ----------------------------------------------------------------------------


def write_1px_video(path: Path, num_frames: int = 16, fps: int = 8) -> Path:
    """A real 1x1 H.264 mp4 (yuv444p: 4:2:0 chroma needs even sizes, tests/videos.py writes 4:2:0)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 1
        stream.pix_fmt = "yuv444p"
        for i in range(num_frames):
            rgb = np.full((1, 1, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    """Degenerate files that FFmpeg opens and decodes fine, next to clips at and above the thresholds."""
    base = tmp_path_factory.mktemp("degenerate")
    root = base / "videos"
    root.mkdir()
    write_1px_video(root / "demo_1px.mp4")
    write_video(root / "demo_2px.mp4", 16, fps=8, width=2, height=2)
    write_png(root / "demo_png.mp4")  # a PNG renamed .mp4
    write_video(root / "demo_still.mp4", 1, fps=8)  # one frame
    write_video(root / "demo_short.mp4", 3, fps=10)  # 0.3 s
    write_video(root / "demo_edge.mp4", 5, fps=10, width=28, height=28)  # exactly at every threshold
    write_video(root / "demo_clip.mp4", 64, fps=8)  # the demo's clips: 112x112, 8 s at 8 fps
    names = ["demo_1px.mp4", "demo_2px.mp4", "demo_png.mp4", "demo_still.mp4", "demo_short.mp4", "demo_edge.mp4"]
    csv_path = write_csv(base / "train.csv", [row(n, "Normal", 0, 0) for n in names] + [row("demo_clip.mp4")])
    return {"base": base, "root": root, "csv": csv_path}


def test_degenerate_videos_are_quarantined_with_reasons(degenerate):
    res = ingest([degenerate["csv"]], degenerate["root"], degenerate["base"] / "out", params())
    why = {q["video_name"]: q["why"] for q in res.quarantine}
    assert why == {
        "demo_1px.mp4": "too_small",
        "demo_2px.mp4": "too_small",
        "demo_png.mp4": "image_not_video",
        "demo_still.mp4": "too_few_frames",
        "demo_short.mp4": "too_short",
    }
    details = {q["video_name"]: q["detail"] for q in res.quarantine}
    assert "1x1" in details["demo_1px.mp4"] and "png" in details["demo_png.mp4"]
    assert sorted(pd.read_parquet(res.manifest_path)["video_id"]) == ["demo/clip", "demo/edge"]
    # rejected videos leave nothing in the frame cache
    assert len(list((degenerate["base"] / "out" / "frames").iterdir())) == 2


def test_thresholds_apply_to_reused_cache_entries(degenerate, tmp_path):
    csv_path = write_csv(tmp_path / "train.csv", [row("demo_edge.mp4", "Normal", 0, 0), row("demo_clip.mp4")])
    out = tmp_path / "out"
    first = ingest([csv_path], degenerate["root"], out, params())
    assert sorted(first.manifest["video_id"]) == ["demo/clip", "demo/edge"]
    stricter = ingest([csv_path], degenerate["root"], out, params(**{"ingest.min_duration_s": 1.0}))
    assert stricter.counts["videos_decoded"] == 0  # both frame-cache entries were fresh: the reuse path
    assert {q["video_name"]: q["why"] for q in stricter.quarantine}["demo_edge.mp4"] == "too_short"
    assert list(stricter.manifest["video_id"]) == ["demo/clip"]


# --- re-runs: the cache ---------------------------------------------------------------------------


def test_rerun_decodes_nothing_then_only_what_changed(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(3):
        write_video(root / f"demo_v{i}.mp4", 30 + 10 * i, fps=10)
    csv_path = write_csv(tmp_path / "train.csv", [row(f"demo_v{i}.mp4", "Fire", 0.5, 2) for i in range(3)])
    out = tmp_path / "out"

    first = ingest([csv_path], root, out, params())
    assert (first.counts["videos_decoded"], first.counts["videos_reused"]) == (3, 0)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}

    second = ingest([csv_path], root, out, params())
    assert (second.counts["videos_decoded"], second.counts["videos_reused"]) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(first.manifest_path), pd.read_parquet(second.manifest_path))

    write_video(root / "demo_v1.mp4", 45, fps=10)  # new bytes under the same name
    third = ingest([csv_path], root, out, params())
    assert (third.counts["videos_decoded"], third.counts["videos_reused"]) == (1, 2)
    m = pd.read_parquet(third.manifest_path).set_index("video_id")
    assert m.loc["demo/v1", "num_frames"] == 45

    fourth = ingest([csv_path], root, out, params(**{"video.fps": 1.0}))  # new policy: everything again
    assert fourth.counts["videos_decoded"] == 3

    write_csv(csv_path, [row("demo_v0.mp4", "Fire", 0.5, 2)])  # fewer rows: stale entries pruned
    fifth = ingest([csv_path], root, out, params(**{"video.fps": 1.0}))
    assert fifth.counts["videos_decoded"] == 0
    assert len(list((out / "frames").iterdir())) == 1


# --- CLI ------------------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = CliOptions(overrides=["ingest.workers=2"])

    app.command("ingest", context_settings=INGEST_CONTEXT_SETTINGS)(ingest_cmd)
    return app


def test_cli_takes_several_annotation_files_after_one_flag(matrix, result, tmp_path):
    train, test, extra = (str(p) for p in matrix["csvs"])
    for name in ("o", "o2", "o3"):
        warm_copy(result, tmp_path / name)
    args = ["ingest", "--annotations", train, test, "--video-root", str(matrix["root"]), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["rows"] == 5 and counts["quarantined_missing"] == 1 and "quarantined_duplicate_video_id" not in counts
    assert counts["videos_reused"] == 4 and counts["videos_decoded"] == 0
    # the counts and the quarantine file reach MLflow (issue 3 item 4)
    import mlflow

    run = mlflow.last_active_run()
    assert run.data.metrics["ingest.rows"] == 5 and run.data.metrics["ingest.quarantined_missing"] == 1
    assert "ingest/quarantine.jsonl" in [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "ingest")]

    # repeated flag and comma lists are the same thing
    args = ["ingest", "--annotations", f"{train},{test}", "--annotations", extra,
            "--video-root", str(matrix["root"]), "--out", str(tmp_path / "o2")]
    res = CliRunner().invoke(_app(), args)
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.exit_code == 0 and counts["rows"] == 5 and counts["quarantined_duplicate_video_id"] == 1

    res = CliRunner().invoke(_app(), [*args[:-1], str(tmp_path / "o3"), "--strict"])
    assert res.exit_code == 1

    res = CliRunner().invoke(_app(), ["ingest", "--annotations", str(tmp_path / "nope.csv"),
                                      "--video-root", str(matrix["root"]), "--out", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "not found" in res.output


def test_cli_nothing_valid_exits_1(tmp_path):
    root = tmp_path / "v"
    root.mkdir()
    csv_path = write_csv(tmp_path / "train.csv", [row("demo_gone.mp4")])
    res = CliRunner().invoke(_app(), ["ingest", "--annotations", str(csv_path), "--video-root", str(root),
                                      "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no valid row" in res.output


def test_the_manifest_is_the_same_in_every_checkout(demo_dir, tmp_path):
    """manifest.parquet is a DVC output: two checkouts of one project ingesting the same files must write
    the same bytes. It recorded each CSV's absolute path, so every clone got its own manifest hash."""
    import subprocess
    import sys

    from srvau.config import PROJECT_ROOT

    srvau = Path(sys.executable).parent / "srvau"
    rows = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False).head(2)
    manifests = []
    for checkout in ("one", "two"):
        root = tmp_path / checkout / "project"
        (root / "data" / "videos").mkdir(parents=True)
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(PROJECT_ROOT / name, root / name)
        rows.to_csv(root / "data" / "train.csv", index=False)
        for video in rows["Video Name"]:
            shutil.copy(demo_dir / "videos" / video, root / "data" / "videos" / video)
        proc = subprocess.run(
            [str(srvau), "ingest", "--annotations", str(root / "data" / "train.csv"),  # absolute, as the stage passes them
             "--video-root", str(root / "data" / "videos"), "--out", str(root / "data" / "ingest")],
            cwd=root, env={**os.environ, "SRVAU_ROOT": str(root), "SRVAU_PROGRESS": "0"},
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        manifest = pd.read_parquet(root / "data" / "ingest" / "manifest.parquet")
        assert set(manifest["source_csv"]) == {"data/train.csv"}
        manifests.append((root / "data" / "ingest" / "manifest.parquet").read_bytes())
    assert manifests[0] == manifests[1]

"""DVC sees what a recipe sets: its data, its values, its overrides (a project copy, real `dvc`).

A recipe on its own data (not the demo's folder): after a real CSV row, a real video or a value inside
the recipe changes, `dvc status` reports `ingest` changed; the demo-only stages are not in its DAG;
`dvc exp run -S recipe=... -S key=value` records the value it ran with, and the stage ran with it.
Regression: ingest depended on data/demo whatever the recipe named, DVC tracked the recipe's *file
name* only, and `-S` lost silently to the recipe's own value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from services import project_copy

BIN = Path(sys.executable).parent
RECIPE = """# @package _global_
recipe: mini
demo_stages: {synth: [], build_tiny: []}
set_by: {demo_stages: configs/recipe/mini.yaml, ingest: configs/recipe/mini.yaml, video: configs/recipe/mini.yaml}
ingest:
  annotations: [data/real/train.csv, data/real/val.csv, data/real/test.csv]
  annotations_dir: data/real
  video_root: data/real/videos
video:
  max_frames: 8
"""


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SRVAU_ROOT": str(root),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "SRVAU_PROGRESS": "0"}


def _run(root: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 or not ok, (res.stdout + res.stderr)[-4000:]
    return res


def _status(root: Path, stage: str) -> dict:
    return json.loads(_run(root, str(BIN / "dvc"), "status", "--json", stage).stdout or "{}")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = project_copy(tmp_path_factory.mktemp("recipe-dvc"))
    (root / "configs" / "recipe" / "mini.yaml").write_text(RECIPE)
    srvau = str(BIN / "srvau")
    _run(root, srvau, "--set", "synth.n_train=3", "--set", "synth.n_val=1", "--set", "synth.n_test=2",
         "data", "synth", "--out", "data/real")  # a small dataset outside the demo folder
    _run(root, srvau, "--recipe", "mini", "config", "compose")
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "mini"]):
        _run(root, *cmd)
    _run(root, str(BIN / "dvc"), "repro", "ingest")
    assert _status(root, "ingest") == {}
    return root


def test_the_recipe_pipeline_has_no_demo_only_stages(project):
    stages = _run(project, str(BIN / "dvc"), "stage", "list", "--name-only").stdout.split()
    assert "ingest" in stages and not [s for s in stages if s.startswith(("synth", "build_tiny"))]


def test_a_changed_csv_or_video_marks_ingest(project):
    csv, video = project / "data/real/test.csv", next((project / "data/real/videos").glob("*.mp4"))
    for path, change in ((csv, lambda b: b + b.splitlines(keepends=True)[-1]), (video, lambda b: b[:-100])):
        before = path.read_bytes()
        path.write_bytes(change(before))
        try:
            changed = _status(project, "ingest")
            assert "ingest" in changed, f"{path.name} changed, ingest reported up to date"
        finally:
            path.write_bytes(before)
        assert _status(project, "ingest") == {}


def test_a_value_inside_the_recipe_marks_the_stages_reading_it(project):
    recipe = project / "configs/recipe/mini.yaml"
    before = recipe.read_text()
    recipe.write_text(before.replace("max_frames: 8", "max_frames: 4"))
    try:
        changed = _status(project, "ingest")  # before any recomposition of params.yaml
        assert changed == {"ingest": [{"changed deps": {"configs/recipe/mini.yaml": {"video": "modified"}}}]}
        assert "ingest" not in _status(project, "register")  # register reads no video
    finally:
        recipe.write_text(before)
    assert _status(project, "ingest") == {}


@pytest.mark.slow
def test_dvc_exp_run_records_and_runs_the_override(project):
    """`-S video.max_frames=6` beats the recipe's 8: params.yaml, dvc.lock and the frames agree."""
    _run(project, str(BIN / "dvc"), "exp", "run", "-S", "recipe=mini", "-S", "video.max_frames=6", "ingest")
    composed = yaml.safe_load((project / "params.yaml").read_text())
    assert composed["recipe"] == "mini" and composed["video"]["max_frames"] == 6
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["params"]["params.yaml"]
    assert lock["video"]["max_frames"] == 6
    manifest = pd.read_parquet(project / "data/ingest/manifest.parquet")
    assert set(manifest["sampled_frames"]) == {6}  # the recipe alone samples 8

"""The ``srvau`` CLI package: entry points, no import cycle, commands named in messages exist, and
params checked before any model loads (real invocations: CliRunner and subprocesses)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from srvau.cli import app
from srvau.config import PROJECT_ROOT

SRVAU = Path(sys.executable).parent / "srvau"
PACKAGE = PROJECT_ROOT / "srvau"


def _commands() -> dict[str, set[str]]:
    """Top-level command -> its sub-commands (empty for a plain command), as the app registers them."""
    import typer.main

    root = typer.main.get_command(app)
    return {name: set(getattr(cmd, "commands", {}) or ()) for name, cmd in root.commands.items()}


def test_every_command_is_registered_under_its_old_name():
    before = {
        "config": {"show"}, "data": {"synth", "import-vau-bench"}, "model": {"build-tiny"},
        "eval": {"predictions"}, "registry": {"promote"},
        "ingest": set(), "cot": set(), "validate": set(), "sft": set(), "grpo": set(), "evaluate": set(),
        "register": set(),
    }
    now = _commands()
    assert {name: now.get(name, set()) >= subs and (name in now) for name, subs in before.items()} == dict.fromkeys(before, True)


def test_python_dash_m_and_the_entry_point_both_run():
    """``python -m srvau.cli`` is what ``accelerate launch -m srvau.cli`` runs on every rank."""
    for cmd in ([sys.executable, "-m", "srvau.cli", "--help"], [str(SRVAU), "--help"]):
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "evaluate" in proc.stdout and "register" in proc.stdout


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_stage_modules_never_import_the_cli():
    """The CLI imports the stages, never the reverse (lazy imports inside functions count too)."""
    offenders = sorted(
        str(f.relative_to(PROJECT_ROOT))
        for f in PACKAGE.rglob("*.py")
        if "cli" not in f.relative_to(PACKAGE).parts[:1]
        and any(m == "srvau.cli" or m.startswith("srvau.cli.") for m in _imports(f))
    )
    assert not offenders, f"stage modules importing srvau.cli: {offenders}"
    # and no stage-side CLI module is left outside the package
    assert not [f for f in PACKAGE.rglob("*cli*.py") if "cli" not in f.relative_to(PACKAGE).parts[:1]]


def test_commands_named_in_messages_exist():
    """Every `srvau <command> [<sub>]` quoted in the package's messages and docstrings is a real command."""
    commands = _commands()
    unknown = set()
    for f in PACKAGE.rglob("*.py"):
        for cmd, sub in re.findall(r"`srvau ([a-z][\w-]*)(?: ([a-z][\w-]*))?", f.read_text()):
            if cmd not in commands or (commands[cmd] and sub not in commands[cmd]):
                unknown.add(f"{f.relative_to(PROJECT_ROOT)}: srvau {cmd} {sub}".strip())
    assert not unknown, sorted(unknown)


def test_a_bad_reward_is_named_before_anything_loads():
    runner = CliRunner()
    res = runner.invoke(app, ["--set", "grpo.reward_options.length.foo=1", "config", "show"])
    assert res.exit_code == 2 and "grpo.reward_options.length" in res.stderr and "foo" in res.stderr
    res = runner.invoke(app, ["--set", "grpo.reward_funcs.bogus=1", "grpo"])
    assert res.exit_code == 2, res.output
    assert "grpo.reward_funcs" in res.stderr and "bogus" in res.stderr


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_a_bad_scheduler_exits_2_in_seconds_naming_the_key(stage, tmp_path):
    """Before, a typo here passed validation and failed ~35 s later, after the model had loaded."""
    rocot = tmp_path / "rocot"
    rocot.mkdir()
    (rocot / "train.parquet").write_bytes(b"")  # past the input check: only the params can stop it
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK")}
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(SRVAU), "--set", f"{stage}.lr_scheduler_type=bogus", stage, "--rocot", str(rocot), "--out", str(tmp_path / "out")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{stage}.lr_scheduler_type" in proc.stderr and "bogus" in proc.stderr
    assert elapsed < 30, f"{elapsed:.0f} s"  # the import of transformers, not a model load
    assert not (tmp_path / "out").exists()


def test_a_stage_command_opens_its_run_once(tmp_path, monkeypatch):
    """``srvau data synth``: the CLI's run (tagged with the stage) holds the stage's metrics."""
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import configure

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    exp = f"cli-{os.getpid()}-{time.time_ns()}"
    sets = ["--set", f"tracking.experiment={exp}", "--set", "synth.n_train=1", "--set", "synth.n_val=1",
            "--set", "synth.n_test=1", "--set", f"paths.reports={tmp_path / 'reports'}"]
    res = CliRunner().invoke(app, [*sets, "data", "synth", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "demo" / "train.csv").is_file()
    configure(load_params(overrides={"tracking.experiment": exp}))
    (run,) = mlflow.search_runs(experiment_names=[exp], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["srvau.stage"] == "synth"
    assert run.data.metrics["synth.videos.train"] == 1.0


def test_stage_timings_go_where_srvau_timings_file_says(tmp_path, monkeypatch):
    """Regression: tests that ran stage commands from the checkout appended their timings to the
    checkout's own reports/tracking/timings.jsonl (11 records after one `make test`)."""
    import json

    from srvau.cli.context import TIMINGS_FILE, stage_timing
    from srvau.config import load_params

    p = load_params(overrides={"paths.reports": str(tmp_path / "reports")})
    redirected = tmp_path / "session" / "timings.jsonl"
    monkeypatch.setenv("SRVAU_TIMINGS_FILE", str(redirected))
    with stage_timing(p, "ingest"):
        pass
    assert [json.loads(line)["stage"] for line in redirected.read_text().splitlines()] == ["ingest"]
    assert not (tmp_path / "reports" / TIMINGS_FILE).exists()
    monkeypatch.delenv("SRVAU_TIMINGS_FILE")
    with stage_timing(p, "cot"):
        pass
    assert json.loads((tmp_path / "reports" / TIMINGS_FILE).read_text())["stage"] == "cot"

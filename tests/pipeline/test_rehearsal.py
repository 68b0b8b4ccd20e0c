"""The paper recipe rehearsed on CPU (configs/recipe/rehearsal.yaml), and what a recipe leaves out of the flow.

The rehearsal builds a VAU-Bench folder from the real annotation CSVs (tests/conftest.py's
SHARED_VAU_BENCH), writes placeholder mp4s for a few rows of each file (``srvau data placeholders``),
then runs every stage through the CLI with ``--recipe rehearsal``: SFT, GRPO and
evaluation as two real gloo ranks. Rows are chosen by what they hold (an anomaly interval, a video
name in no other file), never by name, so other copies of the CSVs work as well.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from srvau.config import PROJECT_ROOT, load_params

RECIPE = "rehearsal"
BIN = Path(sys.executable).parent
TRAIN_VIDEOS, OTHER_VIDEOS = 4, 2  # placeholders per train CSV / per val or test CSV
SHORT_S = 60.0  # rows whose interval ends by then come first: their placeholders stay small


# ----------------------------------------------------------------------------- the rehearsal folder


def _has_interval(df: pd.DataFrame) -> pd.Series:
    start, end = pd.to_numeric(df["Start Time"], errors="coerce"), pd.to_numeric(df["End Time"], errors="coerce")
    return (start >= 0) & (end > start)


def _short_first(df: pd.DataFrame, intervals_first: bool = False) -> pd.DataFrame:
    """Rows whose interval (if any) ends early first; with ``intervals_first`` anomaly rows lead."""
    end = pd.to_numeric(df["End Time"], errors="coerce").fillna(0)
    key = (end > SHORT_S).astype(int) * 2 + ((~_has_interval(df)).astype(int) if intervals_first else 0)
    return df.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k")


def _bare_names(df: pd.DataFrame) -> pd.DataFrame:
    """Test CSVs carry no dataset prefix: ingest then finds the video under <dataset>/ (the file names it)."""
    from srvau.data.vau_bench import split_prefix

    return df.assign(**{"Video Name": [split_prefix(n)[1] for n in df["Video Name"]]})


def build_rehearsal_folder(root: Path, src: Path) -> Path:
    """``root/data/rehearsal``: the seven files the rehearsal recipe names, from the three public CSVs.

    The VAU-Bench train.csv (MSAD + ECVA intervals) is not public in the code repositories: val.csv's
    rows whose video is in no other file (its MSAD and ECVA part) stand in for it, half of them, the
    other half standing in for the MSAD and ECVA test files; val.csv keeps the rows it shares with
    ucf_subset_val.csv (ingest quarantines them as in-split duplicates, as with the real files). Half
    of ucf_subset_train.csv stands in for test_ucf_crime.csv. No video is in two splits.
    """
    from srvau.data.vau_bench import split_prefix

    folder = root / "data" / "rehearsal"
    folder.mkdir(parents=True)
    read = lambda name: pd.read_csv(src / name, dtype=str, keep_default_na=False)  # noqa: E731
    val, ucf_train, ucf_val = read("val.csv"), read("ucf_subset_train.csv"), read("ucf_subset_val.csv")
    shared = val["Video Name"].isin(set(ucf_train["Video Name"]) | set(ucf_val["Video Name"]))
    own = val[~shared].reset_index(drop=True)
    train_part, test_part = own.iloc[::2], own.iloc[1::2]
    files = {
        "train.csv": _short_first(train_part, intervals_first=True),
        "val.csv": val[shared],
        "ucf_subset_train.csv": ucf_train.iloc[::2],
        "ucf_subset_val.csv": ucf_val,
        "test_ucf_crime.csv": _bare_names(ucf_train.iloc[1::2]),
    }
    prefix = test_part["Video Name"].map(lambda n: split_prefix(n)[0])
    for dataset in ("msad", "ecva"):
        files[f"test_{dataset}.csv"] = _bare_names(_short_first(test_part[prefix == dataset]))
    for name, df in files.items():
        assert len(df), f"no row for {name}"
        df.to_csv(folder / name, index=False)
    return folder


def _project(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A project folder (params.yaml + configs/) in tmp, and the environment every command gets:
    paths in the recipe resolve under it (SRVAU_ROOT), MLflow tracks into its own sqlite file."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp / "params.yaml")
    shutil.copytree(PROJECT_ROOT / "configs", tmp / "configs", dirs_exist_ok=True)  # --recipe composes from here
    env = {**os.environ, "SRVAU_ROOT": str(tmp), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    env.pop("SRVAU_RECIPE", None)
    return tmp, env


def _cli(args: list[str], ranks: int = 1) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "srvau.cli", *args]
    # two real gloo ranks on CPU: a MULTI_GPU config forced to CPU (`--cpu` would run one process)
    return [str(BIN / "accelerate"), "launch", "--config_file", str(PROJECT_ROOT / "configs/accelerate/ddp.yaml"),
            "--num_processes", str(ranks), "-m", "srvau.cli", *args]


def _run(root: Path, env: dict, args: list[str], ranks: int = 1, ok: bool = True, timeout: int = 600):
    e = {**env, "ACCELERATE_USE_CPU": "true"} if ranks > 1 else env
    t0 = time.monotonic()
    res = subprocess.run(_cli(args, ranks), env=e, cwd=root, capture_output=True, text=True, timeout=timeout)
    print(f"{' '.join(args)[-70:]} x{ranks}: exit {res.returncode} in {time.monotonic() - t0:.0f} s")
    if ok:
        assert res.returncode == 0, f"{args} exit {res.returncode}:\n{(res.stdout + res.stderr)[-6000:]}"
    return res


def _placeholders(root: Path, env: dict, folder: Path) -> None:
    train = sorted(folder.glob("*train*.csv"))
    others = sorted(set(folder.glob("*.csv")) - set(train))
    for csvs, n in ((train, TRAIN_VIDEOS), (others, OTHER_VIDEOS)):
        args = ["data", "placeholders", *[x for c in csvs for x in ("--csv", str(c))],
                "--out", str(folder / "videos"), "--limit-per-csv", str(n)]
        _run(root, env, args)


# ----------------------------------------------------------------------------- placeholders (fast)


def test_placeholders_sit_where_ingest_finds_them_and_hold_their_intervals(tmp_path, vau_bench_dir):
    """Prefixed names at the root, a test file's bare names (no extension either) under <dataset>/, a
    clip as long as its interval even past an hour, the same bytes twice; ingest keeps every row
    that has a placeholder and quarantines the others as missing."""
    from srvau.data.ingest import ingest
    from srvau.data.placeholders import write_placeholders

    val = pd.read_csv(vau_bench_dir / "val.csv", dtype=str, keep_default_na=False)
    with_interval = val[_has_interval(val)]
    end = pd.to_numeric(with_interval["End Time"])
    longest = with_interval[end == end.max()].head(1)  # VAU-Bench has intervals past an hour
    train = pd.concat([with_interval[end <= SHORT_S].head(2), longest, val[~_has_interval(val)].head(1),
                       with_interval[end <= SHORT_S].iloc[2:4]])
    train.to_csv(tmp_path / "train.csv", index=False)
    msad = val[val["Video Name"].str.startswith("msad_")].head(3)
    bare = _bare_names(msad).assign(**{"Video Name": lambda d: d["Video Name"].str.replace(".mp4", "", regex=False)})
    bare.to_csv(tmp_path / "test_msad.csv", index=False)
    csvs = [tmp_path / "train.csv", tmp_path / "test_msad.csv"]

    counts = write_placeholders(csvs, tmp_path / "videos", limit_per_csv=4)
    assert counts == {"written": 4 + 3, "kept": 0}
    assert sorted(p.name for p in (tmp_path / "videos" / "msad").iterdir()) == sorted(bare["Video Name"])
    first = {p: p.read_bytes() for p in (tmp_path / "videos").rglob("*") if p.is_file()}
    shutil.rmtree(tmp_path / "videos")
    write_placeholders(csvs, tmp_path / "videos", limit_per_csv=4)
    assert {p: p.read_bytes() for p in (tmp_path / "videos").rglob("*") if p.is_file()} == first

    params = load_params(overrides={"ingest.workers": 2})
    result = ingest(csvs, tmp_path / "videos", tmp_path / "ingest", params)
    m = result.manifest
    assert len(m) == 4 + 3 and set(m["split"]) == {"train", "test"}
    assert (m.loc[m["interval_kind"] == "anomaly", "end_s"] <= m.loc[m["interval_kind"] == "anomaly", "duration_s"]).all()
    assert m["duration_s"].max() >= float(longest["End Time"].iloc[0])
    assert set(result.reasons) == {"missing"} and result.reasons["missing"] == 2  # the rows past the limit


def test_placeholders_cli_rejects_a_missing_csv(tmp_path):
    res = subprocess.run(_cli(["data", "placeholders", "--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]),
                         capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert res.returncode == 2 and "not found" in res.stderr


# ----------------------------------------------------------------------------- the flow under a recipe


def test_a_recipe_on_real_data_leaves_the_demo_only_stages_out():
    """Stage selection only (no stage runs): the paper recipe turns both demo-only stages off, the
    rehearsal (whose base is the tiny model) keeps build_tiny, the demo keeps both."""
    from flows.pipeline import stages_off

    assert set(stages_off(load_params(recipe="paper-3b"))) == {"synth", "build_tiny"}
    assert set(stages_off(load_params(recipe=RECIPE))) == {"synth"}
    assert stages_off(load_params()) == {}


# ----------------------------------------------------------------------------- the gate on real CSVs


@pytest.mark.slow  # about a minute on 2 cores: keeps `make test` under its 15-minute budget
def test_ucf_subset_train_alone_fails_the_grounding_gate(tmp_path, vau_bench_dir):
    """ucf_subset_train.csv holds no anomaly interval: with it as the only train file, validate stops
    (exit 1) naming the train grounding floor, even with every other check of the rehearsal met."""
    root, env = _project(tmp_path)
    folder = build_rehearsal_folder(root, vau_bench_dir)
    keep = ["ucf_subset_train.csv", "ucf_subset_val.csv", "test_ucf_crime.csv"]
    for csv in folder.glob("*.csv"):
        if csv.name not in keep:
            csv.unlink()
    _placeholders(root, env, folder)
    sets = ["--recipe", RECIPE, "--set", f"ingest.annotations=[{', '.join(f'data/rehearsal/{k}' for k in keep)}]"]
    _run(root, env, [*sets, "ingest"])
    _run(root, env, [*sets, "cot"])
    res = _run(root, env, [*sets, "validate"], ok=False)
    floor = load_params(recipe=RECIPE).validate_.min_train_anomaly_intervals
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"train grounding has fewer than {floor} anomaly intervals" in res.stderr
    assert json.loads(res.stdout)["success"] is False


# ----------------------------------------------------------------------------- the rehearsal


def _kill_job(pid: int) -> None:
    """SIGKILL a launcher and everything under it, as a scheduler ending the job does. Its process
    group is not enough: torch's elastic agent starts every rank in a session of its own, so a SIGKILL
    to the launcher's group leaves the ranks training on, orphaned."""
    import psutil

    launcher = psutil.Process(pid)
    for proc in [*launcher.children(recursive=True), launcher]:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass


def _kill_after_first_checkpoint(root: Path, env: dict, args: list[str], ckpts: Path) -> int:
    """Start ``args`` on two ranks, SIGKILL the launcher and every rank (each rank's process group)
    once a checkpoint is complete; returns the newest complete checkpoint's step."""
    import psutil

    from srvau.training.checkpoints import last_complete, step_of

    proc = subprocess.Popen(_cli(args, 2), env={**env, "ACCELERATE_USE_CPU": "true"}, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list(ckpts.glob("checkpoint-*/trainer_state.json")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before a checkpoint could be killed:\n" + proc.stderr.read()[-4000:]
        ranks = psutil.Process(proc.pid).children(recursive=True)
        assert len([r for r in ranks if "srvau.cli" in " ".join(r.cmdline())]) == 2, "expected two rank processes"
        _kill_job(proc.pid)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, f"ranks outlived the kill: {alive}"
    finally:
        if proc.poll() is None:
            _kill_job(proc.pid)
            proc.wait(timeout=60)
    return step_of(last_complete(ckpts))


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.slow
def test_paper_recipe_rehearsal_on_two_cpu_ranks(tmp_path, vau_bench_dir):
    """ingest -> cot -> validate -> sft -> grpo -> evaluate under the rehearsal recipe, SFT/GRPO/evaluate
    on two gloo ranks: every step exits 0, each stage is one MLflow run (SFT's killed run marked
    KILLED beside it), SFT resumes after its process group is killed, each merged model is written
    once, loads, and differs from the base; the two-rank evaluation equals a one-process one."""
    import mlflow
    import torch

    from srvau.modeling.loading import load_model

    root, env = _project(tmp_path)
    folder = build_rehearsal_folder(root, vau_bench_dir)
    _placeholders(root, env, folder)
    rec = ["--recipe", RECIPE]
    # more SFT steps than the recipe's few: the tiny model trains them in seconds, and the kill must
    # land between the first checkpoint and the last step
    sft_steps = ["--set", "sft.max_steps=40"]
    p = load_params(recipe=RECIPE, overrides={"sft.max_steps": 40})

    _run(root, env, [*rec, "model", "build-tiny"])
    ingest = json.loads(_run(root, env, [*rec, "ingest"]).stdout)
    assert ingest["quarantined_missing"] > ingest["rows"] > 0  # most rows have no video, as for a partial copy
    cot = json.loads(_run(root, env, [*rec, "cot"]).stdout)
    assert cot["samples"]["train"] > 0 and cot["samples"]["test"] > 0
    gate = json.loads(_run(root, env, [*rec, "validate"]).stdout)
    assert gate["success"] is True

    # SFT: killed after its first checkpoint (both ranks, the whole group), then run again to the end
    ckpts = root / p.sft.output_dir / "checkpoints"
    killed_at = _kill_after_first_checkpoint(root, env, [*rec, *sft_steps, "sft"], ckpts)
    assert 0 < killed_at < p.sft.max_steps and not (root / p.sft.output_dir / "merged").exists()
    sft = _run(root, env, [*rec, *sft_steps, "sft"], ranks=2)
    per_rank = [json.loads(x) for x in sft.stdout.splitlines() if x.startswith("{\"")]  # the Trainer prints its logs too
    assert len(per_rank) == 2  # both ranks ran and finished
    assert all(r["global_step"] == p.sft.max_steps and r["resumed_from_step"] >= killed_at for r in per_rank)
    assert sft.stderr.count("merged model written to") == 1

    grpo = _run(root, env, [*rec, "grpo"], ranks=2)
    per_rank = [json.loads(x) for x in grpo.stdout.splitlines() if x.startswith("{\"")]
    assert len(per_rank) == 2 and all(r["global_step"] == p.grpo.max_steps for r in per_rank)
    assert grpo.stderr.count("merged model written to") == 1

    base = _weights(root / p.model.base)
    for stage in ("sft", "grpo"):
        merged = root / getattr(p, stage).output_dir / "merged"
        weights = _weights(merged)
        assert weights.keys() == base.keys(), stage
        assert any(not torch.equal(weights[k], base[k]) for k in base), f"{stage} left the base weights unchanged"
        model = load_model(str(merged), p.model)  # loadable by the stages' own loader
        assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"

    # evaluation: two ranks, then one process into another folder and experiment, same metrics
    _run(root, env, [*rec, "evaluate"], ranks=2)
    one = root / "eval-one-process"
    _run(root, env, [*rec, "--set", "tracking.experiment=rehearsal-one-process", "evaluate",
                     "--out", str(one), "--report", str(one / "report.html")])
    two = json.loads((root / p.evaluate.out_dir / "metrics.json").read_text())
    assert two == json.loads((one / "metrics.json").read_text())
    assert set(two) == {"prior", "base", "sft", "grpo"}  # model -> task -> style -> metrics

    # one MLflow run per stage; SFT's killed run was marked KILLED by the next start
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=[p.tracking.experiment])
    finished = runs[runs["status"] == "FINISHED"]["tags.srvau.stage"].value_counts().to_dict()
    assert finished == {s: 1 for s in ("build_tiny", "ingest", "cot", "validate", "sft", "grpo", "evaluate")}, finished
    others = runs[runs["status"] != "FINISHED"][["tags.srvau.stage", "status"]].values.tolist()
    assert others == [["sft", "KILLED"]], others

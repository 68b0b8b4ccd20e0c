"""``srvau launch <stage>``: params' ``launch`` section decides how SFT, GRPO and evaluation start.

The fast tests read the real params (with ``--set``-style overrides) and check the launch each stage
gets and the ``accelerate launch`` command it would exec, and run the real command: one process
in-process, a bad config file refused with its key named, and two ranks (~10-25 s) that get the
forwarded options and whose failure is the command's exit code. The slow tests run the pipeline in a
copy of the project on two CPU gloo ranks: ``dvc repro sft``, then GRPO and evaluation through the
Prefect flow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services import BIN, project_copy
from srvau.config import PROJECT_ROOT, ConfigError, load_params
from srvau.launch import Machines, accelerate_command, accelerate_env, global_options, machines_from_env, plan

RECIPES = PROJECT_ROOT / "configs"


# ----------------------------------------------------------------------------- the plan (no subprocess)


def test_each_stage_gets_its_override_else_the_default():
    p = load_params(overrides={
        "launch.num_processes": 2,
        "launch.stages.grpo.config_file": "configs/accelerate/zero2.yaml",
        "launch.stages.evaluate.num_processes": 1,
    })
    sft, grpo, ev = (plan(p, s, env={}) for s in ("sft", "grpo", "evaluate"))
    assert (sft.num_processes, sft.config_file) == (2, PROJECT_ROOT / "configs/accelerate/ddp.yaml")
    assert (grpo.num_processes, grpo.config_file.name) == (2, "zero2.yaml")
    assert ev.num_processes == 1 and ev.in_process and not sft.in_process
    # the demo default: every stage in-process
    assert all(plan(load_params(), s, env={}).in_process for s in ("sft", "grpo", "evaluate"))


def test_the_recipes_launch_what_their_comments_promise():
    paper = load_params(recipe="paper-3b")
    assert [(plan(paper, s, env={}).num_processes, plan(paper, s, env={}).config_file.name)
            for s in ("sft", "grpo", "evaluate")] == [(8, "zero2.yaml"), (8, "zero2.yaml"), (8, "ddp.yaml")]
    rehearsal = load_params(recipe="rehearsal")
    assert {plan(rehearsal, s, env={}).num_processes for s in ("sft", "grpo", "evaluate")} == {2}


def test_a_missing_config_file_fails_naming_its_key():
    p = load_params(overrides={"launch.num_processes": 2, "launch.stages.sft.config_file": "configs/accelerate/nope.yaml"})
    with pytest.raises(ConfigError, match=r"launch\.stages\.sft\.config_file: configs/accelerate/nope\.yaml does not exist"):
        plan(p, "sft", env={})
    assert plan(p, "grpo", env={}).config_file.name == "ddp.yaml"  # the other stages keep the default
    # a single process never reads the file, so a project without configs/ still runs in-process
    assert plan(load_params(overrides={"launch.config_file": "nowhere.yaml"}), "sft", env={}).in_process
    with pytest.raises(ConfigError, match="launch.stages.foo: unknown key"):
        load_params(overrides={"launch.stages.foo": {"num_processes": 2}})
    with pytest.raises(ConfigError, match="launch.num_processes"):
        load_params(overrides={"launch.num_processes": 0})


def test_one_machine_gets_a_free_port_and_cpu_ranks_without_cuda():
    p = load_params(overrides={"launch.num_processes": 2})
    launch = plan(p, "sft", env={})
    args = global_options("params.yaml", "rehearsal", ["sft.max_steps=3"]) + ["sft", "--out", "o"]
    cmd = accelerate_command(launch, args, cuda=False, python="/py")
    assert cmd[:3] == ["/py", "-m", "accelerate.commands.launch"]
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert flag("--config_file") == str(PROJECT_ROOT / "configs/accelerate/ddp.yaml")
    assert (flag("--num_processes"), flag("--num_machines"), flag("--main_process_port")) == ("2", "1", "0")
    assert flag("--mixed_precision") == "no" and "--main_process_ip" not in cmd
    # every rank reads the same config as the launcher: the global options, then the stage's own
    assert cmd[cmd.index("-m", 3):] == ["-m", "srvau.cli", "--params", str(Path("params.yaml").resolve()),
                                        "--recipe", "rehearsal", "--set", "sft.max_steps=3",
                                        "sft", "--out", "o"]
    assert accelerate_env({"A": "1"}, cuda=False) == {"A": "1", "ACCELERATE_USE_CPU": "true"}
    on_gpus = accelerate_command(launch, ["sft"], cuda=True)
    assert "--mixed_precision" not in on_gpus and accelerate_env({"A": "1"}, cuda=True) == {"A": "1"}


def test_several_machines_come_from_torchruns_environment_names():
    """What a PyTorchJob pod holds (infra/k8s/training/pytorchjob-grpo.yaml): PET_NNODES, PET_NODE_RANK, ..."""
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "srvau-grpo-master-0", "PET_MASTER_PORT": "23456"}
    assert machines_from_env(env) == Machines(2, 1, "srvau-grpo-master-0", 23456)
    assert machines_from_env({}) == Machines() == machines_from_env({"PET_NNODES": "1"})
    launch = plan(load_params(recipe="paper-3b"), "grpo", env=env)
    cmd = accelerate_command(launch, ["grpo"], cuda=True)
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert (flag("--num_processes"), flag("--num_machines"), flag("--machine_rank")) == ("8", "2", "1")
    assert (flag("--main_process_ip"), flag("--main_process_port")) == ("srvau-grpo-master-0", "23456")
    # the same port on every machine: never a free one
    assert machines_from_env({k: v for k, v in env.items() if k != "PET_MASTER_PORT"}).main_process_port == 29500

    with pytest.raises(ConfigError, match="do not split evenly over 3 machines"):
        plan(load_params(recipe="paper-3b"), "grpo", env={**env, "PET_NNODES": "3"})
    with pytest.raises(ConfigError, match="needs PET_MASTER_ADDR"):
        machines_from_env({"PET_NNODES": "2", "PET_NODE_RANK": "0"})
    with pytest.raises(ConfigError, match="need 0 <= rank < machines"):
        machines_from_env({**env, "PET_NODE_RANK": "2"})
    with pytest.raises(ConfigError, match="elastic ranges"):
        machines_from_env({**env, "PET_NNODES": "1:2"})


# ----------------------------------------------------------------------------- the command


def _srvau(args: list[str], cwd: Path = PROJECT_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("SRVAU_RECIPE", None)
    return subprocess.run([sys.executable, "-m", "srvau.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_one_process_runs_the_stage_in_the_command_itself(tmp_path):
    """No launcher: the stage's own error (its option, its exit code) comes straight back."""
    res = _srvau(["launch", "evaluate", "--manifest", str(tmp_path / "none.parquet"), "--model", "base=/nonexistent"])
    assert res.returncode == 2, res.stderr[-2000:]
    assert "none.parquet" in res.stderr and "launching" not in res.stderr


def test_a_missing_config_file_stops_the_command_before_any_rank_starts():
    res = _srvau(["--set", "launch.num_processes=2", "--set", "launch.stages.grpo.config_file=configs/nope.yaml",
                  "launch", "grpo"])
    assert res.returncode == 2
    assert "launch.stages.grpo.config_file: configs/nope.yaml does not exist" in res.stderr


def test_the_ranks_get_the_options_given_to_the_launcher():
    """Parsed by the real command tree: given options go back as arguments, defaults stay out."""
    from typer.main import get_command

    from srvau.cli.app import app
    from srvau.cli.launch import given_options

    cmd = get_command(app).commands["launch"].commands["evaluate"]
    ctx = cmd.make_context("evaluate", ["--manifest", "m.parquet", "--model", "a=b", "--model", "c=d"])
    assert given_options(ctx) == ["--manifest", "m.parquet", "--model", "a=b", "--model", "c=d"]
    assert given_options(cmd.make_context("evaluate", [])) == []
    # the launched command is the stage's own: same options, same help
    assert [p.name for p in cmd.params] == [p.name for p in get_command(app).commands["evaluate"].params]


def test_two_ranks_get_the_forwarded_options_and_their_failure_is_the_exit_code(tmp_path):
    missing = tmp_path / "none.parquet"
    res = _srvau(["--set", "launch.num_processes=2", "launch", "evaluate", "--manifest", str(missing)])
    assert res.returncode != 0
    assert "launching evaluate on 2 processes (1 machine(s), CPU gloo, ddp.yaml)" in res.stderr
    assert f"-m srvau.cli --set launch.num_processes=2 evaluate --manifest {missing}" in res.stderr
    # a rank parsed the forwarded --manifest and failed on it (the first failure stops the other rank)
    assert f"error: manifest {missing} not found" in res.stderr and "srvau.cli FAILED" in res.stderr, res.stderr[-3000:]


# ----------------------------------------------------------------------------- the pipeline on two ranks


@pytest.fixture(scope="module")
def two_rank_project(tmp_path_factory) -> Path:
    """A copy of the project at tiny sizes, every launched stage on two CPU ranks."""
    dest = project_copy(tmp_path_factory.mktemp("launch"))
    p = yaml.safe_load((dest / "params.yaml").read_text())
    p["synth"].update(n_train=8, n_val=2, n_test=2)  # enough train anomaly intervals for the gate
    p["sft"].update(max_steps=4, save_steps=2, logging_steps=1, per_device_train_batch_size=2)
    p["grpo"].update(max_steps=2, save_steps=1, per_device_train_batch_size=4, max_completion_length=24,
                     log_completions_every=0)
    p["evaluate"].update(limit=2, tasks=["qa", "grounding"], styles=["reflect"], max_new_tokens=16)
    p["launch"]["num_processes"] = 2
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "PYTHONPATH": str(project),
           "PREFECT_HOME": str(project / ".prefect"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # `srvau` for dvc's stage commands
    for k in ("SRVAU_RECIPE", "SRVAU_ROOT", "MLFLOW_RUN_ID"):
        env.pop(k, None)
    return env


def _params(project: Path, run_filter: str = "") -> dict[str, str]:
    with sqlite3.connect(project / "mlflow.db") as db:
        return dict(db.execute(f"select key, value from params {run_filter}").fetchall())


@pytest.mark.slow  # ~1-2 min: synth -> build_tiny -> ingest -> cot -> validate -> sft
def test_dvc_repro_sft_runs_two_ranks(two_rank_project):
    project = two_rank_project
    proc = subprocess.run(["dvc", "repro", "sft"], cwd=project, env=_env(project), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "launching sft on 2 processes (1 machine(s), CPU gloo, ddp.yaml)" in proc.stderr
    per_rank = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"train_loss"')]
    assert len(per_rank) == 2 and all(r["world_size"] == 2 and r["global_step"] == 4 for r in per_rank)
    assert proc.stderr.count("merged model written to") == 1  # the main rank alone exports
    summary = json.loads((project / "models/sft/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert _params(project)["sft.world_size"] == "2"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["sft"]
    assert lock["cmd"] == "srvau launch sft"
    assert lock["params"]["params.yaml"]["launch.num_processes"] == 2


@pytest.mark.slow  # ~2-3 min: GRPO and evaluation on two ranks, each a task of the flow
def test_the_flow_runs_grpo_and_evaluate_on_two_ranks(two_rank_project, prefect_api):
    project = two_rank_project
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--stages", "grpo", "evaluate", "--no-push"],
                          cwd=project, env={**_env(project), "PREFECT_API_URL": prefect_api},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grpo = json.loads((project / "models/grpo/summary.json").read_text())
    # two steps of 8 completions over two ranks: one prompt each, there and back (grpo.mirror_prompts
    # counts the launcher's ranks; one rank would have made one slot)
    assert grpo["world_size"] == 2 and grpo["prompts"] == 2
    inference = json.loads((project / "reports/eval/inference.json").read_text())
    assert {label: stats["processes"] for label, stats in inference.items()} == {"base": 2, "sft": 2, "grpo": 2}
    with sqlite3.connect(project / "mlflow.db") as db:
        [(run_id,)] = db.execute("select run_uuid from runs where name = 'pipeline'").fetchall()
        # what each stage ran with, in its child run of the flow's run
        world = dict(db.execute(
            "select p.key, p.value from params p join tags t on t.run_uuid = p.run_uuid "
            "where t.key = 'mlflow.parentRunId' and t.value = ? and p.key like '%.world_size'", (run_id,)).fetchall())
    # sft is there too when this test runs alone: the flow's `dvc repro grpo` makes its upstream stages first
    assert {k: world.get(k) for k in ("grpo.world_size", "evaluate.world_size")} == {"grpo.world_size": "2", "evaluate.world_size": "2"}
    assert set(world) <= {"sft.world_size", "grpo.world_size", "evaluate.world_size"} and set(world.values()) == {"2"}
    assert _params(project, f"where run_uuid = '{run_id}'")["launch.num_processes"] == "2"  # the flow's params

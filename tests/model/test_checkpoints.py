"""Checkpoints of the training stages (srvau.training.checkpoints): kill-safe resume, pruning, the
precision rule, the MLflow rules under several ranks, and (slow) real SIGKILLs and real gloo ranks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def complete_checkpoint(path: Path, adapter: bool = False) -> Path:
    """A checkpoint folder as the Trainer leaves it (weights, optimizer, scheduler, then the state)."""
    import torch
    from safetensors.torch import save_file

    from srvau.training.checkpoints import step_of

    path.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.ones(8)}, str(path / ("adapter_model.safetensors" if adapter else "model.safetensors")))
    torch.save({"state": {}, "param_groups": [{"lr": 1.0}]}, path / "optimizer.pt")
    torch.save({"last_epoch": step_of(path)}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step_of(path), "log_history": []}))
    return path


def _empty_folder(p: Path):
    p.mkdir(parents=True)


def _weights_only(p: Path):
    complete_checkpoint(p)
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (p / name).unlink()


def _zero_byte_optimizer(p: Path):
    complete_checkpoint(p)
    (p / "optimizer.pt").write_bytes(b"")


def _no_trainer_state(p: Path):
    complete_checkpoint(p)
    (p / "trainer_state.json").unlink()


def _truncated_weights(p: Path):
    complete_checkpoint(p)
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) - 7])


def _truncated_state(p: Path):
    complete_checkpoint(p)
    (p / "trainer_state.json").write_text('{"global_step": 1')


def _no_weights(p: Path):
    complete_checkpoint(p)
    (p / "model.safetensors").unlink()


BROKEN = {
    "empty-folder": (_empty_folder, "trainer_state.json"),
    "weights-only": (_weights_only, "trainer_state.json"),
    "zero-byte-optimizer": (_zero_byte_optimizer, "optimizer.pt"),
    "no-trainer-state": (_no_trainer_state, "trainer_state.json"),
    "truncated-weights": (_truncated_weights, "model.safetensors"),
    "truncated-state": (_truncated_state, "trainer_state.json"),
    "no-weights": (_no_weights, "weights"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_incomplete_checkpoint_is_moved_aside_and_the_previous_complete_one_resumed(kind, tmp_path, caplog):
    """Regression: the old lookup (``get_last_checkpoint``) picked the newest folder by name, complete
    or not, so a kill during a checkpoint write blocked every later resume."""
    from transformers.trainer_utils import get_last_checkpoint

    from srvau.training.checkpoints import incomplete_reason, prepare

    ckpts = tmp_path / "checkpoints"
    complete_checkpoint(ckpts / "checkpoint-2")
    make, reason = BROKEN[kind]
    make(ckpts / "checkpoint-4")
    assert reason in incomplete_reason(ckpts / "checkpoint-4")
    assert incomplete_reason(ckpts / "checkpoint-2") is None
    assert Path(get_last_checkpoint(str(ckpts))).name == "checkpoint-4"  # what the old code resumed

    prepare(ckpts, "fp", resume=True)  # first run stamps the fingerprint (and prunes the unknown)
    complete_checkpoint(ckpts / "checkpoint-2")
    make(ckpts / "checkpoint-4")
    with caplog.at_level(logging.WARNING, logger="srvau.training.checkpoints"):
        resumed = prepare(ckpts, "fp", resume=True)
    assert resumed == ckpts / "checkpoint-2"
    assert not (ckpts / "checkpoint-4").exists() and (ckpts / "incomplete-checkpoint-4").is_dir()
    assert any("checkpoint-4 is incomplete" in r.getMessage() for r in caplog.records)


def test_moved_aside_folders_stay_out_of_the_trainers_rotation(tmp_path):
    """The Trainer's ``save_total_limit`` rotation globs ``checkpoint-*``: a moved-aside folder must not
    count against the limit (it would push a complete checkpoint out)."""
    from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

    from srvau.training.checkpoints import move_aside_incomplete

    ckpts = tmp_path / "checkpoints"
    complete_checkpoint(ckpts / "checkpoint-2")
    _no_trainer_state(ckpts / "checkpoint-4")
    move_aside_incomplete(ckpts)
    _no_trainer_state(ckpts / "checkpoint-4")  # killed at the same step twice
    moved = move_aside_incomplete(ckpts)
    assert [m.name for m in moved] == ["incomplete-checkpoint-4.2"]
    assert [Path(c).name for c in sort_checkpoints(str(ckpts))] == ["checkpoint-2"]
    assert Path(get_last_checkpoint(str(ckpts))).name == "checkpoint-2"


def test_fingerprint_change_or_resume_off_removes_everything(tmp_path):
    from srvau.training.checkpoints import RUN_FILE, prepare

    ckpts = tmp_path / "checkpoints"
    prepare(ckpts, "a", resume=True)
    complete_checkpoint(ckpts / "checkpoint-2")
    _empty_folder(ckpts / "checkpoint-4")
    assert prepare(ckpts, "a", resume=True).name == "checkpoint-2"
    assert prepare(ckpts, "b", resume=True) is None
    assert not list(ckpts.glob("*checkpoint-*"))
    assert json.loads((ckpts / RUN_FILE).read_text()) == {"fingerprint": "b"}
    complete_checkpoint(ckpts / "checkpoint-2")
    assert prepare(ckpts, "b", resume=False) is None and not list(ckpts.glob("checkpoint-*"))
    (ckpts / RUN_FILE).write_text('{"finger')  # a stamp cut by a kill: unknown, start over
    complete_checkpoint(ckpts / "checkpoint-2")
    assert prepare(ckpts, "b", resume=True) is None


def test_engine_layouts_count_as_complete(tmp_path):
    """DeepSpeed keeps weights and optimizer state in ``global_stepN/``: no optimizer.pt to look for."""
    from srvau.training.checkpoints import incomplete_reason

    ds = tmp_path / "checkpoint-5"
    ds.mkdir()
    (ds / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    (ds / "global_step5").mkdir()
    assert "global_step5" in incomplete_reason(ds)  # engine folder, nothing written yet
    (ds / "global_step5" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 16)
    assert incomplete_reason(ds) is None
    lora = complete_checkpoint(tmp_path / "checkpoint-6", adapter=True)
    assert incomplete_reason(lora) is None


def test_fp32_master_weights_unless_an_engine_keeps_them(monkeypatch):
    from srvau.config import ModelConfig
    from srvau.training.checkpoints import sharded_engine, training_dtype

    for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(k, raising=False)
    bf16 = ModelConfig(torch_dtype="bfloat16")
    cfg, autocast = training_dtype(bf16)
    assert cfg.torch_dtype == "float32" and autocast and bf16.torch_dtype == "bfloat16"
    assert training_dtype(ModelConfig()) == (ModelConfig(), False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a ZeRO config
    assert sharded_engine() == "deepspeed"
    assert training_dtype(bf16) == (bf16, True)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "1")
    assert sharded_engine() == "fsdp"


def test_mlflow_logging_only_from_the_main_process_into_an_active_run(params):
    """Non-main ranks have no run (stage_run yields None there) and must not start one: mlflow.log_metrics
    without an active run would open a stray run per rank."""
    import mlflow
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from srvau.tracking.runs import configure, stage_run
    from srvau.training.common import MlflowStepCallback, log_summary

    configure(params)
    exp = mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id
    before = len(mlflow.search_runs([exp]))
    assert mlflow.active_run() is None
    assert log_summary("sft", {"x": 1.0}, is_main_process=True) is False
    assert len(mlflow.search_runs([exp])) == before  # no stray run

    callback = MlflowStepCallback("sft")
    rank1 = TrainerState(is_world_process_zero=False, global_step=1)
    rank0 = TrainerState(is_world_process_zero=True, global_step=1)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    with stage_run(params, "sft") as run:
        assert log_summary("sft", {"x": 1.0, "bad": float("nan")}, is_main_process=False) is False
        callback.on_log(args, rank1, TrainerControl(), logs={"loss": 2.0})
        callback.on_log(args, rank0, TrainerControl(), logs={"learning_rate": 0.1})
        assert log_summary("sft", {"x": 1.0, "bad": float("nan"), "flag": True}, is_main_process=True)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert metrics == {"sft.x": 1.0, "sft.learning_rate": 0.1}


# ----------------------------------------------------------------------------- the stages, for real


@pytest.fixture(scope="module")
def rocot_dir(train_rocot, params) -> Path:
    return train_rocot(params)


def _params(params, *layers: dict):
    """Params with the session's small demo set, then each layer of overrides in order."""
    from srvau.config import load_params

    over = {f"synth.{k}": v for k, v in params.synth.model_dump().items()}
    for layer in layers:
        over.update(layer)
    return load_params(overrides=over)


SFT_FAST = {"sft.per_device_train_batch_size": 2, "sft.logging_steps": 1, "sft.max_length": 1024, "sft.lora": False}
GRPO_FAST = {
    "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2, "grpo.max_completion_length": 12,
    "grpo.log_completions_every": 0, "grpo.learning_rate": 0.01, "grpo.tasks": ["qa"],
}


def _lm_changed_share(trained: dict, base: dict) -> float:
    """Share of the language model's transformer weights (legacy names ``model.layers.*``) that differ."""
    changed = total = 0
    for k, v in trained.items():
        if k.startswith("model.layers.") or k.startswith("model.language_model.layers."):
            b = base[k].to(v.dtype)
            changed += int((v != b).sum())
            total += v.numel()
    assert total > 0, list(trained)[:5]
    return changed / total


def test_bf16_model_trains_with_fp32_master_weights(rocot_dir, tiny_model_dir, params, tmp_path):
    """Regression: with ``model.torch_dtype: bfloat16`` the parameters were bf16 themselves and AdamW's
    small updates rounded away (about a quarter of the weights changed at lr 2e-5). Now fp32 masters
    under bf16 autocast: most trained weights move, and the export is saved in bf16."""
    import torch
    from safetensors.torch import load_file

    from srvau.training.sft import sft

    torch.set_num_threads(1)
    p = _params(params, SFT_FAST, {
        "model.torch_dtype": "bfloat16", "sft.learning_rate": 2e-5, "sft.max_steps": 20, "sft.save_steps": 100,
        "sft.lr_scheduler_type": "constant", "sft.warmup_steps": 0, "sft.freeze_vision": True,
    })
    out = tmp_path / "sft"
    sft(rocot_dir, str(tiny_model_dir), out, p)
    trained = load_file(str(out / "merged" / "model.safetensors"))
    assert {v.dtype for v in trained.values()} == {torch.bfloat16}  # saved in the configured dtype
    share = _lm_changed_share(trained, load_file(str(tiny_model_dir / "model.safetensors")))
    print(f"\nFP32-MASTERS changed share of LM weights (bf16 compare): {share:.3f}")
    assert share >= 0.8, share


@pytest.mark.parametrize(
    "stage,lora",
    [("sft", False), ("sft", True),  # GRPO's ~35 s each on two busy cores
     pytest.param("grpo", False, marks=pytest.mark.slow), pytest.param("grpo", True, marks=pytest.mark.slow)],
    ids=["sft-full", "sft-lora", "grpo-full", "grpo-lora"],
)
def test_finished_run_is_exported_not_trained_again(stage, lora, rocot_dir, tiny_model_dir, params, tmp_path):
    """Re-running a stage whose run already reached max_steps (``dvc repro`` after an unrelated change)
    exports the final checkpoint: no step, same merged weights. The last step is checkpointed even
    when it is not a multiple of save_steps. Regression: a finished LoRA SFT run exported the *base*
    model (a fresh adapter), and a finished GRPO run trained again."""
    from safetensors.torch import load_file

    from srvau.training.grpo import grpo
    from srvau.training.sft import sft

    run = sft if stage == "sft" else grpo
    fast = SFT_FAST if stage == "sft" else GRPO_FAST
    p = _params(params, fast, {f"{stage}.lora": lora, f"{stage}.max_steps": 3, f"{stage}.save_steps": 2,
                                   f"{stage}.learning_rate": 0.01})
    out = tmp_path / stage
    first = run(rocot_dir, str(tiny_model_dir), out, p)
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    before = load_file(str(out / "merged" / "model.safetensors"))
    again = run(rocot_dir, str(tiny_model_dir), out, p)
    assert again["steps_this_run"] == 0 and again["global_step"] == first["global_step"] == 3
    after = load_file(str(out / "merged" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-6
    if stage == "sft":  # (the demo's GRPO rewards are all zero on an untrained model: no gradient to see)
        assert max((after[k] - base[k]).abs().max().item() for k in after if k in base) > 1e-4  # trained, not base
    assert (out / "adapter").is_dir() == lora


# ----------------------------------------------------------------------------- slow: real kills, real ranks

RUN = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from pathlib import Path
from srvau.config import load_params
stage = sys.argv[1]
mod = __import__(f"srvau.training.{stage}", fromlist=[stage])
out = getattr(mod, stage)(Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5]), load_params(sys.argv[2]))
print("RESULT " + json.dumps(out), flush=True)
"""

# When to SIGKILL, watching the newest checkpoint folder being written.
KILL_POINTS = {
    "folder-appears": lambda d: not (d / "trainer_state.json").exists(),
    "weights-written": lambda d: any(d.glob("*.safetensors")) and not (d / "trainer_state.json").exists(),
    "optimizer-written": lambda d: (d / "optimizer.pt").exists() and not (d / "trainer_state.json").exists(),
}


def _start(stage: str, params_file: Path, rocot: Path, base: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RUN, stage, str(params_file), str(rocot), str(base), str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, start_new_session=True)  # its own process group


def _kill_during_a_checkpoint_write(child: subprocess.Popen, ckpts: Path, point: str, timeout: float = 300) -> str:
    """Poll for a new checkpoint folder and SIGKILL the process group at ``point`` of its write.
    Returns what the folder held when the kill landed."""
    seen = {d.name for d in ckpts.glob("checkpoint-*")} if ckpts.is_dir() else set()
    deadline = time.time() + timeout
    while time.time() < deadline and child.poll() is None:
        new = [d for d in ckpts.glob("checkpoint-*") if d.name not in seen] if ckpts.is_dir() else []
        for d in new:
            if KILL_POINTS[point](d):
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=60)
                return ",".join(sorted(f.name for f in d.iterdir())) or "(empty)"
            if (d / "trainer_state.json").exists():
                seen.add(d.name)  # written completely before we saw it mid-way: wait for the next one
        time.sleep(0.002)
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    out = child.stdout.read()
    pytest.fail(f"no checkpoint write caught at {point!r} (rc={child.poll()}):\n{out[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_sigkill_during_checkpoint_writes_then_resume_to_completion(stage, rocot_dir, tiny_model_dir, params, tmp_path):
    """The real stage in a subprocess (own process group), SIGKILLed at several points of a checkpoint
    write, then run again: every rerun skips the cut folder and the last one finishes with a merged model."""
    import yaml

    steps = 12
    fast = SFT_FAST if stage == "sft" else GRPO_FAST
    p = _params(params, fast, {f"{stage}.max_steps": steps, f"{stage}.save_steps": 1, f"{stage}.save_total_limit": 3,
                                   f"{stage}.lora": True})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(p.dump()))
    out, ckpts = tmp_path / stage, tmp_path / stage / "checkpoints"

    caught = {}
    for point in KILL_POINTS:
        child = _start(stage, params_file, rocot_dir, tiny_model_dir, out)
        caught[point] = _kill_during_a_checkpoint_write(child, ckpts, point)
        assert child.returncode == -signal.SIGKILL
        assert not (out / "merged").exists()
    print(f"\nKILLED-AT {stage}: {caught}")

    final = _start(stage, params_file, rocot_dir, tiny_model_dir, out)
    log, _ = final.communicate(timeout=600)
    assert final.returncode == 0, log[-4000:]
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:])
    assert result["global_step"] == steps and result["resumed_from_step"] > 0
    assert result["steps_this_run"] == steps - result["resumed_from_step"]
    assert any((out / "merged").glob("*.safetensors"))
    assert not list(ckpts.glob("incomplete-*"))  # cleared once the run finished

    from srvau.modeling import load_model

    assert type(load_model(out / "merged")).__name__ == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_two_gloo_ranks_export_once(stage, rocot_dir, tiny_model_dir, params, tmp_path):
    """``accelerate launch`` with two real CPU ranks (gloo): both exit 0, only the main process merges
    and logs, ``merged/`` is loadable. Regression: SFT's rank 1 died with "merge_and_save wrote no
    safetensors file" (every rank merged and saved)."""
    fast = SFT_FAST if stage == "sft" else GRPO_FAST
    sets = {**fast, f"{stage}.max_steps": 2, f"{stage}.save_steps": 1, f"{stage}.lora": stage == "grpo"}
    sets.update({f"synth.{k}": v for k, v in params.synth.model_dump().items()})
    out = tmp_path / stage
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    where = ["--rocot", str(rocot_dir), "--out", str(out)]
    where += ["--base-model", str(tiny_model_dir)] if stage == "sft" else ["--init-model", str(tiny_model_dir)]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": tracking}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
           "--num_processes", "2", "-m", "srvau.cli", *args, stage, *where]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert log.count("merged model written to") == 1, log[-5000:]
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"')]  # not the Trainer's prints
    assert results and all(r["global_step"] == 2 for r in results), res.stdout[-3000:]

    from srvau.modeling import load_model

    assert type(load_model(out / "merged")).__name__ == "Qwen2_5_VLForConditionalGeneration"

    # one run (the main process's), holding the per-step curve and the summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].data.metrics[f"{stage}.global_step"] == 2
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, f"{stage}.loss")] == [1, 2]

"""What the bench scripts measure on: their own set-up (bench/ times things; these tests time nothing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, args", [("eval", (2, None)), ("grpo", (4, None))])
def test_benches_build_their_tiny_model_without_reading_drills(name, args, tmp_path):
    """Regression: once build_tiny practised the reading drills, bench/eval.py and bench/grpo.py ran up to
    2000 drill steps before their first timing, and the eval bench measured a model that answers, where
    its premise is random weights whose every answer runs to --max-new-tokens."""
    prepared = _bench(name).prepare(tmp_path, *args)
    model = Path(prepared[2] if name == "eval" else prepared["model"])
    assert json.loads((model / "reading_drills.json").read_text())["steps"] == 0
    assert (model / "model.safetensors").is_file()


def test_grpo_reward_bench_holds_the_policy_still(train_rocot, tiny_model_dir, params, tmp_path):
    """bench/grpo_reward.py's premise: the optimizer of the stage's trainer at learning rate 1e-30 takes
    real steps on real gradients and leaves the model's outputs unchanged to the bit (a zero-initialised
    LoRA weight moves by ~1e-30, which no output can show); the same steps at 1e-2 do change them. Built
    with ``grpo.paired_sampling`` on, the stage's trainer pairs its steps (bench/grpo_trend.py relies on it)."""
    import torch

    from srvau.config import load_params

    fast = {**{f"synth.{k}": v for k, v in params.synth.model_dump().items()}, "grpo.max_steps": 2,
            "grpo.paired_sampling": True}
    p = load_params(overrides=fast)
    trainer = _bench("grpo_reward").held_still_trainer(str(tiny_model_dir), tmp_path / "ckpt", p, train_rocot(p))
    assert trainer.args.learning_rate == 1e-30
    assert trainer.sampling_seed() is not None  # build_trainer passed grpo.paired_sampling on
    model, ids = trainer.model, torch.arange(5, 45)[None]

    def logits():
        with torch.no_grad():
            return model(input_ids=ids).logits

    def steps(optimizer):
        for _ in range(3):
            loss = model(input_ids=ids).logits.square().mean()
            loss.backward()
            assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    before = logits()
    steps(trainer.create_optimizer())
    assert torch.equal(logits(), before)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-2
    steps(trainer.optimizer)
    assert not torch.equal(logits(), before)


def test_grpo_trend_bench_at_the_stage_seed_samples_what_the_stage_sampled(train_rocot, tiny_model_dir, params, tmp_path):
    """bench/grpo_trend.py's premise: its run at the stage's own seed, unpaired, is the stage's run (the same
    completions at every step, read from the stage's MLflow tables), so another seed changes the sampling
    and nothing else; and another seed does draw other completions."""
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import stage_run
    from srvau.training.grpo import grpo

    fast = {**{f"synth.{k}": v for k, v in params.synth.model_dump().items()}, "grpo.max_steps": 2,
            "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2, "grpo.max_completion_length": 12,
            "grpo.log_completions_every": 1, "grpo.save_steps": 2}
    p = load_params(overrides=fast)
    rocot = train_rocot(p)
    with stage_run(p, "grpo") as run:
        grpo(rocot, str(tiny_model_dir), tmp_path / "stage", p)
    client = mlflow.tracking.MlflowClient()

    def stage_completions(step: int) -> list[str]:
        path = client.download_artifacts(run.info.run_id, f"grpo/completions/step_{step:06d}.json", str(tmp_path))
        table = json.loads(Path(path).read_text())
        return [row[table["columns"].index("completion")] for row in table["data"]]

    bench = _bench("grpo_trend")
    same = bench.train_a_run(str(tiny_model_dir), False, p.seed, tmp_path / "same", p, rocot)
    assert list(same.completions_frame(2)["completion"]) == stage_completions(2)
    other = bench.train_a_run(str(tiny_model_dir), False, p.seed + 1, tmp_path / "other", p, rocot)
    assert list(other.completions_frame(2)["completion"]) != stage_completions(2)

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

"""The paper recipe resolves to paper settings, through the CLI a GPU-day starts from.

The CPU rehearsal of the paper-3b recipe found the demo's trace caps and the demo's random tiny model
(as the report's "base") leaking into it, and a train split without anomaly intervals: each is pinned here.
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from srvau.cli import app
from srvau.config import PROJECT_ROOT, load_params

RECIPE = "paper-3b"


def _show(*args: str) -> dict:
    r = CliRunner().invoke(app, [*args, "config", "show"])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.stdout)


def test_paper_recipe_evaluates_its_own_base_model_with_paper_trace_settings():
    cfg = _show("--recipe", RECIPE)
    assert cfg["model"]["base"] == "models/Qwen2.5-VL-3B-Instruct"
    assert cfg["evaluate"]["models"]["base"] == "models/Qwen2.5-VL-3B-Instruct"  # not the demo's random tiny model
    cot = cfg["cot"]
    # VAU-Bench descriptions run 42-130 words (5th-95th percentile): the demo's 16/24/4 would cut them
    assert cot["think_max_words"] >= 64 and cot["answer_max_words"] >= 128 and cot["openai"]["frames"] >= 16
    # ... and the trace still fits the GRPO completion budget (~4/3 tokens per word, 3 reasoning parts + 2 answers)
    words = 3 * cot["think_max_words"] + 2 * cot["answer_max_words"]
    assert words * 4 / 3 <= cfg["grpo"]["max_completion_length"]


def test_demo_keeps_demo_settings_and_an_explicit_base_wins():
    demo = _show()
    assert demo["evaluate"]["models"]["base"] == demo["model"]["base"] == "models/tiny-base"
    assert demo["cot"]["think_max_words"] == 16 and demo["cot"]["openai"]["frames"] == 4
    explicit = _show("--recipe", RECIPE, "--set", "evaluate.models.base=models/other-base")
    assert explicit["evaluate"]["models"]["base"] == "models/other-base"
    assert explicit["model"]["base"] == "models/Qwen2.5-VL-3B-Instruct"


def test_params_yaml_leaves_the_evaluation_base_to_model_base():
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert raw["evaluate"]["models"]["base"] is None
    assert load_params(overrides={"model.base": "models/elsewhere"}).evaluate.models["base"] == "models/elsewhere"


def test_paper_recipe_trains_grounding_on_anomaly_intervals_and_gates_them():
    p = load_params(recipe=RECIPE)
    train = [a for a in p.ingest.annotations if "train" in a]
    assert "data/vau-bench/train.csv" in train  # MSAD + ECVA intervals; ucf_subset_train.csv has none
    assert "data/vau-bench/ucf_subset_train.csv" in train
    demo = load_params()
    assert p.validate_.min_train_anomaly_intervals > demo.validate_.min_train_anomaly_intervals
    assert p.validate_.max_quarantine_share < demo.validate_.max_quarantine_share


# ----------------------------------------------------------------------------- evaluate on N processes


def _evaluate(n_procs: int, out, manifest_path, model_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    sets = {"evaluate.tasks": "[qa, grounding, classification]", "evaluate.styles": "[reflect, direct]",
            "evaluate.max_new_tokens": 12, "evaluate.batch_size": 2, "evaluate.limit": 3,
            "tracking.experiment": "test-evaluate-ranks"}
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    args += ["evaluate", "--manifest", str(manifest_path), "--model", f"base={model_dir}", "--out", str(out),
             "--report", str(out / "report.html")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    if n_procs == 1:
        cmd = [sys.executable, "-m", "srvau.cli", *args]
    else:  # the documented launch: two real gloo ranks on CPU (`--cpu` alone would run one process)
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(PROJECT_ROOT / "configs/accelerate/ddp.yaml"), "--num_processes", str(n_procs), "-m", "srvau.cli", *args]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return res


@pytest.mark.slow
def test_evaluate_on_two_ranks_equals_one_process(ingest_dir, tiny_model_dir, tmp_path):
    """Two gloo ranks share the prompts (no prompt generated twice) and the main rank alone writes:
    metrics.json and predictions equal a one-process run's. Regression: both ranks ran every prompt
    and both wrote metrics.json."""
    import json

    one, two = tmp_path / "one", tmp_path / "two"
    _evaluate(1, one, ingest_dir / "manifest.parquet", tiny_model_dir, tmp_path)
    _evaluate(2, two, ingest_dir / "manifest.parquet", tiny_model_dir, tmp_path)
    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    preds = [(d / "predictions" / "base.jsonl").read_text().splitlines() for d in (one, two)]
    assert preds[0] == preds[1] and len(preds[0]) > 4
    stats = [json.loads((d / "inference.json").read_text())["base"] for d in (one, two)]
    assert stats[1]["processes"] == 2
    assert sum(stats[1]["batches_per_process"]) == stats[0]["batches"] and min(stats[1]["batches_per_process"]) > 0
    assert stats[1]["batches"] == stats[0]["batches"] and stats[1]["new_tokens"] == stats[0]["new_tokens"]
    leftovers = sorted(p.name for p in (two / "predictions").iterdir())
    assert leftovers == ["base.jsonl"]  # no rank's .partial file survives


# ----------------------------------------------------------------------------- bench/gpu_check.py


def _gpu_check(*args: str, timeout: int = 900):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "gpu_check.py"), *args], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


def test_gpu_check_without_cuda_says_so_and_exits_2(tmp_path):
    res = _gpu_check("--out", str(tmp_path / "gpu.json"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no CUDA device" in res.stderr and "--tiny" in res.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_gpu_check_3b_config_is_qwen2_5_vl_3b():
    """The architecture the GPU check builds is the 3B checkpoint's, head and rope sizes consistent."""
    import importlib.util

    from transformers import Qwen2_5_VLConfig

    spec = importlib.util.spec_from_file_location("gpu_check", PROJECT_ROOT / "bench" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    s = gc.QWEN25_VL_3B
    cfg = Qwen2_5_VLConfig(text_config=s["text"], vision_config=s["vision"], tie_word_embeddings=s["tie_word_embeddings"])
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (2048, 36, 16, 2)
    assert (t.intermediate_size, t.vocab_size) == (11008, 151936)
    assert sum(t.rope_parameters["mrope_section"]) * 2 == t.hidden_size // t.num_attention_heads
    assert (v.depth, v.hidden_size, v.out_hidden_size, v.num_heads) == (32, 1280, 2048, 16)


@pytest.mark.slow
def test_gpu_check_tiny_runs_sft_and_video_grpo_on_cpu(tmp_path):
    """``--tiny``: the GPU check's code path (model from config, our SFT and video GRPO trainers) at CPU
    size, writing the JSON and the table."""
    import json

    out = tmp_path / "gpu_check.json"
    res = _gpu_check("--tiny", "--sft-steps", "2", "--grpo-steps", "2", "--samples", "4", "--out", str(out))
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    r = json.loads(out.read_text())
    for stage in ("sft", "grpo"):
        assert r[stage]["steps"] == 2 and r[stage]["step_time_s"] > 0 and r[stage]["tokens_per_s"] > 0
        assert r[stage]["peak_rss_gb"] > 0 and r[stage]["gradient_checkpointing"] is True
    assert 0 < r["grpo"]["generation_share"] < 1 and r["grpo"]["generate_calls"] >= 2
    assert r["settings"]["frames_per_clip"] >= 4 and r["settings"]["vision_tokens_per_clip"] > 0
    assert "stage" in res.stdout and "grpo" in res.stdout  # the table

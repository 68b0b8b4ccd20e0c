"""What several benchmarks share: a synthetic demo set run through the real stages, in a temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def synthetic_train_set(tmp: Path, n_videos: int, overrides: dict[str, Any] | None = None):
    """``n_videos`` synthetic train videos (``srvau.data.synth``) through the real ingest and RoCoT stages
    under ``tmp``. Returns the params used (the project's, with ``overrides``), the folder of the demo
    CSVs and the RoCoT folder."""
    from srvau.config import load_params
    from srvau.cot.builder import build_rocot
    from srvau.data.ingest import ingest
    from srvau.data.synth import synthesize

    base = {"synth.n_train": n_videos, "synth.n_val": 1, "synth.n_test": 1}
    params = load_params(overrides={**base, **(overrides or {})})
    demo = tmp / "demo"
    synthesize(demo, params.synth, params.seed)
    result = ingest([demo / "train.csv"], demo / "videos", tmp / "ingest", params)
    if result.failed:
        raise SystemExit(f"ingest failed: {result.failure}")
    build_rocot(tmp / "ingest" / "manifest.parquet", tmp / "rocot", params)
    return params, demo, tmp / "rocot"


def run_training_stage(stage: str, rocot: Path, model: Path, out: Path, steps: int, overrides: list[str],
                       label: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One ``srvau sft`` / ``srvau grpo`` process of ``steps`` steps from ``model`` into ``out`` (no resume,
    a throw-away MLflow store beside ``out``), with ``overrides`` (``key=value``), in ``env`` (default: this
    process's environment; the CPU kernel and thread variables are read when the process starts).
    Returns the stage's own ``train_wall_s``, its step count and the sha256 of the merged weights; exits
    with the stage's stderr (naming ``label``) when it fails."""
    import hashlib
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    model_flag = "--base-model" if stage == "sft" else "--init-model"
    sets = [f"{stage}.max_steps={steps}", f"{stage}.save_steps={steps}", f"{stage}.resume=false",
            f"tracking.uri={(out.parent / 'mlruns').as_uri()}", *overrides]
    cmd = [sys.executable, "-m", "srvau.cli", *[a for kv in sets for a in ("--set", kv)],
           stage, "--rocot", str(rocot), model_flag, str(model), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    weights = hashlib.sha256((out / "merged" / "model.safetensors").read_bytes()).hexdigest()
    return {"train_wall_s": summary["train_wall_s"], "steps": summary["steps_this_run"], "weights_sha256": weights}


def write_results(out: Path, results: dict[str, Any], **machine: Any) -> None:
    """``results`` as JSON at ``out`` (folders made), with the machine it ran on (platform, CPU count,
    and ``machine``'s extra fields) under ``"machine"``; says where it wrote."""
    import json
    import os
    import platform

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **machine},
                               **results}, indent=2) + "\n")
    print(f"wrote {out}")


def grpo_stage_trainer(model_dir: str, out: Path, params, rocot: Path | None = None, **grpo_updates: Any):
    """The GRPO stage's own trainer for ``model_dir`` on its own prompt order (``training_rows``), with
    ``grpo_updates`` applied to ``params.grpo``; no checkpoints, no resume. ``rocot`` defaults to
    ``params.paths.rocot``."""
    from datasets import Dataset

    from srvau.modeling import load_model, load_processor
    from srvau.training import checkpoints
    from srvau.training.grpo import build_trainer, training_rows

    params = params.model_copy(update={"grpo": params.grpo.model_copy(
        update={"save_steps": 10**9, "resume": False, **grpo_updates})})
    rows = training_rows(rocot or params.resolve(params.paths.rocot), params)
    load_cfg, autocast = checkpoints.training_dtype(params.model)
    return build_trainer(load_model(model_dir, load_cfg), load_processor(model_dir, params.model),
                         Dataset.from_list(rows), params.grpo, params, out, bf16=autocast)

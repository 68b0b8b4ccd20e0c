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

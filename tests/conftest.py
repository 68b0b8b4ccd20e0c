"""Shared fixtures: a small synthetic demo set and a tiny Qwen2.5-VL built from it, once per session.

Tests never write into the project's own MLflow store, Prefect home or stage timings: all point into a temp folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="srvau-tests-"))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_SESSION_TMP / 'mlflow.db'}")
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
os.environ.setdefault("SRVAU_TIMINGS_FILE", str(_SESSION_TMP / "timings.jsonl"))  # srvau.cli.context.TIMINGS_ENV
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests import transformers directly too: the torchvision op schemas must be registered first, as srvau's
# own modules do (srvau/compat.py), or a test file run alone fails on "torchvision::nms does not exist".
from srvau.compat import ensure_torchvision  # noqa: E402

ensure_torchvision()

SHARED_VAU_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "vau-bench"

# Small but real: every split present, every default class drawn at least once in train; the tiny
# base practises reading options for a few steps only (the look-up it learns is tested on its own).
SMALL = {
    "synth.n_train": 12,
    "synth.n_val": 3,
    "synth.n_test": 6,
    "model.tiny.reading_drill_steps": 4,
}


@pytest.fixture(scope="session")
def params():
    from srvau.config import load_params

    return load_params(overrides=SMALL)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory, params) -> Path:
    """A synthetic VAU-Bench-format demo set: videos/*.mp4 and train/val/test.csv."""
    from srvau.data.synth import synthesize

    out = tmp_path_factory.mktemp("demo")
    synthesize(out, params.synth, params.seed)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, params, demo_dir) -> Path:
    """A tiny random Qwen2.5-VL (tokenizer trained on the demo texts), saved like a Hub checkpoint."""
    from srvau.modeling.tiny import build_tiny

    out = tmp_path_factory.mktemp("tiny-base")
    return build_tiny(out, params, sorted(demo_dir.glob("*.csv")))


@pytest.fixture(scope="session")
def vau_bench_dir() -> Path:
    if not SHARED_VAU_BENCH.exists():
        pytest.skip(f"real VAU-Bench CSVs not found at {SHARED_VAU_BENCH}")
    return SHARED_VAU_BENCH


@pytest.fixture(scope="session")
def ingest_dir(tmp_path_factory, params, demo_dir) -> Path:
    """The demo set through the real ingest stage: manifest.parquet + frame cache."""
    from srvau.data.ingest import ingest

    out = tmp_path_factory.mktemp("ingest")
    result = ingest(sorted(demo_dir.glob("*.csv")), demo_dir / "videos", out, params)
    assert not result.failed, result.failure
    return out


@pytest.fixture(scope="session")
def train_rocot(tmp_path_factory, demo_dir):
    """``train_rocot(params)``: the demo's train split through the real ingest and cot stages under
    ``params`` (a fresh folder each call); returns the RoCoT folder."""
    from srvau.cot.builder import build_rocot
    from srvau.data.ingest import ingest

    def make(params) -> Path:
        tmp = tmp_path_factory.mktemp("train-rocot")
        result = ingest([demo_dir / "train.csv"], demo_dir / "videos", tmp / "ingest", params)
        assert not result.failed, result.failure
        build_rocot(tmp / "ingest" / "manifest.parquet", tmp / "rocot", params)
        return tmp / "rocot"

    return make


@pytest.fixture(scope="session")
def manifest(ingest_dir):
    """The ingested demo manifest as a DataFrame (tests that need its path use ``ingest_dir``)."""
    import pandas as pd

    return pd.read_parquet(ingest_dir / "manifest.parquet")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real ``prefect server start`` for the session; flow runs get its URL as ``PREFECT_API_URL``.

    Without it every flow run starts a temporary server that must come up within 20 s, which a
    loaded 2-core machine misses (see docs/pitfalls.md); this one starts once, outside any test's
    own timing, with a generous health wait.
    """
    from services import BIN, Service, free_port

    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    svc = Service("prefect server", cmd, env, home / "server.log").start()
    try:
        svc.wait_http(f"{api}/health", timeout=300)
        yield api
    finally:
        svc.stop()

"""DVC and MLflow against a real S3 endpoint (moto_server on loopback), as infra/README.md sets them up.

- DVC: an S3 remote (``dvc remote add -d`` + ``endpointurl``), push real demo mp4s + CSVs, drop the
  cache and the workspace copy, pull: identical bytes. Pulling again with the endpoint given only by
  ``AWS_ENDPOINT_URL_S3`` checks the env-only setup the compose worker uses.
- MLflow: ``mlflow server --artifacts-destination s3://...``; our own ``stage_run`` /
  ``log_stage_metrics`` log through it from a client that has no AWS credentials at all (the server
  proxies artifacts); the object lands in the bucket and downloads identical.

The dummy credentials below exist only for the loopback moto server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services import BIN, Service, free_port

pytestmark = pytest.mark.timeout(600)

BUCKET = "srvau-test"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def aws_isolation(tmp_path_factory) -> dict[str, str]:
    """Never read a developer's real AWS config, never probe the instance metadata service."""
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    return {"AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def fake_aws(aws_isolation) -> dict[str, str]:
    return {**aws_isolation, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


def _no_aws_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}


@pytest.fixture(scope="module")
def s3(tmp_path_factory, fake_aws):
    """A moto S3 server on loopback with one bucket; yields (endpoint, boto3 client)."""
    import boto3

    port = free_port()
    logs = tmp_path_factory.mktemp("moto")
    svc = Service("moto_server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                  {**_no_aws_env(), **fake_aws}, logs / "moto.log")
    if not Path(svc.cmd[0]).exists():
        pytest.fail("moto_server missing: install the dev extra (pip install -e '.[dev]', moto[server])")
    svc.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        svc.wait_http(f"{endpoint}/moto-api/", timeout=60)
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        svc.stop()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _dvc(project: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_dvc_push_then_pull_restores_identical_files_from_s3(s3, fake_aws, tmp_path):
    from srvau.config import load_params
    from srvau.data.synth import synthesize

    endpoint, client = s3
    project = tmp_path / "project"
    project.mkdir()
    env = {**_no_aws_env(), **fake_aws}
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, env, "init", "-q")
    _dvc(project, env, "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc")
    _dvc(project, env, "remote", "modify", "s3", "endpointurl", endpoint)

    params = load_params(overrides={"synth.n_train": 2, "synth.n_val": 1, "synth.n_test": 1})
    data = project / "data"
    synthesize(data, params.synth, params.seed)
    before = _tree(data)
    assert any(k.endswith(".mp4") for k in before) and any(k.endswith(".csv") for k in before)

    _dvc(project, env, "add", "data")
    _dvc(project, env, "push")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="dvc/").get("Contents", [])]
    # one object per file plus the directory manifest, all under the remote's prefix
    assert len(keys) == len(before) + 1, keys

    shutil.rmtree(data)
    shutil.rmtree(project / ".dvc" / "cache")
    _dvc(project, env, "pull")
    assert _tree(data) == before

    # The same remote with the endpoint from the environment only (how infra/compose.yaml's worker runs).
    _dvc(project, env, "remote", "modify", "--unset", "s3", "endpointurl")
    shutil.rmtree(data)
    shutil.rmtree(project / ".dvc" / "cache")
    _dvc(project, {**env, "AWS_ENDPOINT_URL_S3": endpoint}, "pull")
    assert _tree(data) == before


@pytest.fixture(scope="module")
def mlflow_server(s3, fake_aws, tmp_path_factory):
    endpoint, _ = s3
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**_no_aws_env(), **fake_aws, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    svc = Service(
        "mlflow server",
        [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{BUCKET}/mlflow",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env, root / "server.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        # ~9 s on an idle machine; far longer when the two cores are shared.
        svc.wait_http(f"{url}/health", timeout=240)
        yield url
    finally:
        svc.stop()


def test_mlflow_server_stores_run_artifacts_in_s3_for_a_client_without_credentials(
    s3, mlflow_server, aws_isolation, tmp_path, monkeypatch
):
    import mlflow

    from srvau.config import load_params
    from srvau.tracking.runs import log_stage_metrics, stage_run

    _, client = s3
    for k in list(os.environ):
        if k.startswith(("AWS_", "MLFLOW_S3_")):
            monkeypatch.delenv(k)
    # No credentials anywhere the client could look: a direct S3 write would fail, only the proxy works.
    for k, v in aws_isolation.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    previous_uri = mlflow.get_tracking_uri()

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    weights = model_dir / "model.safetensors"
    weights.write_bytes(os.urandom(64 * 1024))
    params = load_params(overrides={"tracking.experiment": "s3-artifacts"})
    try:
        with stage_run(params, "sft") as run:
            log_stage_metrics("sft", {"loss": 0.25}, step=3)
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
        run_id = run.info.run_id

        tracking = mlflow.MlflowClient(mlflow_server)
        stored = tracking.get_run(run_id)
        assert stored.data.metrics["sft.loss"] == 0.25
        assert stored.info.artifact_uri.startswith("mlflow-artifacts:"), stored.info.artifact_uri

        key = f"mlflow/{stored.info.experiment_id}/{run_id}/artifacts/model/model.safetensors"
        obj = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert obj == weights.read_bytes()

        local = Path(tracking.download_artifacts(run_id, "model/model.safetensors", str(tmp_path / "dl")))
        assert local.read_bytes() == weights.read_bytes()
    finally:
        mlflow.set_tracking_uri(previous_uri)

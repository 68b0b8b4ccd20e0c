"""infra/ checked offline: Terraform (validate; apply against moto), compose, Kubernetes manifests and
the work-pool template, and the names that tie them to prefect.yaml.

No Docker engine and no cluster here: compose is checked with ``docker-compose config`` and
kubernetes with ``kubectl kustomize`` (client-side ``kubectl apply --dry-run`` needs an API server
for discovery, even for built-in kinds), plus structural assertions on the parsed objects, the
PyTorchJob's (a CRD, no schema offline) against the recipe it launches.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services import BIN, Service, free_port
from srvau.config import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
TF_DIR = INFRA / "terraform"
K8S_DIR = INFRA / "k8s"
COMPOSE = INFRA / "compose.yaml"
TEMPLATE = K8S_DIR / "work-pool-template.json"


def _prefect_yaml() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())


def _deployment(name: str) -> dict:
    return next(d for d in _prefect_yaml()["deployments"] if d["name"] == name)


# --------------------------------------------------------------------------------------- terraform


def _find_tf_mirror() -> Path | None:
    """The folder holding ``registry.terraform.io`` (a provider filesystem mirror), if any."""
    if env := os.environ.get("SRVAU_TF_PLUGIN_DIR"):
        return Path(env)
    known = [Path("/opt/tf-plugins"), Path.home() / ".terraform.d/plugins", Path("/usr/share/terraform/plugins"),
             Path("/usr/local/share/terraform/plugins")]
    for k in known:
        if (k / "registry.terraform.io").is_dir():
            return k
    for top in (Path("/opt"), Path("/usr/local"), Path("/srv"), Path.home()):
        for depth in ("*", "*/*", "*/*/*"):
            for hit in top.glob(f"{depth}/registry.terraform.io"):
                return hit.parent
    return None


@pytest.fixture(scope="module")
def terraform_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A temp copy of infra/terraform, initialised offline from the provider mirror."""
    if not shutil.which("terraform"):
        pytest.skip("terraform is not installed")
    mirror = _find_tf_mirror()
    if mirror is None:
        pytest.skip("no Terraform provider mirror (a folder holding registry.terraform.io) found; set SRVAU_TF_PLUGIN_DIR")
    work = tmp_path_factory.mktemp("terraform") / "tf"
    shutil.copytree(TF_DIR, work, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"))
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": os.devnull}
    proc = subprocess.run(["terraform", "init", "-input=false", "-no-color", f"-plugin-dir={mirror}"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, env


def test_terraform_validates_offline(terraform_dir):
    work, env = terraform_dir
    for cmd in (["terraform", "validate", "-no-color"], ["terraform", "fmt", "-check", "-recursive", "-no-color"]):
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    assert '"~> 5.0"' in (TF_DIR / "versions.tf").read_text()


@pytest.mark.slow  # ~80 s: the AWS provider polls the lifecycle configuration until it is stable
def test_terraform_apply_against_moto_gives_private_versioned_encrypted_buckets_and_scoped_roles(
    terraform_dir, tmp_path
):
    """A real `terraform apply` (S3, KMS, IAM, STS on a loopback moto server), then read back with boto3."""
    import boto3

    work, env = terraform_dir
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    empty = tmp_path / "empty"
    empty.write_text("")
    aws = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_EC2_METADATA_DISABLED": "true",
    }
    base = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    moto = Service("moto_server", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   {**base, **aws}, tmp_path / "moto.log").start()
    # Test-only override (Terraform merges *_override.tf): endpoints of the loopback server.
    endpoints = "\n".join(f'    {svc} = "{endpoint}"' for svc in ("s3", "iam", "sts", "kms"))
    (work / "moto_override.tf").write_text(
        'provider "aws" {\n  skip_credentials_validation = true\n  skip_metadata_api_check = true\n'
        f"  s3_use_path_style = true\n  endpoints {{\n{endpoints}\n  }}\n}}\n"
    )
    oidc = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"
    try:
        moto.wait_http(f"{endpoint}/moto-api/", timeout=60)
        proc = subprocess.run(
            ["terraform", "apply", "-input=false", "-auto-approve", "-no-color", "-var", f"eks_oidc_provider_arn={oidc}"],
            cwd=work, env={**base, **aws}, capture_output=True, text=True, timeout=480,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        out = json.loads(subprocess.run(["terraform", "output", "-json"], cwd=work, env={**base, **aws},
                                        capture_output=True, text=True, check=True, timeout=120).stdout)
        s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_kwargs())
        iam = boto3.client("iam", endpoint_url=endpoint, **_boto_kwargs())
        key_arn = out["kms_key_arn"]["value"]
        for bucket in (out["dvc_bucket"]["value"], out["mlflow_bucket"]["value"]):
            assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
            [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
            assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
            block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
            assert all(block.values()) and len(block) == 4
            policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
            assert any(st["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(st) for st in policy["Statement"])
        assert out["dvc_remote_url"]["value"] == f"s3://{out['dvc_bucket']['value']}/dvc"

        def role_docs(role_arn: str) -> tuple[dict, dict]:
            name = role_arn.rsplit("/", 1)[1]
            trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
            [att] = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
            pol = iam.get_policy(PolicyArn=att["PolicyArn"])["Policy"]
            doc = iam.get_policy_version(PolicyArn=att["PolicyArn"], VersionId=pol["DefaultVersionId"])["PolicyVersion"]
            trust = json.loads(trust) if isinstance(trust, str) else trust
            doc = doc["Document"]
            return trust, json.loads(doc) if isinstance(doc, str) else doc

        trust, access = role_docs(out["pipeline_role_arn"]["value"])
        assert "system:serviceaccount:srvau:srvau-pipeline" in json.dumps(trust)
        text = json.dumps(access)
        assert out["dvc_bucket"]["value"] in text and out["mlflow_bucket"]["value"] not in text
        assert "s3:DeleteObject" not in text and '"s3:*"' not in text and '"*"' not in text

        trust, access = role_docs(out["mlflow_server_role_arn"]["value"])
        assert "system:serviceaccount:srvau:mlflow" in json.dumps(trust)
        text = json.dumps(access)
        assert out["mlflow_bucket"]["value"] in text and out["dvc_bucket"]["value"] not in text
        assert "s3:DeleteObject" in text
    finally:
        moto.stop()


def _boto_kwargs() -> dict:
    return {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# ----------------------------------------------------------------------------------------- compose

SECRET_KEY = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|TOKEN|API_KEY)", re.I)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_stack_and_only_interpolated_secrets():
    services = _compose()["services"]
    assert {"minio", "minio-init", "mlflow", "mlflow-db", "prefect-server", "prefect-db", "prefect-worker"} <= set(services)

    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "@mlflow-db" in mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert any("mlflow" in str(a) for a in mlflow["command"][mlflow["command"].index("--allowed-hosts") + 1:])

    prefect = services["prefect-server"]
    assert prefect["environment"]["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert prefect["environment"]["PREFECT_SERVER_DATABASE_HOST"] == "prefect-db"

    worker = services["prefect-worker"]
    cmd = worker["command"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == _deployment("demo-nightly")["work_pool"]["name"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["SRVAU_PROJECT_DIR"] == "/workspace" and "..:/workspace" in worker["volumes"]

    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{name}.{key} must come from the env"
    env_example = (INFRA / ".env.example").read_text()
    needed = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    listed = {line.split("=", 1)[0] for line in env_example.splitlines() if "=" in line and not line.startswith("#")}
    assert needed == listed, f"infra/.env.example out of sync: missing {needed - listed}, extra {listed - needed}"
    assert all(line.endswith("=") for line in env_example.splitlines() if "=" in line and not line.startswith("#"))


def test_docker_compose_config_accepts_the_file_and_refuses_missing_secrets(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    work = tmp_path / "infra"
    shutil.copytree(INFRA, work, ignore=shutil.ignore_patterns("terraform", ".env"))
    env = {k: v for k, v in os.environ.items() if not SECRET_KEY.search(k) and not k.startswith(("MINIO_", "MLFLOW_DB"))}
    proc = subprocess.run([exe, "-f", "compose.yaml", "config", "-q"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "infra/.env" in proc.stderr, proc.stderr[-2000:]

    names = [line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
             if "=" in line and not line.startswith("#")]
    (work / ".env").write_text("".join(f"{n}={secrets.token_hex(8)}\n" for n in names))
    proc = subprocess.run([exe, "-f", "compose.yaml", "config"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = yaml.safe_load(proc.stdout)["services"]
    assert resolved["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


# -------------------------------------------------------------------------------------- kubernetes


def _k8s_objects() -> list[dict]:
    docs = []
    for f in sorted(K8S_DIR.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_k8s_manifests_parse_with_the_expected_kinds():
    objs = _k8s_objects()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    assert kinds == sorted([
        ("Namespace", "srvau"), ("ServiceAccount", "prefect-worker"), ("ServiceAccount", "srvau-pipeline"),
        ("Role", "prefect-worker"), ("RoleBinding", "prefect-worker"), ("Deployment", "prefect-worker"),
    ])
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(f.name for f in K8S_DIR.glob("*.yaml") if f.name != "kustomization.yaml")

    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[:3] == ["prefect", "worker", "start"] and args[args.index("--type") + 1] == "kubernetes"
    assert args[args.index("--pool") + 1] == _deployment("paper-3b")["work_pool"]["name"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    for e in c["env"]:  # secrets only by reference
        if SECRET_KEY.search(e["name"]):
            assert "secretKeyRef" in e.get("valueFrom", {}), e
    [role] = [o for o in objs if o["kind"] == "Role"]
    assert {"jobs"} <= {r for rule in role["rules"] for r in rule["resources"]}
    assert not any("*" in rule["verbs"] or "secrets" in rule["resources"] for rule in role["rules"])


def _kustomize(folder) -> list[dict]:
    """The objects `kubectl kustomize` builds from ``folder`` (offline: no cluster needed)."""
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed")
    proc = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kubectl_kustomize_builds_the_worker_and_its_config():
    objs = _kustomize(K8S_DIR)
    assert all(o["metadata"].get("namespace") == "srvau" for o in objs if o["kind"] != "Namespace")
    maps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    assert json.loads(maps["srvau-work-pool-template"]["work-pool-template.json"]) == json.loads(TEMPLATE.read_text())
    assert {"MLFLOW_TRACKING_URI", "SRVAU_DVC_REMOTE"} <= set(maps["srvau-pipeline-config"])
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    mounted = {v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert "srvau-work-pool-template" in mounted


TRAINING_DIR = K8S_DIR / "training"


def _training_objects() -> dict[str, dict]:
    kust = yaml.safe_load((TRAINING_DIR / "kustomization.yaml").read_text())
    objs = [d for f in kust["resources"] for d in yaml.safe_load_all((TRAINING_DIR / f).read_text()) if d]
    return {o["kind"]: o for o in objs}


def test_multinode_pytorchjob_runs_the_recipes_launch_over_its_replicas():
    """The PyTorchJob (Kubeflow training operator CRD: no schema offline, so its structure is checked
    here): every replica runs `srvau launch <stage>` under the paper recipe, and replicas x GPUs per pod
    is the recipe's launch.num_processes, split as srvau.launch will split it."""
    from srvau.config import load_params
    from srvau.launch import Machines, plan

    objs = _training_objects()
    assert set(objs) == {"PyTorchJob", "PersistentVolumeClaim"}
    job, claim = objs["PyTorchJob"], objs["PersistentVolumeClaim"]
    assert (job["apiVersion"], job["spec"]["runPolicy"]["backoffLimit"]) == ("kubeflow.org/v1", 0)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node reads the inputs and checkpoints
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    nodes = sum(r["replicas"] for r in replicas.values())
    per_pod = set()
    for spec in replicas.values():
        assert spec["restartPolicy"] == "Never"
        pod = spec["template"]["spec"]
        [c] = pod["containers"]
        assert c["name"] == "pytorch"  # the container the operator configures
        words = c["command"]
        recipe, stage = words[words.index("--recipe") + 1], words[-1]
        assert words[0] == "srvau" and words[-2:] == ["launch", stage] and stage in ("sft", "grpo")
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        per_pod.add(gpus)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert c["workingDir"].startswith(mounts["workspace"] + "/") and mounts["dshm"] == "/dev/shm"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert pod["serviceAccountName"] in [o["metadata"]["name"] for o in _k8s_objects() if o["kind"] == "ServiceAccount"]
        assert c["envFrom"][0]["configMapRef"]["name"] == "srvau-pipeline-config"
    [gpus] = per_pod
    params = load_params(recipe=recipe)
    assert nodes * gpus == params.launch.num_processes
    assert job["spec"]["nprocPerNode"] == str(gpus)
    # what srvau.launch makes of the pod's environment (as the operator sets it): N / machines per pod
    env = {"PET_NNODES": str(nodes), "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "srvau-grpo-master-0",
           "PET_MASTER_PORT": str(replicas["Master"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])}
    launch = plan(params, stage, env=env)
    assert launch.machines == Machines(nodes, 1, "srvau-grpo-master-0", int(env["PET_MASTER_PORT"]))
    assert launch.num_processes // launch.machines.num_machines == gpus


def test_kubectl_kustomize_builds_the_training_job():
    objs = _kustomize(TRAINING_DIR)
    assert sorted(o["kind"] for o in objs) == ["PersistentVolumeClaim", "PyTorchJob"]
    assert all(o["metadata"]["namespace"] == "srvau" for o in objs)
    # the YAML anchor shares one pod template: the built Worker equals the Master
    [job] = [o for o in objs if o["kind"] == "PyTorchJob"]
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Worker"]["template"] == specs["Master"]["template"]


def test_paper_deployment_requests_the_gpus_the_recipe_launches_on():
    from srvau.config import load_params

    paper = _deployment("paper-3b")
    launch = load_params(recipe=paper["parameters"]["recipe"]).launch
    assert paper["work_pool"]["job_variables"]["gpu_count"] == launch.num_processes
    job = _render_job({**paper["work_pool"]["job_variables"], "image": "registry.example.com/srvau:0123abc"})
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == launch.num_processes


def _render_job(job_variables: dict) -> dict:
    """The Job the Kubernetes worker would submit: template defaults + deployment values, via Prefect."""
    from prefect.utilities.templating import apply_values

    template = json.loads(TEMPLATE.read_text())
    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if v.get("default") is not None}
    values |= {"env": {}, "labels": {}, "name": "srvau-run", "command": "prefect flow-run execute"}
    values |= job_variables
    return apply_values(template["job_configuration"], values)["job_manifest"]


def test_work_pool_template_renders_a_gpu_job_the_worker_accepts():
    from prefect.utilities.schema_tools import validate

    template = json.loads(TEMPLATE.read_text())
    job_vars = dict(_deployment("paper-3b")["work_pool"]["job_variables"])
    job_vars["image"] = "registry.example.com/srvau:0123abc"  # what SRVAU_IMAGE gives at deploy time
    validate(job_vars, template["variables"], raise_on_error=True, ignore_required=False)

    job = _render_job(job_vars)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
    spec = job["spec"]["template"]["spec"]
    # what prefect-kubernetes requires of a job manifest
    assert (spec["parallelism"], spec["completions"], spec["restartPolicy"]) == (1, 1, "Never")
    [c] = spec["containers"]
    assert c["name"] == "prefect-job" and c["image"] == job_vars["image"]
    gpus = job_vars["gpu_count"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus == c["resources"]["limits"]["nvidia.com/gpu"]
    assert c["resources"]["requests"]["memory"] == job_vars["memory_request"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert not re.search(r"\{\{.*\}\}", json.dumps(job)), "unrendered placeholder in the Job"

    # names tie up with infra/k8s and infra/terraform
    objs = _k8s_objects()
    sa = [o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"]
    assert spec["serviceAccountName"] in sa
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    generated = {g["name"] for g in kust["configMapGenerator"]}
    assert c["envFrom"][0]["configMapRef"]["name"] in generated
    tf_vars = (TF_DIR / "variables.tf").read_text()
    assert re.search(r'variable "pipeline_service_account" \{[^}]*default\s*=\s*"' + spec["serviceAccountName"], tf_vars)
    ns = re.search(r'variable "k8s_namespace" \{[^}]*default\s*=\s*"([^"]+)"', tf_vars).group(1)
    assert ns == job["metadata"]["namespace"] == kust["namespace"]


def test_work_pool_template_refuses_a_deployment_without_an_image():
    from prefect.utilities.schema_tools import ValidationError, validate

    template = json.loads(TEMPLATE.read_text())
    for bad in ({}, {"image": ""}, {"image": "{{ $SRVAU_IMAGE }}"}):
        with pytest.raises(ValidationError):
            validate(bad, template["variables"], raise_on_error=True, ignore_required=False)


# ------------------------------------------------------------------------------------ credentials

CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(aws_secret_access_key|secret_key|password)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{12,}"),
]


def test_no_credentials_in_infra_or_prefect_yaml():
    files = [p for p in INFRA.rglob("*") if p.is_file() and ".terraform" not in p.parts] + [PROJECT_ROOT / "prefect.yaml"]
    for f in files:
        text = f.read_text(errors="replace")
        for pat in CREDENTIAL_PATTERNS:
            assert not pat.search(text), f"{f.relative_to(PROJECT_ROOT)} looks like it holds a credential ({pat.pattern})"

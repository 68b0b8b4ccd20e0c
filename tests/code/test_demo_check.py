"""``srvau eval demo-check``: the demo's claims read from one run's metrics.json and its GRPO reward
history in a real MLflow store; each claim fails on its own when its number goes the wrong way."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from srvau.cli import app
from srvau.evaluation.demo_check import demo_criteria, quarter_means
from srvau.evaluation.metrics import accuracy

RISING = [0.8] * 12 + [0.9] * 26 + [1.0] * 12


def reflection(first: float, final: float, w2r: float, r2w: float, reflective: int = 48) -> dict:
    return {"n": 48, "reflective": reflective, "first_accuracy": first, "final_accuracy": final,
            "wrong_to_right": w2r, "right_to_wrong": r2w}


def run_metrics() -> dict:
    """A run where every claim holds: 48 test videos, QA 30/48, classification 40/48, mIoU 52."""
    cls = {"n": 48, "multi_acc": 83.33, "multi_acc_ci95": [70.4, 91.3]}
    return {"grpo": {
        "qa": {"reflect": accuracy([True] * 30 + [False] * 18)},
        "classification": {"reflect": cls},
        "grounding": {"reflect": {"n": 48, "miou": 52.0}},
        "reflection": {"qa": reflection(50.0, 62.5, 16.67, 4.17), "classification": reflection(70.0, 83.33, 14.58, 1.25)},
        "paired": {"sft": {"pooled": {"n": 96, "this_only": 9, "other_only": 4, "difference": 5.2, "difference_ci95": [-1.0, 11.4]}}},
    }}


def holds(metrics, rewards=RISING, n_classes=6) -> dict[str, bool]:
    return {r["name"].split(" (")[0]: r["holds"] for r in demo_criteria(metrics, rewards, n_classes)}


def test_every_claim_holds_on_a_good_run_and_each_fails_alone():
    good = run_metrics()
    assert all(holds(good).values()) and len(holds(good)) == 8

    def broken(edit) -> list[str]:
        m = copy.deepcopy(good)
        edit(m["grpo"])
        return [k for k, v in holds(m).items() if not v]

    assert broken(lambda g: g["qa"].update(reflect=accuracy([True] * 16 + [False] * 32))) == ["QA above chance"]
    assert broken(lambda g: g["classification"]["reflect"].update(multi_acc_ci95=[16.0, 40.0])) == ["classification above chance"]
    assert broken(lambda g: g["grounding"]["reflect"].update(miou=39.9)) == ["grounding mIoU >= 40"]
    assert broken(lambda g: g["paired"]["sft"]["pooled"].update(this_only=3)) == ["grpo >= sft, pooled"]
    assert broken(lambda g: g["classification"]["reflect"].update(n=39)) == ["test split >= 40 videos"]
    # reflection that breaks as much as it fixes, final accuracy equal to the first
    assert broken(lambda g: g["reflection"].update(qa=reflection(50.0, 50.0, 10.0, 10.0),
                                                   classification=reflection(70.0, 70.0, 5.0, 5.0))) == [
        "reflection fixes more than it breaks", "final accuracy > first"]
    assert [k for k, v in holds(good, rewards=RISING[::-1]).items() if not v] == ["reward rises"]
    # a tie against the baseline is not a loss; chance follows the number of classes
    m = copy.deepcopy(good)
    m["grpo"]["paired"]["sft"]["pooled"].update(this_only=4)
    assert all(holds(m).values())
    assert not holds(good, n_classes=1)["classification above chance"]


def test_quarters_are_the_first_and_last_quarter_of_the_steps():
    assert quarter_means(RISING) == (pytest.approx(0.8), pytest.approx(1.0))
    assert quarter_means([1.0, 2.0, 3.0]) == (1.0, 3.0)  # under four steps: one value each
    with pytest.raises(ValueError):
        quarter_means([])


def test_cli_reads_the_newest_grpo_run_of_a_real_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from srvau.tracking.runs import TAG_RECIPE, TAG_STAGE

    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", "demo-check"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # wins over tracking.uri, as for every command
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment, artifact_location=str(tmp_path / "mlruns"))

    def grpo_run(rewards, stage="grpo", recipe="demo"):
        run = client.create_run(exp, tags={TAG_STAGE: stage, TAG_RECIPE: recipe})
        for step, r in enumerate(rewards, 1):
            client.log_metric(run.info.run_id, "grpo.reward", r, step=step)
        client.set_terminated(run.info.run_id)

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(run_metrics()))
    args = ["--set", f"tracking.experiment={experiment}", "eval", "demo-check",
            "--metrics", str(metrics)]
    runner = CliRunner()

    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "no grpo run" in res.output  # nothing logged yet
    assert "records no weights digest" in res.stderr  # no inference.json: the newest run stands in, said so
    grpo_run(RISING)
    grpo_run([5.0] * 8, stage="sft")  # another stage's run is not read
    grpo_run(RISING[::-1], recipe="vau-r1")  # nor another recipe's (make compare trains it into the same experiment)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "| reward rises (last quarter > first) | 0.800 -> 1.000 over 50 steps | yes |" in res.output
    assert "8 of 8 claims hold." in res.output
    grpo_run(RISING[::-1])  # a newer GRPO run whose reward falls
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 1
    rows = {r["name"]: r for r in json.loads(res.stdout)}  # the note goes to stderr
    assert rows["reward rises (last quarter > first)"]["holds"] is False
    res = runner.invoke(app, [*args[:-1], str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "no metrics.json" in res.output


def test_cli_reads_the_run_that_trained_the_evaluated_weights(tmp_path, monkeypatch):
    """With the weights' digest in inference.json, the reward is the run's that logged those weights,
    not the newest GRPO run's: a GRPO re-run without a new evaluation must not speak for the old model."""
    from mlflow.tracking import MlflowClient

    from srvau.tracking.models import TAG_DIGEST
    from srvau.tracking.runs import TAG_RECIPE, TAG_STAGE

    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", "demo-check"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment, artifact_location=str(tmp_path / "mlruns"))

    def grpo_run(rewards, digest, stage="grpo"):
        run = client.create_run(exp, tags={TAG_STAGE: stage, TAG_RECIPE: "demo"})
        for step, r in enumerate(rewards, 1):
            client.log_metric(run.info.run_id, "grpo.reward", r, step=step)
        client.create_logged_model(exp, name=stage, source_run_id=run.info.run_id, tags={TAG_STAGE: stage, TAG_DIGEST: digest})
        client.set_terminated(run.info.run_id)

    grpo_run(RISING, "aaa")  # trained the evaluated model
    grpo_run(RISING[::-1], "bbb")  # newer, its reward falls
    grpo_run([5.0] * 8, "ccc", stage="sft")  # SFT's weights: no GRPO run made them
    (tmp_path / "metrics.json").write_text(json.dumps(run_metrics()))
    args = ["--set", f"tracking.experiment={experiment}", "eval", "demo-check", "--metrics", str(tmp_path / "metrics.json")]
    runner = CliRunner()

    def check(digest):
        (tmp_path / "inference.json").write_text(json.dumps({"grpo": {"checkpoint": "models/grpo/merged", "checkpoint_sha256": digest}}))
        return runner.invoke(app, args)

    res = check("aaa")
    assert res.exit_code == 0, res.output
    assert "| reward rises (last quarter > first) | 0.800 -> 1.000 over 50 steps | yes |" in res.output
    assert check("bbb").exit_code == 1
    for unknown in ("ccc", "ddd"):
        res = check(unknown)
        assert res.exit_code == 2 and "logged the evaluated model" in res.output

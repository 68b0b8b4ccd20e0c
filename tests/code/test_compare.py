"""Recipes side by side (``srvau eval compare``): each run read in its own prompt style, intervals shown, a
winner named only where the intervals separate."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from srvau.cli import app
from srvau.evaluation.compare import compare
from srvau.evaluation.metrics import accuracy, grounding


def _metrics(style: str, qa_right: int, n: int = 40) -> dict:
    qa = accuracy([True] * qa_right + [False] * (n - qa_right))
    tag = grounding([0.6] * 10)
    other = "think" if style == "reflect" else "reflect"
    worse = accuracy([False] * n)  # the style the run does not train for must not be read
    return {"grpo": {"qa": {style: qa, other: worse}, "grounding": {style: tag}, "reflection": {"qa": {"first_accuracy": 50.0}}}}


def test_each_run_in_its_own_style_and_winner_only_when_intervals_separate(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_metrics("reflect", 36)))
    b.write_text(json.dumps(_metrics("think", 12)))
    res = compare({"srvau-r1": (a, "reflect"), "vau-r1": (b, "think")}, tmp_path / "out", models=("grpo",))
    qa = next(r for r in res["models"]["grpo"] if r["task"] == "qa")
    assert qa["srvau-r1"]["value"] == 90.0 and qa["vau-r1"]["value"] == 30.0
    assert qa["verdict"] == "srvau-r1 ahead"
    miou = next(r for r in res["models"]["grpo"] if r["metric"] == "miou")
    assert miou["verdict"] == "not resolved (intervals overlap)"
    assert list(res["reflection"]) == ["srvau-r1"]  # a single-pass run has no reflection to report
    html = (tmp_path / "out" / "report.html").read_text()
    assert "srvau-r1 (reflect)" in html and "vau-r1 (think)" in html and "[" in html


def test_each_run_is_weighed_against_the_video_blind_prior(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    prior = {"qa": {"reflect": accuracy([True] * 10 + [False] * 30), "think": accuracy([True] * 10 + [False] * 30)},
             "grounding": {"reflect": grounding([0.9] * 10), "think": grounding([0.9] * 10)}, "fit": {"qa": "A"}}
    a.write_text(json.dumps({"prior": prior, **_metrics("reflect", 36)}))
    b.write_text(json.dumps(_metrics("think", 12)))  # without a prior: the first run's is used
    res = compare({"srvau-r1": (a, "reflect"), "vau-r1": (b, "think")}, tmp_path / "out", models=("grpo",))
    rows = {r["task"]: r for r in res["prior"]}
    assert rows["qa"]["prior"]["value"] == 25.0
    assert rows["qa"]["srvau-r1"] == "ahead" and rows["qa"]["vau-r1"] == "not separated"  # 90 and 30 against 25
    assert rows["grounding"]["srvau-r1"] == "behind" == rows["grounding"]["vau-r1"]  # 60 against the prior's 90
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Against the prior" in html
    assert "Against the video-blind prior, srvau-r1 is ahead on QA accuracy, behind on grounding mIoU." in html
    no_prior = compare({"x": (b, "think")}, tmp_path / "o2", models=("grpo",))
    assert no_prior["prior"] == [] and "Against the prior" not in (tmp_path / "o2" / "report.html").read_text()


def test_close_runs_are_not_resolved(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_metrics("reflect", 22)))
    b.write_text(json.dumps(_metrics("think", 20)))
    res = compare({"x": (a, "reflect"), "y": (b, "think")}, tmp_path / "out", models=("grpo",))
    assert next(r for r in res["models"]["grpo"] if r["task"] == "qa")["verdict"].startswith("not resolved")


def test_cli_reports_a_missing_run_clearly(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_metrics("reflect", 30)))
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", "compare", "--run", f"a={a}:reflect", "--run", f"b={a}:think", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "compare.json").is_file()
    bad = runner.invoke(app, ["eval", "compare", "--run", f"a={tmp_path / 'nope.json'}:reflect", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "no metrics file" in bad.output
    bad = runner.invoke(app, ["eval", "compare", "--run", f"a={a}", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2 and "LABEL=METRICS_JSON:STYLE" in bad.output


@pytest.mark.parametrize("recipe", ["vau-r1", None])
def test_compare_selects_each_recipe_as_dvc_composes_it(tmp_path, recipe):
    """Regression: the default run passed `-S recipe=null`, which DVC's Hydra composition refuses
    ("Config group override must be a string or a list"): make compare died after the baseline."""
    from dvc.utils.hydra import compose_and_dump

    from flows.compare import experiment_overrides
    from srvau.config import PROJECT_ROOT, load_params

    out = tmp_path / "params.yaml"
    compose_and_dump(str(out), str(PROJECT_ROOT / "configs"), None, "defaults", str(PROJECT_ROOT),
                     ["recipe=vau-r1", *experiment_overrides(recipe)])  # the workspace after the baseline's experiment
    composed = load_params(out)
    assert composed.recipe == recipe
    # Regression: the baseline's registered version took @champion from the pipeline's own model
    assert composed.register_.auto_promote is False and load_params().register_.auto_promote is True

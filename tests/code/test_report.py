"""The evaluation report leads with the answer: the headline (main metric per task, 95% interval, reflection
gain) equals metrics.json, paths are never absolute, the recipe comparison reads the same headline, and a
real headless Chromium draws the page."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from srvau.evaluation import headline as H
from srvau.evaluation.compare import compare
from srvau.evaluation.metrics import accuracy, classification, grounding, mean_metric, wilson_ci
from srvau.evaluation.report import display_path, write_report


def _refl(first: int, final: int, n: int) -> dict:
    """A ``reflection.<task>`` entry with ``first``/``final`` right answers out of ``n`` reflective traces."""
    return {"n": n, "reflective": n, "malformed_share": 0.0,
            "first_accuracy": round(first / n * 100, 2), "first_accuracy_ci95": wilson_ci(first, n),
            "final_accuracy": round(final / n * 100, 2), "final_accuracy_ci95": wilson_ci(final, n)}


def _model(qa_right: int, iou: float, cls_right: int, recall: float, gains: bool = True, n: int = 48) -> dict:
    """A model's metrics.json entry, made by the metric functions the stage uses."""
    reflect = {
        "qa": accuracy([True] * qa_right + [False] * (n - qa_right)),
        "grounding": grounding([iou] * 30 + [max(iou - 0.2, 0.0)] * 8),
        "classification": classification([(True, True)] * cls_right + [(False, False)] * (n - cls_right)),
        "description": {"n": n, **mean_metric("keyword_recall", [recall] * (n // 2) + [recall / 2] * (n - n // 2))},
    }
    out = {task: {"reflect": m, "think": accuracy([False] * n) if task == "qa" else m} for task, m in reflect.items()}
    if gains:
        out["reflection"] = {"qa": _refl(qa_right - 3, qa_right, n), "grounding": _refl(0, 20, 38),
                             "classification": _refl(cls_right, cls_right, n)}
    else:  # an untrained model: no well-formed trace, so no first/final pair
        out["reflection"] = {t: {"n": n, "reflective": 0, "malformed_share": 100.0, "first_accuracy": None,
                                 "final_accuracy": None} for t in ("qa", "grounding", "classification")}
    return out


METRICS = {
    "base": _model(0, 0.0, 0, 0.0, gains=False),
    "sft": _model(11, 0.5, 24, 0.34),
    "grpo": _model(14, 0.55, 25, 0.25),
}
KEY = {"qa": "accuracy", "grounding": "miou", "classification": "multi_acc", "description": "keyword_recall"}


def test_headline_rows_are_metrics_json_values():
    rows = H.headline_rows(METRICS)
    assert [(r["model"], r["task"]) for r in rows] == [(m, t) for m in METRICS for t in KEY]
    for r in rows:
        cell = METRICS[r["model"]][r["task"]]["reflect"]
        assert r["metric"] == KEY[r["task"]] and r["style"] == "reflect"
        assert r["value"] == cell[KEY[r["task"]]] and r["n"] == cell["n"]
        assert r["ci95"] == tuple(cell[f"{KEY[r['task']]}_ci95"])
        refl = METRICS[r["model"]]["reflection"].get(r["task"])
        if r["task"] == "description" or r["model"] == "base":
            assert r["reflection_gain"] is None  # no reflection pair to compare
        else:
            assert r["reflection_gain"] == round(refl["final_accuracy"] - refl["first_accuracy"], 2)
    grpo = {r["task"]: r for r in rows if r["model"] == "grpo"}
    assert grpo["qa"]["reflection_gain"] == 6.25 and grpo["classification"]["reflection_gain"] == 0.0
    assert grpo["qa"]["value"] == 29.17 and grpo["qa"]["ci95"] == (18.24, 43.18)


def test_headline_reads_the_primary_style_and_single_pass_styles_have_no_gain():
    rows = {(r["model"], r["task"]): r for r in H.headline_rows(METRICS, style="think")}
    assert rows[("grpo", "qa")]["value"] == 0.0 == METRICS["grpo"]["qa"]["think"]["accuracy"]
    assert all(r["reflection_gain"] is None for r in rows.values())
    # a key that is not a model's metrics is not a model
    assert [r["model"] for r in H.headline_rows({"note": "x", **METRICS})][:1] == ["base"]


def test_headline_markdown_shows_value_interval_and_gain():
    md = H.headline_markdown(METRICS)
    lines = md.splitlines()
    assert lines[0] == "| model | QA accuracy | grounding mIoU | 20-way classification | description keyword recall |"
    grpo = next(line for line in lines if line.startswith("| grpo |"))
    assert "29.2 [18.2, 43.2] (reflection +6.3)" in grpo  # 6.25 rounds half up, as a reader would
    assert "(reflection 0.0)" in grpo and grpo.rstrip(" |").endswith("]")  # description: no gain
    base = next(line for line in lines if line.startswith("| base |"))
    assert "0.0 [0.0, 7.4]" in base and "reflection" not in base
    assert "95% interval" in md


def test_answer_calls_a_model_ahead_only_where_intervals_separate():
    sentence = H.answer(METRICS, split="test", videos=48)
    assert sentence.startswith("grpo vs sft vs base on the test split, n=48 videos (reflect prompts): grpo is ")
    assert "ahead of base on all 4 tasks" in sentence
    # grpo's QA [18.2, 43.2] overlaps sft's: not separated; its description recall is lower and clear of sft's
    assert "not separated on QA accuracy, grounding mIoU and 20-way classification" in sentence
    assert "behind sft on description keyword recall" in sentence
    a, b = {"value": 50.0, "ci95": (45.0, 55.0)}, {"value": 30.0, "ci95": (20.0, 44.9)}
    assert H.separation(a, b) == "ahead" and H.separation(b, a) == "behind"
    assert H.separation(a, {"value": 40.0, "ci95": (30.0, 45.0)}) == "not separated"
    assert H.separation(a, {"value": None, "ci95": None}) is None


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(x) for x in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _report(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    info = {"split": "test", "videos": 48,
            "models": {"base": str(project / "models" / "tiny-base"), "sft": str(project / "models" / "sft" / "merged"),
                       "grpo": str(tmp_path / "elsewhere" / "grpo")},
            "primary_style": "reflect"}
    return write_report(METRICS, {m: [] for m in METRICS}, tmp_path / "out" / "report.html", info, root=project)


def test_report_leads_with_answer_headline_and_figure(tmp_path):
    html = _report(tmp_path).read_text()
    order = [html.index(s) for s in ('class="answer"', "<h2>Headline</h2>", 'alt="Main metric per task', "<h2>Metrics</h2>")]
    assert order == sorted(order), "answer, headline table, figure, then the details"
    assert html.index("grpo vs sft vs base on the test split, n=48 videos") < html.index("<h2>Headline</h2>")
    head = html[html.index("<h2>Headline</h2>"):html.index("<h2>Run</h2>")]
    for r in H.headline_rows(METRICS):
        assert H.fmt_value(r["value"], r["ci95"]) in head  # every value with its interval
    assert "<td class=\"num\">+6.3</td>" in head and "reflection gain" in head
    figure = tmp_path / "out" / "figures" / "headline.png"
    assert figure.read_bytes() in _pngs(html)
    import matplotlib.image

    assert min(matplotlib.image.imread(figure).shape[:2]) > 300


def test_report_shows_no_absolute_path(tmp_path):
    html = re.sub(r"data:image/png;base64,[^\"]+", "", _report(tmp_path).read_text())  # base64 may spell anything
    assert str(tmp_path) not in html and "/tmp" not in html
    assert "models/tiny-base" in html and "models/sft/merged" in html
    assert "elsewhere/grpo" in html  # outside the project: relative to the folder both share
    assert display_path("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path) == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert display_path(str(tmp_path / "a" / "b"), tmp_path) == "a/b"
    assert display_path("/opt/weights/ckpt", tmp_path) == ".../ckpt"


def test_compare_reads_the_same_headline(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(METRICS))
    b.write_text(json.dumps({"grpo": _model(30, 0.6, 40, 0.5, gains=False)}))
    res = compare({"srvau-r1": (a, "reflect"), "vau-r1": (b, "reflect")}, tmp_path / "cmp", models=("grpo",))
    rows = res["models"]["grpo"]
    ours = {r["task"]: r for r in H.headline_rows(METRICS) if r["model"] == "grpo"}
    assert [r["task"] for r in rows] == list(KEY)
    for r in rows:
        assert r["metric"] == ours[r["task"]]["metric"]
        assert r["srvau-r1"]["value"] == ours[r["task"]]["value"]
        assert r["srvau-r1"]["reflection_gain"] == ours[r["task"]]["reflection_gain"]
    cls = next(r for r in rows if r["task"] == "classification")
    assert cls["verdict"] == "vau-r1 ahead"  # 83.3 [70.4, 91.3] vs 52.1 [38.3, 65.5]
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "grpo: vau-r1 ahead on" in html and "29.2 [18.2, 43.2]" in html and "reflection +6.3" in html


def test_a_report_rendered_anew_shows_the_prior_that_has_no_predictions(tmp_path):
    from srvau.evaluation.screenshot import render_report

    prior = {"qa": {"reflect": accuracy([True] * 12 + [False] * 36)}, "grounding": {"reflect": grounding([0.57] * 38)},
             "fit": {"qa": "A", "grounding": [0.34, 0.8]}}
    ev = tmp_path / "eval"
    (ev / "predictions").mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps({"prior": prior, "grpo": METRICS["grpo"]}))
    (ev / "predictions" / "grpo.jsonl").write_text("")  # the prior generates nothing, so it has no file
    html = render_report(ev, tmp_path / "out").read_text()
    assert "<th>prior</th><th>grpo</th>" in html and "57.0 [" in html
    assert "grpo vs prior" in html and "behind prior on grounding mIoU" in html


# ----------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_headless_chromium_screenshots_the_report(tmp_path):
    from PIL import Image, ImageStat

    from srvau.evaluation.screenshot import ScreenshotError, check_picture, screenshot

    page = _report(tmp_path)
    png = screenshot(page.resolve().as_uri(), tmp_path / "report.png", (1000, 900))
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1000, 900)
        rgb = im.convert("RGB")
        grey = rgb.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 20  # text, table rules and bars, not a flat page
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 200  # anti-aliased text and the figure's colours
        dark = sum(1 for v in grey.getdata() if v < 100)
        assert dark > 0.005 * 1000 * 900  # text was drawn
    # the check the make target relies on refuses an empty page
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body style='background:#fff'></body></html>")
    with pytest.raises(ScreenshotError, match="blank"):
        screenshot(blank.resolve().as_uri(), tmp_path / "blank.png", (400, 300))
    with pytest.raises(ScreenshotError, match="expected a PNG of"):
        check_picture(png, (800, 600))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_headless_chromium_screenshots_the_mlflow_model_version_page(tmp_path):
    """A real `mlflow server` on a copy of a store holding one registered version; the UI is drawn, the store untouched."""
    from mlflow.tracking import MlflowClient

    from srvau.evaluation.screenshot import MODEL_NAME, mlflow_picture

    db = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("shots", artifact_location=(tmp_path / "art").as_uri()))
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                tags={"metric.qa.reflect.accuracy": "29.17"})
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    before = db.read_bytes()
    png = mlflow_picture(db, tmp_path / "mv.png", size=(1200, 800))  # checks size and that it is not blank
    assert db.read_bytes() == before
    from PIL import Image, ImageStat

    with Image.open(png) as im:
        assert im.size == (1200, 800) and ImageStat.Stat(im.convert("L")).stddev[0] > 20


def test_paired_table_calls_a_step_ahead_only_when_its_interval_excludes_zero():
    from srvau.evaluation.metrics import paired_difference, paired_mean_difference
    from srvau.evaluation.headline import paired_verdict
    from srvau.evaluation.report import paired_table

    ahead = paired_difference([True] * 60 + [False] * 36, [True] * 48 + [False] * 48)
    unresolved = paired_difference([True] * 54 + [False] * 6 + [True] * 6 + [False] * 30,
                                   [True] * 54 + [True] * 6 + [False] * 6 + [False] * 30)
    results = {"sft": {}, "grpo": {"paired": {"sft": {"pooled": ahead, "qa": unresolved,
                                                      "grounding": paired_mean_difference([0.2] * 10, [0.5] * 10)}}}}
    table = paired_table(results)
    rows = re.findall(r"<tr><th>grpo &minus; sft</th><td>([^<]+)</td>.*?<td>(\w[\w ]*)</td></tr>", table)
    assert rows == [("QA + classification, pooled", "ahead"), ("QA accuracy", "not resolved"), ("grounding mean IoU", "behind")]
    assert "+12.5" in table and "12 / 0" in table
    assert paired_verdict(None) == "n/a" and paired_verdict([-1.0, 2.0]) == "not resolved"
    assert "nothing to pair" in paired_table({"grpo": METRICS["grpo"]})


def test_the_answer_ends_with_the_paired_step_when_there_is_one():
    from srvau.evaluation.metrics import paired_difference

    ahead = paired_difference([True] * 60 + [False] * 36, [True] * 48 + [False] * 48)
    metrics = {**METRICS, "grpo": {**METRICS["grpo"], "paired": {"sft": {"pooled": ahead}}}}
    sentence = H.answer(metrics, split="test", videos=48)
    assert sentence.startswith(H.answer(METRICS, split="test", videos=48))
    low, high = ahead["difference_ci95"]
    assert sentence.endswith(f" Paired with sft on the same prompts, QA + classification: +12.5 points [{low:.1f}, {high:.1f}], ahead.")

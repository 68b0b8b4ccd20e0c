"""The evaluate stage: batched generation (== one at a time), prediction records, metrics, report, CLI."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path

import pytest

from srvau.contract.prompts import system_prompt, task_prompt
from srvau.contract.trace import render_trace
from srvau.contract.vocab import STYLES, TASKS
from srvau.evaluation.inference import (
    ManifestError,
    Sample,
    build_samples,
    ground_truth,
    make_record,
    read_manifest,
    run_inference,
)
from srvau.evaluation.metrics import pct
from srvau.evaluation.report import write_report
from srvau.io import read_jsonl
from srvau.modeling.generation import Generation, GenerationSettings, chat_text, generate_batch, generation_kwargs
from srvau.evaluation.stage import compute_metrics, evaluate, paired_metrics, per_class_accuracy, transition_counts


@pytest.fixture(scope="module")
def manifest(ingest_dir) -> Path:
    return ingest_dir / "manifest.parquet"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, params):
    from srvau.modeling import load_model, load_processor

    return load_model(tiny_model_dir, params.model).eval(), load_processor(tiny_model_dir, params.model)


@pytest.fixture(scope="module")
def mixed_samples(manifest, params, tmp_path_factory) -> list[Sample]:
    """Prompts of every task and style over clips of two sizes: 16 frames of 112x112 (the policy) and
    8 frames of 56x56 (cached here with a smaller policy), so a batch pads text *and* vision tokens."""
    from srvau.video.probe import sample_inprocess

    rows = read_manifest(manifest, "test")
    samples = build_samples(rows, manifest.parent, TASKS, STYLES, params.video)
    small_policy = params.video.model_copy(update={"max_frames": 8, "max_pixels_per_frame": 56 * 56})
    out = tmp_path_factory.mktemp("small-clips")
    small = {}
    for row in rows.head(2).to_dict("records"):
        video = Path(row["source_csv"]).parent / "videos" / row["video_name"]
        sample_inprocess(str(video), small_policy, str(out / f"{row['video_name']}.npz"))
        small[row["video_id"]] = str(out / f"{row['video_name']}.npz")
    picked, seen = [], set()
    for s in samples:  # one sample per (task, style), alternating clip sizes
        if (s.task, s.style) in seen:
            continue
        seen.add((s.task, s.style))
        if len(picked) % 2 and s.video_id in small:
            s = dataclasses.replace(s, frames_path=small[s.video_id])
        picked.append(s)
    assert {s.frames_path for s in picked} & set(small.values()), "no small clip in the mix"
    return picked[:9]


def _clips(samples):
    from srvau.video.cache import load_frames

    return [load_frames(s.frames_path) for s in samples]


def test_batched_generation_equals_one_at_a_time(tiny, mixed_samples):
    """Greedy, left padding, several videos per forward: exactly the tokens of one-at-a-time generation."""
    model, proc = tiny
    gk = generation_kwargs(model, proc.tokenizer, GenerationSettings(max_new_tokens=10))
    texts = [chat_text(proc, s.prompt, s.system) for s in mixed_samples]
    clips = _clips(mixed_samples)
    batched = generate_batch(model, proc, texts, clips, gk)
    singles = [generate_batch(model, proc, [t], [c], gk)[0] for t, c in zip(texts, clips)]
    assert len({g.prompt_tokens for g in batched}) > 2, "the batch must actually need padding"
    assert {c[0].shape for c in clips} == {(16, 112, 112, 3), (8, 56, 56, 3)}
    for b, s in zip(batched, singles):
        assert b.prompt_tokens == s.prompt_tokens
        assert b.token_ids == s.token_ids
        assert b.text == s.text


def test_run_inference_batches_keep_order_and_outputs(tiny, mixed_samples, tmp_path):
    model, proc = tiny
    settings = GenerationSettings(max_new_tokens=6)
    out = tmp_path / "pred.jsonl"
    recs, stats = run_inference(model, proc, mixed_samples, settings, batch_size=4, model_label="m", out_jsonl=out, progress=False)
    ref, _ = run_inference(model, proc, mixed_samples, settings, batch_size=1, model_label="m", progress=False, sort_by_length=False)
    assert [(r["video_id"], r["task"], r["style"]) for r in recs] == [s.key for s in mixed_samples]
    assert [r["output"] for r in recs] == [r["output"] for r in ref]
    assert stats.batches == 3 and stats.samples == len(mixed_samples) and stats.padding_share > 0
    assert read_jsonl(out) == recs and not out.with_name(out.name + ".partial").exists()
    for r in recs:
        assert r["prompt"] == next(s.prompt for s in mixed_samples if s.key == (r["video_id"], r["task"], r["style"]))
        assert r["new_tokens"] <= 6 and r["prompt_tokens"] > 0 and r["model"] == "m"
        assert {"output", "first_answer", "final_answer", "truth", "system"} <= set(r)


def test_length_order_keeps_each_videos_prompts_together_longest_first():
    """A batch then holds few distinct videos, each encoded once (srvau.modeling.generation)."""
    from srvau.evaluation.inference import Sample, length_order

    def sample(video, vision):
        return Sample(video, "qa", "reflect", "", "", f"/cache/{video}.npz", {}, vision)

    samples = [sample("a", 100), sample("b", 300), sample("a", 100), sample("c", 100), sample("b", 300)]
    text = [50, 10, 5, 80, 20]  # c's one prompt (180) outgrows a's longest (150); b (320) leads
    order = length_order(samples, text)
    assert [samples[i].video_id for i in order] == ["b", "b", "c", "a", "a"]
    assert order == [4, 1, 3, 0, 2]  # within a video, longest prompt first


def test_vision_placeholders_are_suppressed(tiny, mixed_samples):
    """With the placeholder logits forced to the top, generation still never emits them."""
    import torch

    from srvau.modeling import vision_token_ids

    model, proc = tiny
    banned = vision_token_ids(proc.tokenizer)
    assert len(banned) == 5

    def boost(module, args, output):
        output[..., banned] += 1e4
        return output

    handle = model.lm_head.register_forward_hook(boost)
    try:
        s = mixed_samples[:2]
        texts, clips = [chat_text(proc, x.prompt, x.system) for x in s], _clips(s)
        from srvau.modeling.inputs import processor_inputs

        with torch.inference_mode():
            logits = model(**processor_inputs(proc, texts[:1], [clips[0][0]], [clips[0][1]])).logits
        assert int(logits[0, -1].argmax()) in banned  # the hook does make them the greedy choice
        gens = generate_batch(model, proc, texts, clips, generation_kwargs(model, proc.tokenizer, GenerationSettings(max_new_tokens=6)))
    finally:
        handle.remove()
    assert all(len(g.token_ids) == 6 and not set(g.token_ids) & set(banned) for g in gens)


def test_samples_follow_ground_truth_rules(manifest, params):
    rows = read_manifest(manifest, "test")
    samples = build_samples(rows, manifest.parent, TASKS, ("reflect", "direct"), params.video)
    by_task = {t: {s.video_id for s in samples if s.task == t} for t in TASKS}
    anomaly = set(rows.loc[rows["interval_kind"] == "anomaly", "video_id"])
    assert by_task["grounding"] == anomaly and anomaly < set(rows["video_id"])  # normal rows excluded
    assert by_task["qa"] == set(rows.loc[rows["has_qa"], "video_id"])
    assert len(samples) == 2 * sum(len(v) for v in by_task.values())
    for s in samples:
        row = rows[rows["video_id"] == s.video_id].iloc[0].to_dict()
        assert s.prompt == task_prompt(s.task, row) and s.system == system_prompt(s.style, s.task)
        assert Path(s.frames_path).is_file() and s.est_vision_tokens == 128  # 16 frames of 112x112
        if s.task == "grounding":
            assert (s.truth["start_s"], s.truth["end_s"]) == (row["start_s"], row["end_s"])
        if s.task == "qa":
            assert s.truth["answer"] == row["correct_option"]


def test_ground_truth_exclusions():
    base = {"anomaly_class": "Fire", "interval_kind": "anomaly", "start_s": 0.0, "end_s": 4.0, "has_qa": True,
            "question": "Q?", "correct_option": "b", "description": "d", "reasoning": "r", "key_object": "k"}
    assert ground_truth("grounding", base)["start_s"] == 0.0  # 0,N is a real interval
    assert ground_truth("grounding", {**base, "interval_kind": "normal", "end_s": 0.0}) is None
    assert ground_truth("grounding", {**base, "interval_kind": "unavailable", "start_s": float("nan")}) is None
    assert ground_truth("qa", base)["answer"] == "B"
    assert ground_truth("qa", {**base, "has_qa": False}) is None
    assert ground_truth("qa", {**base, "correct_option": None}) is None
    assert ground_truth("classification", {**base, "anomaly_class": None}) is None
    assert ground_truth("description", {**base, "description": "-1"}) is None
    with pytest.raises(ValueError, match="unknown task"):
        ground_truth("captioning", base)


def test_manifest_errors(tmp_path, manifest):
    import pandas as pd

    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.parquet", "test")
    with pytest.raises(ManifestError, match="no row in split 'holdout'"):
        read_manifest(manifest, "holdout")
    pd.read_parquet(manifest).drop(columns=["frames_path"]).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="frames_path"):
        read_manifest(tmp_path / "m.parquet", "test")
    assert len(read_manifest(manifest, "test", limit=2)) == 2


# ----------------------------------------------------------------------------- metrics from handwritten outputs


def _rec(task, style, output, truth, model="m", vid="v"):
    s = Sample(vid, task, style, system_prompt(style, task), "p", "", truth)
    return make_record(s, Generation(output, [1, 2], 10), model)


def handwritten_records(model="m"):
    fire = {"anomaly_class": "Fire", "interval_kind": "anomaly"}
    qa = [
        ("v1", render_trace("t", "A", "no, B", "t2", "B"), "B"),  # wrong -> right
        ("v2", render_trace("t", "C", "fine", "t2", "C"), "C"),  # right -> right
        ("v3", render_trace("t", "D", "hmm", "t2", "A"), "D"),  # right -> wrong
    ]
    recs = [_rec("qa", "reflect", o, {**fire, "answer": g}, model, v) for v, o, g in qa]
    recs += [
        # first [2,4] vs gt [2,6]: IoU 0.5; final [3,7]: overlap 3 / span 5 = 0.6
        _rec("grounding", "reflect", render_trace("t", "Anomaly", "r", "t", "Anomaly", (2, 4), (3, 7)),
             {**fire, "answer": "Anomaly", "start_s": 2.0, "end_s": 6.0}, model, "v1"),
        # 0,N interval, exact final answer in mm:ss, first pass missing its interval: IoU 0 -> 1
        _rec("grounding", "reflect", "<think>t</think><answer>Anomaly</answer><reflection>r</reflection>"
             "<think>t</think><answer>Anomaly</answer><glue>[00:00, 00:04]</glue>",
             {**fire, "answer": "Anomaly", "start_s": 0.0, "end_s": 4.0}, model, "v2"),
        _rec("classification", "direct", "<answer>fire</answer>", {**fire, "answer": "Fire"}, model, "v1"),
        _rec("classification", "direct", "<answer>Normal</answer>", {**fire, "answer": "Explosion"}, model, "v2"),
        _rec("classification", "direct", "no idea", {**fire, "answer": "Normal"}, model, "v3"),
        _rec("classification", "direct", "<answer>Traffic accident</answer>", {**fire, "answer": "Traffic_accident"}, model, "v4"),
        _rec("description", "think", "<think>a</think><answer>Flames.</answer>", {**fire, "answer": "Fire burns."}, model, "v1"),
    ]
    return recs


def test_metrics_from_handwritten_outputs():
    recs = handwritten_records()
    assert [r["first_answer"] for r in recs[:3]] == ["A", "C", "D"]
    assert [r["final_answer"] for r in recs[:3]] == ["B", "C", "A"]
    assert recs[3]["first_answer"] == [2.0, 4.0] and recs[3]["final_answer"] == [3.0, 7.0]
    assert recs[4]["final_answer"] == [0.0, 4.0]
    m = compute_metrics(recs)
    assert m["qa"]["reflect"] == {"n": 3, "accuracy": 66.67, "accuracy_ci95": [20.77, 93.85], "well_formed": 100.0, "truncated": 0.0,
                                  # the handwritten prompts ("p") are no QA prompts: no choice to read
                                  "named_share": 0.0, "named_share_ci95": [0.0, 56.15], "seen_accuracy": None,
                                  "seen_accuracy_ci95": None, "lookup_accuracy": None, "lookup_accuracy_ci95": None}
    g = m["grounding"]["reflect"]
    assert (g["n"], g["miou"], g["r@0.3"], g["r@0.5"], g["r@0.7"]) == (2, 80.0, 100.0, 100.0, 50.0)
    # one rule (srvau.contract.scoring.well_formed): a grounding pass without <glue> is malformed
    assert g["well_formed"] == 50.0
    c = m["classification"]["direct"]
    assert (c["n"], c["binary_acc"], c["multi_acc"], c["well_formed"]) == (4, 50.0, 50.0, 75.0)
    d = m["description"]["think"]
    assert (d["n"], d["well_formed"], d["keyword_recall"]) == (1, 100.0, 0.0)  # "flames" vs {fire, burns}
    rq = m["reflection"]["qa"]
    assert (rq["wrong_to_right"], rq["right_to_wrong"], rq["right_to_right"], rq["wrong_to_wrong"]) == (33.33, 33.33, 33.33, 0.0)
    assert (rq["first_accuracy"], rq["final_accuracy"]) == (66.67, 66.67)
    rg = m["reflection"]["grounding"]
    # transitions over well-formed traces only: the trace whose first pass lacks <glue> is left out
    assert (rg["n"], rg["reflective"], rg["malformed_share"]) == (2, 1, 50.0)
    assert (rg["miou_first"], rg["miou_final"], rg["iou_change"]) == (50.0, 60.0, 10.0)
    assert (rg["wrong_to_right"], rg["right_to_right"]) == (0.0, 100.0)  # right = IoU >= 0.5
    assert "classification" not in m["reflection"]  # no reflect-style classification outputs
    assert transition_counts(recs, 0.5)[:4] == [
        {"task": "qa", "first": "right", "final": "right", "count": 1},
        {"task": "qa", "first": "right", "final": "wrong", "count": 1},
        {"task": "qa", "first": "wrong", "final": "right", "count": 1},
        {"task": "qa", "first": "wrong", "final": "wrong", "count": 0},
    ]
    assert per_class_accuracy(recs, "direct") == [
        {"class": "Explosion", "accuracy": 0.0, "n": 1},
        {"class": "Fire", "accuracy": 100.0, "n": 1},
        {"class": "Normal", "accuracy": 0.0, "n": 1},
        {"class": "Traffic_accident", "accuracy": 100.0, "n": 1},
    ]


def _scored(video: int, task: str, right: bool | None = None, iou: float | None = None, style: str = "reflect") -> dict:
    return {"video_id": f"demo/{video:04d}", "prompt": f"{task}?", "task": task, "style": style,
            "final_correct": right, "iou_final": iou}


def test_paired_metrics_match_prompts_not_positions():
    """Records are paired by (video, prompt), whatever their order; a prompt one model did not answer,
    and other prompt styles, are left out."""
    this = [_scored(v, "qa", v < 8) for v in range(10)] + [_scored(v, "classification", v % 2 == 0) for v in range(10)]
    this += [_scored(v, "grounding", iou=0.6) for v in range(4)] + [_scored(0, "qa", False, style="direct")]
    other = [_scored(v, "qa", v < 5) for v in reversed(range(9))] + [_scored(v, "classification", v % 2 == 0) for v in range(10)]
    other += [_scored(v, "grounding", iou=0.4) for v in range(4)] + [_scored(0, "qa", True, style="direct")]
    m = paired_metrics(this, other, "reflect")
    assert (m["qa"]["n"], m["qa"]["this_only"], m["qa"]["other_only"], m["qa"]["difference"]) == (9, 3, 0, 33.33)
    assert (m["classification"]["this_only"], m["classification"]["other_only"], m["classification"]["difference"]) == (0, 0, 0.0)
    assert (m["pooled"]["n"], m["pooled"]["this_only"], m["pooled"]["difference"]) == (19, 3, pct(3 / 19))
    assert m["grounding"]["n"] == 4 and m["grounding"]["difference"] == 20.0
    assert "pooled" not in paired_metrics(this[:10], other[:9], "reflect")  # QA alone: nothing to pool


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(x) for x in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_html_has_table_and_readable_images(tmp_path):
    import matplotlib.image

    grpo = handwritten_records("grpo")
    base = handwritten_records("base")[6:]  # classification (1 of 3 right) and description only
    recs = {"base": base, "grpo": grpo}
    results = {k: compute_metrics(v) for k, v in recs.items()}
    path = write_report(results, recs, tmp_path / "r" / "report.html", {"split": "test"}, style="direct")
    html = path.read_text()
    assert html.count('<table class="metrics">') >= 3 and "<th>base</th><th>grpo</th>" in html
    # base has no QA output: one number in the row, nothing to win
    assert '<td>qa</td><td>reflect</td><td>accuracy</td><td class="num">&ndash;</td><td class="num">66.67 <span class="ci">[20.8, 93.8]</span></td>' in html
    assert '<td>multi_acc</td><td class="num">33.33 <span class="ci">[6.2, 79.2]</span></td><td class="num"><b>50.00</b> <span class="ci">[15.0, 85.0]</span></td>' in html
    assert "wrong_to_right" in html and "not run" in html  # reflection table; judge off
    # style "direct": no direct grounding outputs, so no IoU histogram; reflection uses reflect traces
    pngs = {p.name: p for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert set(pngs) == {"confusion.png", "per_class_accuracy.png", "reflection_transitions.png", "headline.png"}
    imgs = _images(html)
    assert len(imgs) == 4
    for p in pngs.values():
        assert p.read_bytes() in imgs and min(matplotlib.image.imread(p).shape[:2]) > 200


# ----------------------------------------------------------------------------- the stage


@pytest.fixture()
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return f"evaluate-test-{uuid.uuid4().hex[:8]}"


def test_stage_end_to_end(manifest, tiny_model_dir, params, tmp_path, isolated_mlflow, caplog):
    import mlflow
    from chat_server import GOOD, ChatServer, completion

    from srvau.config import load_params
    from srvau.tracking.runs import configure, stage_run

    with ChatServer([(200, completion(json.dumps(GOOD)), 0)]) as srv:
        p = load_params(overrides={
            "tracking.experiment": isolated_mlflow,
            "evaluate.limit": 2, "evaluate.styles": ["reflect", "direct"], "evaluate.max_new_tokens": 4,
            "evaluate.batch_size": 6, "evaluate.judge.enabled": True, "evaluate.judge.base_url": srv.url,
        })
        models = {"base": str(tiny_model_dir), "sft": str(tmp_path / "no-sft"), "grpo": str(tiny_model_dir)}
        with caplog.at_level(logging.WARNING), stage_run(p, "evaluate"):  # the CLI opens the stage's run
            result = evaluate(manifest, models, tmp_path / "eval", p)
    out = tmp_path / "eval"
    assert "model sft: no checkpoint" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["prior", "base", "grpo"] and result["models"] == metrics
    # the demo's claims read the stage's own metrics.json (srvau eval demo-check): every key is there
    from srvau.evaluation.demo_check import demo_criteria

    claims = demo_criteria(metrics, [0.5] * 4, n_classes=6, baseline="base")
    assert len(claims) == 8 and not next(c for c in claims if c["name"].startswith("reward"))["holds"]
    paired = metrics["grpo"].pop("paired")
    assert metrics["base"] == metrics["grpo"]  # same checkpoint, greedy decoding: same numbers
    # each model against the one evaluated before it (sft has no checkpoint: grpo against base)
    assert list(paired) == ["base"] and set(paired["base"]) == {"qa", "grounding", "classification", "pooled"}
    pooled = paired["base"]["pooled"]
    assert (pooled["n"], pooled["this_only"], pooled["other_only"], pooled["difference"]) == (4, 0, 0, 0.0)
    assert pooled["difference_ci95"][0] < 0 < pooled["difference_ci95"][1]
    # the video-blind prior, fitted on the train split, scored on the same pairs as the models
    prior = metrics["prior"]
    assert set(prior) == {"qa", "grounding", "classification", "fit"} and set(prior["qa"]) == {"reflect", "direct"}
    assert prior["qa"]["direct"]["n"] == 2 and prior["fit"]["qa"] in "ABCD"
    m = metrics["base"]
    for task in TASKS:
        assert set(m[task]) == {"reflect", "direct"}
    choice = {f"{k}{ci}" for k in ("named_share", "seen_accuracy", "lookup_accuracy") for ci in ("", "_ci95")}
    assert set(m["qa"]["reflect"]) == {"n", "accuracy", "accuracy_ci95", "well_formed", "truncated", *choice}
    assert m["qa"]["reflect"]["n"] == 2
    point = {"miou", "r@0.3", "r@0.5", "r@0.7"}
    assert set(m["grounding"]["direct"]) == {"n", "well_formed", "truncated"} | point | {f"{k}_ci95" for k in point}
    assert set(m["description"]["direct"]) == {"n", "well_formed", "truncated", "keyword_recall", "keyword_recall_ci95"}
    # 4 new tokens cut every reflection trace: counted, and the log says which budget to raise
    assert m["qa"]["reflect"]["truncated"] == 100.0
    assert "of qa/reflect answers hit evaluate.max_new_tokens=4 before ending" in caplog.text
    assert set(m["reflection"]) == {"qa", "grounding", "classification"}
    assert m["vau_eval"]["styles"]["reflect"]["n"] == 2 and m["vau_eval"]["judge_model"] == p.evaluate.judge.model
    for label in ("base", "grpo"):
        recs = read_jsonl(out / "predictions" / f"{label}.jsonl")
        assert len(recs) == sum(m[t][s]["n"] for t in TASKS for s in ("reflect", "direct"))
        assert len((out / "judge" / f"{label}.jsonl").read_text().splitlines()) == 2
        for sub, header in (("iou_hist", "bin,count"), ("confusion", "actual,predicted"), ("per_class", "class,accuracy,n"),
                            ("reflection", "task,first,final,count")):
            lines = (out / "plots" / sub / f"{label}.csv").read_text().splitlines()
            assert lines[0] == header and len(lines) > 1
    assert not (out / "predictions" / "sft.jsonl").exists()
    settings = json.loads((out / "judge" / "settings.json").read_text())
    assert settings["enabled"] and settings["model"] == p.evaluate.judge.model and "api_key_env" not in settings
    inference = json.loads((out / "inference.json").read_text())
    assert inference["base"]["samples"] == len(recs) and inference["base"]["samples_per_s"] > 0
    from srvau.tracking.models import checkpoint_digest  # which run trained it is looked up by this

    assert inference["grpo"]["checkpoint_sha256"] == checkpoint_digest(tiny_model_dir)
    dataset = json.loads((out / "dataset.json").read_text())  # what `srvau register --metrics` logs them on
    assert dataset == {"name": f"{manifest}:test[:2]", "manifest": str(manifest), "split": "test", "limit": 2,
                       "digest": hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]}
    html = Path(result["report"]).read_text()
    assert result["report"] == str(out / "report.html") and len(_images(html)) == 5
    assert "<th>prior</th><th>base</th><th>grpo</th>" in html and "VAU-Eval" in html
    assert "<th>grpo &minus; base</th><td>QA + classification, pooled</td>" in html

    configure(p)
    (run,) = mlflow.search_runs(experiment_names=[isolated_mlflow], output_format="list")
    assert run.data.metrics["evaluate.base.qa.reflect.accuracy"] == m["qa"]["reflect"]["accuracy"]
    assert run.data.metrics["evaluate.prior.qa.direct.accuracy"] == prior["qa"]["direct"]["accuracy"]
    assert "evaluate.grpo.grounding.direct.r_at_0.5" in run.data.metrics
    assert run.data.metrics["evaluate.grpo.paired.base.pooled.difference"] == 0.0
    assert run.data.tags["evaluate.judge.model"] == p.evaluate.judge.model
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/metrics.json", "evaluate/dataset.json", "evaluate/report.html", "evaluate/figures"} <= arts


def test_resolve_checkpoint(tmp_path, params):
    from srvau.evaluation.stage import resolve_checkpoint

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    (tmp_path / "trained" / "merged").mkdir(parents=True)
    (tmp_path / "trained" / "merged" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert resolve_checkpoint(str(tmp_path / "plain"), params) == str(tmp_path / "plain")
    assert resolve_checkpoint(str(tmp_path / "trained"), params) == str(tmp_path / "trained" / "merged")
    assert resolve_checkpoint(str(tmp_path / "empty"), params) is None
    assert resolve_checkpoint(str(tmp_path / "absent"), params) is None
    assert resolve_checkpoint("srvau/no-such-model", params) is None  # inside an existing local folder
    assert resolve_checkpoint("Qwen/Qwen2.5-VL-3B-Instruct", params) == "Qwen/Qwen2.5-VL-3B-Instruct"  # a Hub id


def test_stage_without_any_checkpoint(manifest, params, tmp_path, isolated_mlflow):
    with pytest.raises(FileNotFoundError, match="none of the models"):
        evaluate(manifest, {"sft": str(tmp_path / "x")}, tmp_path / "eval", params)


def test_cli_prints_report_path(manifest, tiny_model_dir, tmp_path, isolated_mlflow, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from srvau.cli.app import main
    from srvau.cli.evaluate import evaluate_cmd

    monkeypatch.delenv("SRVAU_TIMINGS_FILE", raising=False)  # the record's default home, checked below
    app = typer.Typer()
    app.callback()(main)
    app.command("evaluate")(evaluate_cmd)
    sets = ["--set", f"tracking.experiment={isolated_mlflow}", "--set", "evaluate.limit=1", "--set", "evaluate.styles=[direct]",
            "--set", "evaluate.primary_style=direct", "--set", "evaluate.tasks=[qa]", "--set", "evaluate.max_new_tokens=3",
            "--set", f"paths.reports={tmp_path / 'reports'}"]
    report = tmp_path / "rep" / "index.html"
    args = [*sets, "evaluate", "--manifest", str(manifest), "--model", f"base={tiny_model_dir}", "--out", str(tmp_path / "o"),
            "--report", str(report)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(report) and report.is_file()
    # the stage timed its own body (bench/pipeline.py splits the pipeline's wall time with these)
    (timing,) = read_jsonl(tmp_path / "reports" / "tracking" / "timings.jsonl")
    assert timing["stage"] == "evaluate" and timing["ok"] and timing["pid"] == os.getpid()
    assert 0 < timing["compute_s"] < 600 and timing["process_age_at_start_s"] > 0
    bad = CliRunner().invoke(app, [*sets, "evaluate", "--manifest", str(tmp_path / "none.parquet"), "--model", f"base={tiny_model_dir}"])
    assert bad.exit_code == 2 and "not found" in bad.stderr
    bad = CliRunner().invoke(app, [*sets, "evaluate", "--manifest", str(manifest), "--model", "base"])
    assert bad.exit_code == 2 and "LABEL=CHECKPOINT" in bad.output


def test_processed_videos_equal_the_processors_tensors(tiny, mixed_samples):
    """The video and text halves that generation caches give exactly processor_inputs' tensors (what
    training feeds the model), on clips of two sizes in one batch."""
    import torch

    from srvau.modeling.inputs import processor_inputs, text_inputs, video_inputs

    _, proc = tiny
    texts = [chat_text(proc, s.prompt, s.system) for s in mixed_samples]
    clips = _clips(mixed_samples)
    ref = processor_inputs(proc, texts, [c[0] for c in clips], [c[1] for c in clips])
    videos = [video_inputs(proc, *c) for c in clips]
    enc = text_inputs(proc, texts, videos)
    assert {c[0].shape for c in clips} == {(16, 112, 112, 3), (8, 56, 56, 3)}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(enc[key], ref[key]), key
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(torch.cat([v[key] for v in videos]), ref[key]), key


def test_prompts_sharing_a_video_share_its_prefill_and_keep_their_tokens(tiny, mixed_samples, manifest, params):
    """Every task and style on a large and a small clip in one batch: the rows of one clip and system
    prompt prefill that prefix once (prefixes of several lengths, single-row groups beside them), and
    every row's tokens equal one-at-a-time generation."""
    from srvau.video.cache import load_frames

    model, proc = tiny
    large = build_samples(read_manifest(manifest, "test").head(1), manifest.parent, TASKS, STYLES, params.video)
    small_path = next(s.frames_path for s in mixed_samples if not s.frames_path.startswith(str(manifest.parent)))
    samples = large + [dataclasses.replace(s, frames_path=small_path) for s in large]
    loaded = {p: load_frames(p) for p in {s.frames_path for s in samples}}  # one object per clip, as FrameStore
    texts = [chat_text(proc, s.prompt, s.system) for s in samples]
    clips = [loaded[s.frames_path] for s in samples]
    gk = generation_kwargs(model, proc.tokenizer, GenerationSettings(max_new_tokens=10))
    prefill_tokens = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: prefill_tokens.append(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])
        if kwargs["inputs_embeds"].shape[1] > 1 else None, with_kwargs=True)
    try:
        batched = generate_batch(model, proc, texts, clips, gk)
    finally:
        hook.remove()
    singles = [generate_batch(model, proc, [t], [c], gk)[0] for t, c in zip(texts, clips)]
    assert len(samples) >= 16 and len({s.system for s in samples}) >= 4
    assert len(prefill_tokens) >= 3  # prefixes of (at least) two lengths, then the rows' own text
    assert sum(prefill_tokens) < sum(g.prompt_tokens for g in batched)  # a padded batch's prefill is at least this
    for b, s in zip(batched, singles):
        assert b.prompt_tokens == s.prompt_tokens
        assert b.token_ids == s.token_ids


def test_length_order_keeps_a_videos_system_prompts_together():
    """Within a video, the prompts of one system prompt sit next to each other (they share a prefill),
    the system prompt with the longest prompt first; videos stay whole and longest first."""
    from srvau.evaluation.inference import Sample, length_order

    def sample(video, system):
        return Sample(video, "qa", "reflect", system, "", f"/cache/{video}.npz", {}, 100)

    samples = [sample("a", "think"), sample("a", "reflect"), sample("a", "think"), sample("b", "direct"),
               sample("a", "reflect"), sample("a", "direct")]
    text = [30, 60, 10, 5, 20, 40]
    order = length_order(samples, text)
    assert [samples[i].video_id for i in order] == ["a"] * 5 + ["b"]
    assert [samples[i].system for i in order] == ["reflect", "reflect", "direct", "think", "think", "direct"]
    assert order == [1, 4, 5, 0, 2, 3]

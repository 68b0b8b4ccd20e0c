"""RoCoT generation: the annotation and policy teachers, the quality filter, the dataset on disk, the CLI.

Inputs are real: the synthetic demo set through the real ingest stage (conftest ``ingest_dir``), the
tiny Qwen2.5-VL for the policy teacher. Every kept sample is read back with the parsers the rewards
and the evaluation use (srvau.contract).
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from srvau.config import load_params
from srvau.contract import trace as fmt
from srvau.contract.prompts import named_choice, option_key_word
from srvau.contract.scoring import content_words
from srvau.cot.builder import ManifestError, build_rocot
from srvau.cot.dataset import COLUMNS, SPLITS, load_all, load_rocot
from srvau.cot.filter import DROP_REASONS, quality_filter, row_truth
from srvau.evaluation.metrics import qa_choice_metrics
from srvau.training.rewards import final_correct, format_single_score

TASKS = ("qa", "grounding", "classification", "description")


def _with(params, **overrides):
    """A copy of the session params with dotted overrides (``cot__single_pass=True``)."""
    data = params.model_dump(by_alias=True)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return type(params).model_validate(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory, params, ingest_dir):
    out = tmp_path_factory.mktemp("rocot")
    result = build_rocot(ingest_dir / "manifest.parquet", out, params)
    return out, result, load_all(out)


def _expected_tasks(row) -> list[str]:
    """Which tasks a manifest row counts for, from the data contract (docs/contracts.md), not from the builder."""
    tasks = []
    if row["has_qa"] and row["correct_option"] in ("A", "B", "C", "D"):
        tasks.append("qa")
    if row["interval_kind"] in ("anomaly", "normal"):
        tasks.append("grounding")
    if isinstance(row["anomaly_class"], str) and row["anomaly_class"]:
        tasks.append("classification")
    if isinstance(row["description"], str) and row["description"].strip():
        tasks.append("description")
    return tasks


def test_dataset_has_every_sample_split_and_a_card(built, manifest, params):
    out, result, df = built
    orders = ["", "@1", "@2", "@3"][: params.cot.qa_option_orders]
    expected = {f"{r['video_id']}:{t}{o}" for _, r in manifest.iterrows() for t in _expected_tasks(r)
                for o in (orders if t == "qa" and r["split"] == "train" else [""])}
    assert set(df["sample_id"]) == expected
    assert df["sample_id"].is_unique
    assert sum(result.quarantined.values()) == 0 and sum(result.filter.dropped.values()) == 0
    for split in SPLITS:
        ds = load_rocot(out, split)
        assert ds.column_names == list(COLUMNS)
        assert len(ds) == result.split_counts[split] == int((df["split"] == split).sum()) > 0
        assert set(ds["split"]) == {split}
        videos = set(manifest.loc[manifest["split"] == split, "video_id"])
        assert set(ds["video_id"]) <= videos
    # ground truth columns follow the manifest
    by_video = manifest.set_index("video_id")
    for _, r in df.iterrows():
        m = by_video.loc[r["video_id"]]
        if m["interval_kind"] == "anomaly":
            assert (r["gt_start"], r["gt_end"]) == (m["start_s"], m["end_s"])
        elif m["interval_kind"] == "normal":
            assert (r["gt_start"], r["gt_end"]) == (-1.0, -1.0)
        else:
            assert math.isnan(r["gt_start"]) and math.isnan(r["gt_end"])
        assert params.resolve(r["frames_path"]).is_file()
        assert r["teacher"] == "annotation" and r["style"] == "reflect"
    card = (out / "README.md").read_text()
    assert "configs:" in card and "path: train.parquet" in card
    assert "teacher **annotation**" in card
    stats = json.loads((out / "stats.json").read_text())
    assert stats["metrics"]["kept"] == len(df)


def test_every_kept_sample_parses_and_its_answers_extract_back(built, params):
    _, _, df = built
    assert set(df["task"]) == set(TASKS)
    for _, r in df.iterrows():
        text = r["completion"]
        tr = fmt.parse_trace(text)
        assert tr.reflective, text
        if r["task"] == "qa":
            assert fmt.extract_letter(text, "first") == r["first_answer"]
            assert fmt.extract_letter(text, "final") == r["final_answer"] == r["answer"]
            assert r["first_correct"] == (r["first_answer"] == r["answer"])
        elif r["task"] == "classification":
            assert fmt.extract_class(text, "first") == r["first_answer"]
            assert fmt.extract_class(text, "final") == r["final_answer"] == r["answer"]
            assert r["first_correct"] == (r["first_answer"] == r["answer"])
        elif r["task"] == "grounding":
            assert r["final_answer"] == r["answer"] in ("Anomaly", "Normal")
            final = fmt.extract_interval(text, "final")
            if r["answer"] == "Normal":
                assert fmt.is_normal_interval(final)
            else:
                assert fmt.iou(final, (r["gt_start"], r["gt_end"])) >= params.cot.min_iou
        else:
            assert " ".join(tr.final_answer.split()) == r["final_answer"]
            assert " ".join(tr.first_answer.split()) == r["first_answer"]
        if r["task"] != "description":
            # what the GRPO rewards will say about the same text
            ok = final_correct(text, row_truth(r), params.cot.min_iou)
            assert ok is True, text


def test_first_pass_is_wrong_exactly_where_the_video_shows_a_misleading_cue(built, manifest):
    """cot.flaws: cues (default): the first pass goes wrong on the clips whose annotation records a decoy,
    and only there, so a model can learn *when* to revise from what it sees."""
    from srvau.cot.teachers import misleading_cue

    _, result, df = built
    cued = {v for v, r in zip(manifest["video_id"], manifest["reasoning"]) if misleading_cue(r) is not None}
    assert cued and len(cued) < manifest["video_id"].nunique()  # the demo has both kinds
    for _, r in df.iterrows():
        if r["task"] in ("qa", "classification", "grounding"):
            assert (not r["first_correct"]) == (r["video_id"] in cued), (r["sample_id"], r["completion"])
    assert 0 < result.first_wrong_share < 1


def test_flawed_and_right_first_passes_share_one_template(built):
    """The branch is decided by content, not by the first token: wrong and right first passes read alike,
    and the second pass does not copy the first."""
    _, _, df = built
    for task, g in df.groupby("task"):
        firsts = [fmt.parse_trace(c).first_think for c in g["completion"]]
        assert all(t.startswith("At first glance: ") for t in firsts), task
        for c, ok in zip(g["completion"], g["first_correct"]):
            tr = fmt.parse_trace(c)
            assert tr.final_think.startswith("Over the whole clip: ") and tr.final_think != tr.first_think
    qa = df[df["task"] == "qa"]
    wrong = [fmt.parse_trace(c).first_think for c in qa[~qa["first_correct"]]["completion"]]
    right = [fmt.parse_trace(c).first_think for c in qa[qa["first_correct"]]["completion"]]
    pattern = re.compile(r"^At first glance: .+; \S+ [A-D] fits\.$")
    assert wrong and right and all(pattern.match(t) for t in wrong + right)


def _options(prompt: str) -> dict[str, str]:
    return {line[0]: line[3:] for line in prompt.splitlines() if re.match(r"^[A-D]\. ", line)}


def test_qa_passes_name_their_option_by_its_key_word_just_before_the_letter(built):
    """"...; Orange B fits.": the word before the letter is the one that starts option B in this prompt,
    so the letter is read off the options, whichever pass (right or wrong) chooses it."""
    _, _, df = built
    qa = df[df["task"] == "qa"]
    assert len(qa) and (~qa["first_correct"]).any()
    for _, r in qa.iterrows():
        options = _options(r["prompt"])
        tr = fmt.parse_trace(r["completion"])
        for think, answer in ((tr.first_think, tr.first_answer), (tr.final_think, tr.final_answer)):
            assert think.endswith(" fits."), think
            key, letter = named_choice(think)  # the evaluation's reader of the same phrase
            assert letter == answer.strip() and key == option_key_word(options[letter]), (think, options)
        assert tr.final_answer.strip() == r["answer"]
    # the evaluation's diagnostics on the teacher's own traces: every choice named, every letter found,
    # and the final one names the right option (what a trained model's traces are read against)
    m = qa_choice_metrics(list(qa["prompt"]), list(qa["completion"]), list(qa["answer"]))
    assert (m["named_share"], m["lookup_accuracy"], m["seen_accuracy"]) == (100.0, 100.0, 100.0)
    first = qa_choice_metrics(list(qa["prompt"]), list(qa["completion"]), list(qa["answer"]), which="first")
    assert first["lookup_accuracy"] == 100.0 and first["seen_accuracy"] < 100.0  # flawed first passes misread


def test_train_qa_comes_in_every_option_order_and_val_test_in_the_annotated_one(built, manifest, params):
    """Train QA is repeated with its options rotated, the correct letter moving with its option; val and
    test keep the annotation's order, so evaluation is untouched."""
    assert params.cot.qa_option_orders == 4
    _, _, df = built
    qa = df[df["task"] == "qa"].assign(video=lambda d: d["sample_id"].str.split(":").str[0])
    truth = manifest.set_index("video_id")
    for video, g in qa.groupby("video"):
        m = truth.loc[video]
        correct_text = m[f"option_{m['correct_option'].lower()}"]
        n = params.cot.qa_option_orders if m["split"] == "train" else 1
        assert len(g) == n, (video, list(g["sample_id"]))
        assert sorted(g["answer"]) == sorted("ABCD"[("ABCD".index(m["correct_option"]) + r) % 4] for r in range(n))
        for _, r in g.iterrows():
            assert _options(r["prompt"])[r["answer"]] == correct_text
            assert sorted(_options(r["prompt"]).values()) == sorted(m[f"option_{x}"] for x in "abcd")


def test_random_flaws_keep_the_planned_share(params, ingest_dir, tmp_path):
    p = _with(params, cot__flaws="random")
    build_rocot(ingest_dir / "manifest.parquet", tmp_path, p)
    df = load_all(tmp_path)
    for (split, task), g in df.groupby(["split", "task"]):
        n_wrong = int((~g["first_correct"]).sum())
        assert n_wrong == math.floor(p.cot.flawed_share * len(g) + 0.5), (split, task, n_wrong, len(g))


def test_flawed_first_passes_are_wrong_and_the_reflection_names_the_evidence(built, manifest, params):
    _, _, df = built
    by_video = manifest.set_index("video_id")
    for _, r in df[~df["first_correct"]].iterrows():
        tr = fmt.parse_trace(r["completion"])
        m = by_video.loc[r["video_id"]]
        evidence = set(content_words(m["reasoning"])) | set(content_words(m["key_object"]))
        assert set(content_words(tr.reflection)) & evidence, tr.reflection
        if r["task"] == "grounding" and r["answer"] == "Anomaly":
            first = fmt.parse_interval_strict(tr.first_glue)
            assert first is None or fmt.is_normal_interval(first) or fmt.iou(first, (r["gt_start"], r["gt_end"])) < params.cot.min_iou
        if r["task"] in ("qa", "classification"):
            assert r["first_answer"] != r["answer"]
    # confirming reflections never repeat the final answer alone
    for _, r in df[df["first_correct"]].iterrows():
        tr = fmt.parse_trace(r["completion"])
        if r["task"] != "description":
            assert tr.first_answer == tr.final_answer
        assert tr.reflection.strip() != tr.final_answer.strip()


def test_blocks_are_short_enough_for_a_tiny_model(built, params):
    _, _, df = built
    budget = params.cot.think_max_words
    for text in df["completion"]:
        for name, content in fmt.parse_trace(text).blocks:
            n = len(content.split())
            if name in ("think", "reflection"):
                assert n <= budget + 12, (name, content)
            elif name == "answer":
                assert n <= params.cot.answer_max_words, content


def test_same_seed_same_dataset_and_flaws_follow_the_video_not_the_seed(tmp_path, built, params, ingest_dir):
    out, _, df = built
    again = build_rocot(ingest_dir / "manifest.parquet", tmp_path / "again", params)
    assert again.split_counts == built[1].split_counts
    pd.testing.assert_frame_equal(load_all(tmp_path / "again"), df)
    wrong = lambda d: set(d.loc[~d["first_correct"], "sample_id"])  # noqa: E731
    build_rocot(ingest_dir / "manifest.parquet", tmp_path / "other", _with(params, seed=params.seed + 1))
    assert wrong(load_all(tmp_path / "other")) == wrong(df)  # cues: the video decides, not a coin
    rnd = _with(params, cot__flaws="random")
    build_rocot(ingest_dir / "manifest.parquet", tmp_path / "r1", rnd)
    build_rocot(ingest_dir / "manifest.parquet", tmp_path / "r2", _with(rnd, seed=params.seed + 1))
    assert wrong(load_all(tmp_path / "r1")) != wrong(load_all(tmp_path / "r2"))


def _replace_block(text: str, tag: str, new: str, which: int = -1) -> str:
    spans = [m.span(2) for m in re.finditer(rf"<({tag})>(.*?)</{tag}>", text, re.S)]
    s, e = spans[which]
    return text[:s] + new + text[e:]


def test_filter_drops_each_defect_and_counts_the_reason(built, params):
    _, _, df = built
    rows = df.to_dict("records")
    qa = next(r for r in rows if r["task"] == "qa")
    cls = next(r for r in rows if r["task"] == "classification")
    grd = next(r for r in rows if r["task"] == "grounding" and r["answer"] == "Anomaly")
    desc = next(r for r in rows if r["task"] == "description")
    wrong = next(x for x in "ABCD" if x != qa["answer"])
    bad = {
        "malformed": [
            {**qa, "completion": qa["completion"].replace("</reflection>", "")},
            {**cls, "completion": _replace_block(cls["completion"], "reflection", "  ")},
            {**grd, "completion": _replace_block(grd["completion"], "glue", "soon")},
        ],
        "final_wrong": [
            {**qa, "completion": _replace_block(qa["completion"], "answer", wrong), "final_answer": wrong},
            {**grd, "completion": _replace_block(grd["completion"], "glue", f"[{grd['gt_end'] + 1:.1f}, {grd['gt_end'] + 3:.1f}]")},
            {**desc, "completion": _replace_block(desc["completion"], "answer", "Unclear footage."), "final_answer": "Unclear footage."},
        ],
        "reflection_copies_answer": [
            {**cls, "completion": _replace_block(cls["completion"], "reflection", f"The answer is {cls['answer']}.")},
            {**qa, "completion": _replace_block(qa["completion"], "reflection", qa["answer"])},
        ],
        "answer_mismatch": [
            {**qa, "first_answer": wrong if qa["first_answer"] != wrong else qa["answer"]},
            {**cls, "first_correct": not cls["first_correct"]},
        ],
    }
    good = [r for r in rows[:20]]
    candidates = good + [r for rs in bad.values() for r in rs]
    res = quality_filter(candidates, params.cot)
    assert [r["sample_id"] for r in res.kept] == [r["sample_id"] for r in good]
    assert dict(res.dropped) == {k: len(v) for k, v in bad.items()}
    assert set(DROP_REASONS) == set(bad)
    for r in res.kept:  # what the filter keeps parses with the shared parser
        assert fmt.parse_trace(r["completion"]).reflective


def test_single_pass_variant_is_vau_r1_format(tmp_path, params, ingest_dir):
    p = _with(params, cot__single_pass=True)
    res = build_rocot(ingest_dir / "manifest.parquet", tmp_path / "single", p)
    df = load_all(tmp_path / "single")
    assert len(df) == len(res.filter.kept) and len(df) > 0
    assert set(df["style"]) == {"think"}
    assert df["first_correct"].all()
    for _, r in df.iterrows():
        tr = fmt.parse_trace(r["completion"])
        assert tr.single_pass and not tr.reflective and tr.reflection is None
        assert format_single_score(r["completion"], r["task"]) == 1.0
        assert "<reflection>" not in r["system"]


def test_policy_teacher_keeps_the_policy_first_pass_and_corrects_it(tmp_path, params, ingest_dir, manifest, tiny_model_dir):
    sub = manifest[manifest["split"] == "train"].head(4).copy()
    sub["frames_path"] = [str(ingest_dir / f) for f in sub["frames_path"]]
    sub_path = tmp_path / "manifest.parquet"
    sub.to_parquet(sub_path, index=False)
    p = _with(params, cot__teacher="policy", cot__tasks=["qa", "grounding", "classification"],
              cot__policy__model=str(tiny_model_dir), cot__policy__max_new_tokens=16, cot__policy__batch_size=4)
    res = build_rocot(sub_path, tmp_path / "policy", p)
    df = load_all(tmp_path / "policy")
    assert set(df["teacher"]) == {"policy+annotation"}
    orders = p.cot.qa_option_orders  # train QA comes in every option order
    assert res.filter.total == sum(len(_expected_tasks(r)) - ("description" in _expected_tasks(r))
                                   + (orders - 1) * ("qa" in _expected_tasks(r)) for _, r in sub.iterrows())
    # a random tiny model writes garbage: its first passes are kept as written (not a template) and
    # judged; the annotation teacher's reflection and revision make every kept final answer right
    assert (~df["first_correct"]).sum() >= len(df) // 2
    for _, r in df.iterrows():
        tr = fmt.parse_trace(r["completion"])
        assert tr.reflective
        assert not tr.first_think.startswith(("Evidence:", "At first glance"))
        assert final_correct(r["completion"], row_truth(r)) is True
    assert res.teacher_stats["policy_first_passes"] == res.filter.total


def test_policy_teacher_never_writes_test_split_and_samples_by_params(tmp_path, params, ingest_dir, manifest, tiny_model_dir):
    """The policy writes first passes for train/val only (test items get the reviser's own trace), and
    cot.policy.temperature/max_new_tokens reach its generation (sampling differs from greedy)."""
    from srvau.cot.builder import task_items
    from srvau.cot.teachers import PolicyTeacher, make_teacher

    sub = pd.concat([manifest[manifest["split"] == s].head(1) for s in ("train", "test")]).copy()
    sub["frames_path"] = [str(ingest_dir / f) for f in sub["frames_path"]]
    sub_path = tmp_path / "manifest.parquet"
    sub.to_parquet(sub_path, index=False)
    hot = _with(params, cot__teacher="policy", cot__tasks=["qa", "classification"], cot__policy__model=str(tiny_model_dir),
                cot__policy__max_new_tokens=12, cot__policy__temperature=1.5, cot__policy__top_p=0.95)
    teacher = make_teacher(hot)
    assert isinstance(teacher, PolicyTeacher)
    s = teacher.settings()
    assert (s.temperature, s.top_p, s.max_new_tokens, s.seed, s.greedy) == (1.5, 0.95, 12, hot.seed, False)

    items = task_items(sub, tmp_path, hot)
    test_items = [it for it in items if it.split == "test"]
    train_items = [it for it in items if it.split == "train"]
    assert test_items and train_items
    with pytest.raises(ValueError, match="not \\['test'\\]"):
        teacher.first_passes(items)

    res = build_rocot(sub_path, tmp_path / "rocot", hot)
    df = load_all(tmp_path / "rocot")
    by_split = df.groupby("split")["teacher"].agg(set).to_dict()
    assert by_split == {"train": {"policy+annotation"}, "test": {"annotation"}}
    assert res.teacher_stats["policy_first_passes"] == len(train_items)

    greedy = PolicyTeacher(_with(hot, cot__policy__temperature=0.0), teacher.reviser).first_passes(train_items)
    sampled = teacher.first_passes(train_items)
    assert [p.think for p in sampled] != [p.think for p in greedy]


def _app():
    from srvau.cli.app import main
    from srvau.cli.cot import cot_cmd

    app = typer.Typer()
    app.callback()(main)
    app.command("cot")(cot_cmd)
    return app


def test_cli_writes_dataset_logs_to_mlflow_and_fails_cleanly(tmp_path, ingest_dir):
    import mlflow

    from srvau.tracking.runs import tracking_uri

    runner = CliRunner()
    out = tmp_path / "rocot"
    r = runner.invoke(_app(), ["--set", "synth.n_train=12", "--set", "tracking.experiment=test-cot", "cot",
                               "--manifest", str(ingest_dir / "manifest.parquet"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples"] == {s: len(load_rocot(out, s)) for s in SPLITS}
    mlflow.set_tracking_uri(tracking_uri(load_params()))
    runs = mlflow.search_runs(experiment_names=["test-cot"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.cot.kept"] == sum(summary["samples"].values())

    r = runner.invoke(_app(), ["cot", "--manifest", str(tmp_path / "nope.parquet"), "--out", str(out), "--no-track"])
    assert r.exit_code == 2 and "not found" in r.stderr


def test_manifest_without_required_columns_is_named(tmp_path, params, manifest):
    path = tmp_path / "m.parquet"
    manifest.drop(columns=["interval_kind", "question"]).to_parquet(path)
    with pytest.raises(ManifestError, match=r"interval_kind.*question|question.*interval_kind"):
        build_rocot(path, tmp_path / "out", params)


def test_annotation_teacher_on_real_vau_bench_annotations(params, vau_bench_dir):
    """Real VAU-Bench text (long reasoning, odd key objects, Key Evidence lists): every trace the
    annotation teacher writes passes the filter, and the planned share of flawed first passes holds."""
    from srvau.cot.builder import plan_flaws, render_row, task_items
    from srvau.cot.teachers import AnnotationTeacher
    from srvau.data.vau_bench import read_vau_bench

    rows = read_vau_bench(vau_bench_dir / "val.csv").rows
    rows["duration_s"] = rows["end_s"].fillna(0).clip(lower=0) + 5.0  # no videos here: annotations only
    rows["frames_path"] = None
    p = _with(params, cot__flaws="random")  # real annotations record no misleading cue
    items = plan_flaws(task_items(rows, vau_bench_dir, p), p.cot, p.seed)
    generated = [render_row(g, p.cot) for g in AnnotationTeacher(p.cot, p.seed).generate(items)]
    res = quality_filter(generated, p.cot)
    assert len(res.kept) == len(generated) > 2000, dict(res.dropped)
    df = pd.DataFrame(res.kept)
    assert set(df["task"]) == set(TASKS)
    assert not ((df["interval_kind"] == "unavailable") & (df["task"] == "grounding")).any()
    for (split, task), g in df.groupby(["split", "task"]):
        assert int((~g["first_correct"]).sum()) == math.floor(params.cot.flawed_share * len(g) + 0.5)
    assert max(len(c.split()) for c in df["completion"]) < 120
    # real option texts (articles, punctuation, shared first words): the evaluation still reads every
    # choice the teacher names and finds its letter at an option carrying the named word
    qa = df[df["task"] == "qa"]
    m = qa_choice_metrics(list(qa["prompt"]), list(qa["completion"]), list(qa["answer"]))
    assert len(qa) > 100 and (m["named_share"], m["lookup_accuracy"], m["seen_accuracy"]) == (100.0, 100.0, 100.0)

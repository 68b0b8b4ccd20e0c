"""The offline tiny Qwen2.5-VL: saved like a Hub checkpoint, reloaded, generating from a real video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decord import VideoReader, cpu

from srvau.contract.trace import parse_trace, render_trace
from srvau.modeling import load_model, load_processor, vision_token_ids
from srvau.modeling.inputs import processor_inputs, user_message
from srvau.modeling.tiny import REFLECTION_TAGS


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, params):
    return load_model(tiny_model_dir, params.model), load_processor(tiny_model_dir, params.model)


def test_checkpoint_is_safetensors_with_processor(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert {"tokenizer.json", "processor_config.json"} <= names or "preprocessor_config.json" in names


def test_tokenizer_round_trips_reflection_tags(loaded):
    _, proc = loaded
    tok = proc.tokenizer
    for tag in REFLECTION_TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (tag, ids)
    text = render_trace("orange flames", "B", "The flames are real.", "Flames at the bottom.", "B", (1.5, 4.0), (1.5, 4.0))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert parse_trace(tok.decode(ids)).reflective


def test_generate_from_a_real_decoded_video(loaded, demo_dir):
    model, proc = loaded
    path = sorted((demo_dir / "videos").glob("*.mp4"))[0]
    vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    idx = np.linspace(0, len(vr) - 1, 8).round().astype(int)
    frames = vr.get_batch(idx).asnumpy()
    meta = {"fps": vr.get_avg_fps(), "total_num_frames": len(vr), "frames_indices": idx.tolist(), "duration_s": len(vr) / vr.get_avg_fps()}
    text = proc.apply_chat_template(user_message("What happens?"), add_generation_prompt=True, tokenize=False)
    inputs = processor_inputs(proc, [text], [frames], [meta])
    assert "mm_token_type_ids" in inputs and "second_per_grid_ts" in inputs
    n_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert n_video_tokens == t * h * w // 4  # spatial merge 2x2
    # time positions follow the real fps: 2 frames per temporal patch / sampled fps
    sampled_fps = len(idx) / len(vr) * vr.get_avg_fps()
    assert float(inputs["second_per_grid_ts"][0]) == pytest.approx(2 / sampled_fps, rel=1e-3)
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=True, suppress_tokens=vision_token_ids(proc.tokenizer))
    new = out[0, inputs["input_ids"].shape[1] :]
    assert len(new) > 0
    assert not set(new.tolist()) & set(vision_token_ids(proc.tokenizer))


def test_video_changes_the_logits(loaded, demo_dir):
    """The video actually reaches the language model (not silently dropped)."""
    model, proc = loaded
    paths = sorted((demo_dir / "videos").glob("*.mp4"))[:2]
    text = proc.apply_chat_template(user_message("What happens?"), add_generation_prompt=True, tokenize=False)
    logits = []
    for p in paths:
        vr = VideoReader(str(p), ctx=cpu(0), num_threads=1)
        idx = np.linspace(0, len(vr) - 1, 8).round().astype(int)
        meta = {"fps": vr.get_avg_fps(), "total_num_frames": len(vr), "frames_indices": idx.tolist()}
        with torch.no_grad():
            logits.append(model(**processor_inputs(proc, [text], [vr.get_batch(idx).asnumpy()], [meta])).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])


def test_loader_rejects_non_checkpoints(tmp_path, params):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty", params.model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing", params.model)


# ----------------------------------------------------------------------------- reading drills


@pytest.fixture(scope="module")
def drill_material(demo_dir):
    from srvau.modeling.drills import drill_words
    from srvau.modeling.tiny import corpus_from_csvs, option_lists_from_csvs

    csvs = sorted(demo_dir.glob("*.csv"))
    return option_lists_from_csvs(csvs), drill_words(corpus_from_csvs(csvs))


def test_a_drill_asks_for_the_letter_its_key_word_names_then_copies_it_into_the_answer(loaded, drill_material):
    from srvau.contract.prompts import option_key_word
    from srvau.modeling.drills import _drill

    _, proc = loaded
    tok = proc.tokenizer
    lists, words = drill_material
    rng = np.random.default_rng(0)
    drills = [d for d in (_drill(tok, lists, words, rng) for _ in range(64)) if d is not None]
    assert len(drills) > 32
    letters_seen = set()
    for ids, (look_up, copy) in drills:
        text = tok.decode(ids)
        options = {line[0]: line[3:] for line in text.splitlines() if line[:1] in "ABCD" and line[1:3] == ". "}
        letter = tok.decode(ids[look_up]).strip()
        key = tok.decode(ids[:look_up]).rsplit("; ", 1)[1].strip()
        assert key == option_key_word(options[letter]), (key, options)
        assert tok.decode(ids[copy]) == letter and tok.decode(ids[: copy]).endswith("<answer>")
        assert not any(w in key for w in ("<", ">"))
        letters_seen.add(letter)
    assert letters_seen == set("ABCD")


@pytest.mark.parametrize("material", ["demo", "vau-bench"])
def test_a_drill_batch_holds_the_drills_drawn_one_by_one_and_leaves_the_generator_where_they_do(
        loaded, drill_material, vau_bench_dir, material):
    """drill_batch tokenises a round at once and each prompt once; the rows, their order and the
    generator's state must be those of drawing and tokenising one drill at a time. Also on the real
    VAU-Bench option lists, whose texts the demo tokenizer never saw."""
    from srvau.modeling.drills import DrillTokens, _drill, drill_batch, drill_words
    from srvau.modeling.tiny import corpus_from_csvs, option_lists_from_csvs

    tok = loaded[1].tokenizer
    lists, words = drill_material
    if material == "vau-bench":
        real = sorted(vau_bench_dir.glob("*.csv"))
        lists, words = option_lists_from_csvs(real), drill_words(corpus_from_csvs(real))
    tokens = DrillTokens(tok)
    one, batched = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(6):
        rows = []
        while len(rows) < 16:
            d = _drill(tok, lists, words, one)
            if d is not None:
                rows.append(d)
        batch = drill_batch(tok, lists, words, batched, 16, tokens)
        for i, (ids, at) in enumerate(rows):
            assert batch["input_ids"][i, : len(ids)].tolist() == ids
            assert int(batch["attention_mask"][i].sum()) == len(ids)
            assert (batch["labels"][i] != -100).nonzero().flatten().tolist() == at
    assert one.integers(1 << 62) == batched.integers(1 << 62)
    assert tokens.prefix and all(v is not None for v in tokens.prefix.values())


def test_drill_tokens_tokenise_a_prompt_whole_where_it_merges_with_the_pass(loaded):
    """A prompt whose last word runs into the pass is not split there: its drills keep the whole text's
    tokens."""
    from srvau.modeling.drills import DrillTokens, _clean

    tok = loaded[1].tokenizer
    prompt, head, text = "<|im_start|>assistant\nOran", "ge", "ge B fits <answer>B</answer>"
    assert tok(prompt)["input_ids"] + tok(text)["input_ids"] != tok(prompt + text)["input_ids"]
    tokens = DrillTokens(tok)
    whole = tok([prompt + head, prompt + text])["input_ids"]
    assert tokens.rows([(prompt, head, text, "B")]) == [_clean(tok, *whole, "B")]
    assert tokens.prefix == {prompt: None}


def test_reading_drills_train_attention_and_the_output_layer_only(tiny_model_dir, params, drill_material):
    from srvau.modeling.tiny import is_drilled, reading_drills

    model = load_model(tiny_model_dir, params.model)
    tok = load_processor(tiny_model_dir, params.model).tokenizer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert reading_drills(model, tok, *drill_material, steps=0, seed=0) == {"steps": 0}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    report = reading_drills(model, tok, *drill_material, steps=3, seed=0, batch_size=4)
    assert report["steps"] == 3 and 0 <= report["held_out_accuracy_after"] <= 1
    drilled = {n for n, _ in model.named_parameters() if is_drilled(n)}
    assert any(".self_attn." in n for n in drilled) and "lm_head.weight" in drilled
    assert not any(".visual." in f".{n}" or ".mlp." in n or "embed_tokens" in n for n in drilled)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in drilled), n
    # No gradient is computed for what the drills leave alone (~14 % of a step), and the caller's
    # requires_grad flags come back as they were.
    assert all(p.grad is None for n, p in model.named_parameters() if n not in drilled)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError):  # an empty batch fails inside the training loop: the flags still come back
        reading_drills(model, tok, *drill_material, steps=2, seed=0, batch_size=0)
    assert all(p.requires_grad for p in model.parameters())


def test_reading_drills_stop_once_the_held_out_look_up_reaches_the_target(tiny_model_dir, params, drill_material):
    """The step count is a cap: the drills check the held-out look-up every ``check_every`` steps and stop
    at the first check that reaches ``target``; a target never reached runs every step."""
    from srvau.modeling.tiny import reading_drills

    tok = load_processor(tiny_model_dir, params.model).tokenizer
    reached = reading_drills(load_model(tiny_model_dir, params.model), tok, *drill_material, steps=9, seed=0,
                             target=0.0, check_every=2, batch_size=2)
    assert reached["steps"] == 2 and reached["max_steps"] == 9 and reached["reached_target"]
    assert [s for s, _ in reached["curve"]] == [2]
    capped = reading_drills(load_model(tiny_model_dir, params.model), tok, *drill_material, steps=5, seed=0,
                            target=1.01, check_every=2, batch_size=2)
    assert capped["steps"] == 5 and not capped["reached_target"]
    assert [s for s, _ in capped["curve"]] == [2, 4, 5]
    assert all(0 <= a <= 1 for _, a in capped["curve"])


@pytest.mark.slow
def test_reading_drills_teach_the_look_up_the_demo_needs(params, demo_dir, tmp_path):
    """The demo's setting (model.tiny.reading_drill_steps as a cap, reading_drill_target) takes the held-out
    look-up from chance to most drills right: what lets the tiny model answer multiple choice at all
    (docs/demo-results.md)."""
    import json

    from srvau.config import load_params
    from srvau.modeling.tiny import build_tiny

    demo = load_params()
    p = params.model_copy(update={"model": params.model.model_copy(update={"tiny": demo.model.tiny})})
    report = json.loads((build_tiny(tmp_path / "base", p, sorted(demo_dir.glob("*.csv"))) / "reading_drills.json").read_text())
    assert 0 < report["steps"] <= demo.model.tiny.reading_drill_steps
    assert report["reached_target"] and report["curve"][-1][1] >= demo.model.tiny.reading_drill_target, report
    assert report["held_out_accuracy_before"] < 0.4 and report["held_out_accuracy_after"] >= 0.85, report


def test_drill_material_comes_through_the_vau_bench_importer(vau_bench_dir, tmp_path):
    """Real VAU-Bench CSVs: every row with a QA block becomes an option list, a row whose QA fields are
    -1 (as test_ucf_crime.csv has) does not, and a CSV record spanning lines is one list."""
    import pandas as pd

    from srvau.data.vau_bench import read_vau_bench
    from srvau.modeling.tiny import option_lists_from_csvs

    real = sorted(vau_bench_dir.glob("*.csv"))
    lists = option_lists_from_csvs(real)
    assert len(lists) == sum(int(read_vau_bench(p, split="val").rows["has_qa"].sum()) for p in real) > 100
    assert all(len(opts) == 4 and all(o and o != "-1" for o in opts) for _, opts in lists)
    df = pd.read_csv(real[0], dtype=str, keep_default_na=False).head(3)
    df.loc[1, ["Question", "Option 1", "Option 2", "Option 3", "Option 4", "Correct Option"]] = "-1"
    df.to_csv(tmp_path / "test_ucf_crime.csv", index=False)
    questions = [q for q, _ in option_lists_from_csvs([tmp_path / "test_ucf_crime.csv"])]
    assert questions == [df.loc[0, "Question"], df.loc[2, "Question"]]

"""The one generation path (srvau.modeling.generation): explicit settings, batching, sampling seeds."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from srvau.modeling.generation import GenerationSettings, chat_text, generate, generation_config


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, params):
    from srvau.modeling import load_model, load_processor

    return load_model(tiny_model_dir, params.model).eval(), load_processor(tiny_model_dir, params.model)


@pytest.fixture(scope="module")
def prompts(ingest_dir):
    """Three (chat-free) prompts on three cached clips of the demo test split."""
    from srvau.contract.prompts import system_prompt

    m = pd.read_parquet(ingest_dir / "manifest.parquet")
    rows = m[m["split"] == "test"].head(3)
    return [("What happens in the video?", system_prompt("reflect"), str(ingest_dir / fp)) for fp in rows["frames_path"]]


def _texts(proc, prompts):
    return [chat_text(proc, p, s) for p, s, _ in prompts]


def test_checkpoint_generation_config_does_not_leak(tiny, tiny_model_dir, params, prompts, tmp_path):
    """A checkpoint's generation_config.json (Qwen's Hub file carries a repetition penalty) changes
    nothing unless asked for: transformers fills every field a passed config leaves unset from it."""
    from srvau.modeling import load_model

    model, proc = tiny
    texts, clips = _texts(proc, prompts), [c for *_, c in prompts]
    plain = generate(model, proc, texts, clips, GenerationSettings(max_new_tokens=24), batch_size=3)
    assert any(len(set(g.token_ids)) < len(g.token_ids) for g in plain), "the random model must repeat a token"

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    gc_file = ckpt / "generation_config.json"
    gc = json.loads(gc_file.read_text()) if gc_file.exists() else {}
    gc.update({"repetition_penalty": 1.05, "no_repeat_ngram_size": 1, "do_sample": False})
    gc_file.write_text(json.dumps(gc))
    hub_like = load_model(ckpt, params.model).eval()
    assert hub_like.generation_config.no_repeat_ngram_size == 1

    same = generate(hub_like, proc, texts, clips, GenerationSettings(max_new_tokens=24), batch_size=3)
    assert [g.token_ids for g in same] == [g.token_ids for g in plain]
    cfg = generation_config(hub_like, proc.tokenizer, GenerationSettings())
    assert cfg.repetition_penalty == 1.0 and cfg.no_repeat_ngram_size == 0 and cfg.do_sample is False

    # the explicit opt-in decodes with the file's settings: no token twice
    opted = generate(hub_like, proc, texts, clips, GenerationSettings(max_new_tokens=24, use_checkpoint_defaults=True), batch_size=3)
    assert all(len(set(g.token_ids)) == len(g.token_ids) for g in opted)
    assert [g.token_ids for g in opted] != [g.token_ids for g in plain]


def test_generate_batches_loads_cache_paths_and_trims(tiny, prompts):
    """Paths are loaded per batch; batches of 2 (left padded) give the tokens of one at a time."""
    from srvau.video.cache import load_frames

    model, proc = tiny
    texts, paths = _texts(proc, prompts), [c for *_, c in prompts]
    settings = GenerationSettings(max_new_tokens=8)
    seen = []
    batched = generate(model, proc, texts, paths, settings, batch_size=2, on_batch=seen.append)
    singles = generate(model, proc, texts, [load_frames(p) for p in paths], settings, batch_size=1)
    assert seen == [2, 1]
    assert [g.token_ids for g in batched] == [g.token_ids for g in singles]
    assert [g.text for g in batched] == [g.text for g in singles]
    assert all(0 < len(g.token_ids) <= 8 and g.prompt_tokens > 0 for g in batched)
    eos = set(proc.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert [g.finished for g in batched] == [g.token_ids[-1] in eos for g in batched]  # False = cut by the budget
    with pytest.raises(FileNotFoundError, match="frame cache entry"):
        generate(model, proc, texts[:1], [paths[0] + ".gone"], settings, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, proc, texts, paths, settings, batch_size=0)


def test_sampling_is_seeded_and_uses_the_settings(tiny, prompts):
    model, proc = tiny
    texts, paths = _texts(proc, prompts), [c for *_, c in prompts]
    hot = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.9, seed=7)
    cfg = generation_config(model, proc.tokenizer, hot)
    assert cfg.do_sample and cfg.temperature == 1.5 and cfg.top_p == 0.9
    a = generate(model, proc, texts, paths, hot, batch_size=3)
    b = generate(model, proc, texts, paths, hot, batch_size=3)
    c = generate(model, proc, texts, paths, GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.9, seed=8), batch_size=3)
    greedy = generate(model, proc, texts, paths, GenerationSettings(max_new_tokens=12), batch_size=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]  # same seed, same samples
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert [g.token_ids for g in a] != [g.token_ids for g in greedy]


def test_settings_reject_nonsense():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)


def test_a_video_asked_twice_in_a_batch_is_encoded_once(tiny, prompts):
    """Rows sharing a clip share its vision features, and the tokens stay those of one at a time."""
    from srvau.contract.prompts import system_prompt

    model, proc = tiny
    (_, _, first), (_, _, second) = prompts[0], prompts[1]
    asks = [("What happens in the video?", first), ("Is anything unusual going on?", first),
            ("Describe the scene.", second), ("When does it start?", first)]
    texts = [chat_text(proc, q, system_prompt("reflect")) for q, _ in asks]
    paths = [p for _, p in asks]
    encoded: list[int] = []  # videos per vision-encoder call
    hook = model.model.visual.register_forward_hook(
        lambda mod, args, kwargs, out: encoded.append(int(kwargs.get("grid_thw", args[1] if len(args) > 1 else None).shape[0])),
        with_kwargs=True)
    try:
        batched = generate(model, proc, texts, paths, GenerationSettings(max_new_tokens=10), batch_size=4)
    finally:
        hook.remove()
    assert encoded == [2]  # two distinct videos in the batch, one encoder call
    singles = generate(model, proc, texts, paths, GenerationSettings(max_new_tokens=10), batch_size=1)
    assert [g.token_ids for g in batched] == [g.token_ids for g in singles]


def test_video_cache_reuses_a_clips_processing_and_features_across_batches(tiny, prompts):
    """A clip (its frames object) is processed once while cached, encoded once across batches, its
    pixels dropped once encoded; the least recently used clip leaves a full cache. Tokens stay those of
    one at a time."""
    from srvau.contract.prompts import system_prompt
    from srvau.modeling.generation import VideoCache, generate_batch, generation_kwargs
    from srvau.video.cache import load_frames

    model, proc = tiny
    clips = [load_frames(p) for *_, p in prompts]
    cache = VideoCache(capacity=2)
    first = cache.videos(proc, [clips[0], clips[0]])
    assert first[0] is first[1] and "pixel_values_videos" in first[0].inputs
    VideoCache.encode(model, first)
    assert first[0].features is not None and "pixel_values_videos" not in first[0].inputs
    assert cache.videos(proc, [clips[0]])[0] is first[0]
    cache.videos(proc, [clips[1]])
    cache.videos(proc, [clips[2]])  # over capacity: clip 0, the least recently used, leaves
    assert cache.videos(proc, [clips[0]])[0] is not first[0]

    asks = [("What happens in the video?", 0), ("Is anything unusual going on?", 0), ("Describe the scene.", 0),
            ("When does it start?", 1)]
    texts = [chat_text(proc, q, system_prompt("reflect")) for q, _ in asks]
    rows = [clips[c] for _, c in asks]
    gk = generation_kwargs(model, proc.tokenizer, GenerationSettings(max_new_tokens=10))
    encoded: list[int] = []  # videos per vision-encoder call
    hook = model.model.visual.register_forward_hook(
        lambda mod, args, kwargs, out: encoded.append(int(kwargs.get("grid_thw", args[1] if len(args) > 1 else None).shape[0])),
        with_kwargs=True)
    shared = VideoCache()
    try:
        batched = generate_batch(model, proc, texts[:2], rows[:2], gk, shared) + generate_batch(model, proc, texts[2:], rows[2:], gk, shared)
    finally:
        hook.remove()
    assert encoded == [1, 1]  # clip 0 in the first batch; only clip 1 is new in the second
    singles = [generate_batch(model, proc, [t], [c], gk)[0] for t, c in zip(texts, rows)]
    assert [g.token_ids for g in batched] == [g.token_ids for g in singles]

"""The vision trunk cache (srvau.modeling.vision_cache): real decoded frames through the tiny Qwen2.5-VL's
processor and vision tower; training with the cache must give the weights training without it gives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def videos(ingest_dir, tiny_model_dir, params):
    """Four processed clips from the demo's real frames: three whole, and the first of them cut to its first
    half, so that one call can hold videos of two sizes (the demo's clips are all one size)."""
    from srvau.modeling import load_processor
    from srvau.modeling.inputs import video_inputs
    from srvau.video.cache import load_frames

    manifest = pd.read_parquet(ingest_dir / "manifest.parquet")
    processor = load_processor(tiny_model_dir, params.model)
    clips = [load_frames(ingest_dir / path) for path in manifest["frames_path"][:3]]
    frames, meta = clips[0]
    half = len(frames) // 2
    short = (frames[:half], {**meta, "frames_indices": list(meta["frames_indices"])[:half]})
    return [video_inputs(processor, *clip) for clip in [*clips, short]]


def _batch(videos, order):
    import torch

    return (torch.cat([videos[i]["pixel_values_videos"] for i in order]),
            torch.cat([videos[i]["video_grid_thw"] for i in order]))


def _features(model, pixels, grid):
    import torch

    return torch.cat(model.model.get_video_features(pixels, grid).pooler_output)


def videos_at(videos, order, position):
    """The rows of ``order[position]``'s merged features in a call that encodes ``order``."""
    sizes = [int(videos[i]["video_grid_thw"].prod()) // 4 for i in order]
    start = sum(sizes[:position])
    return slice(start, start + sizes[position])


def _model(tiny_model_dir, params):
    from srvau.modeling import load_model
    from srvau.training.common import freeze_vision

    model = load_model(tiny_model_dir, params.model)
    freeze_vision(model)  # the trunk; the merger still trains, as in SFT
    return model


def test_cached_features_are_the_towers_bit_for_bit_and_each_video_is_encoded_once(videos, tiny_model_dir, params):
    import torch

    from srvau.modeling.vision_cache import cache_vision_trunk

    model = _model(tiny_model_dir, params)
    order = [0, 1, 0, 2, 1]  # repeats in one call, as a GRPO step's rows
    with torch.no_grad():
        plain = _features(model, *_batch(videos, order))
        cache = cache_vision_trunk(model, 64)
        first = _features(model, *_batch(videos, order))
        again = _features(model, *_batch(videos, [2, 0]))
    assert torch.equal(first, plain)
    assert torch.equal(again, torch.cat([plain[videos_at(videos, order, 3)], plain[videos_at(videos, order, 0)]]))
    assert cache.stats()["misses"] == 3 and cache.stats()["hits"] == 2 + 2
    assert cache_vision_trunk(model, 64) is cache  # installed once


def test_videos_of_different_sizes_in_one_call(videos, tiny_model_dir, params):
    import torch

    from srvau.modeling.vision_cache import cache_vision_trunk

    assert videos[3]["video_grid_thw"][0, 0] < videos[0]["video_grid_thw"][0, 0]  # fewer frames, fewer patches
    model = _model(tiny_model_dir, params)
    order = [3, 1, 3, 0]
    with torch.no_grad():
        plain = _features(model, *_batch(videos, order))
        cache = cache_vision_trunk(model, 64)
        assert torch.equal(_features(model, *_batch(videos, order)), plain)
        assert torch.equal(_features(model, *_batch(videos, [0, 3])),
                           torch.cat([plain[videos_at(videos, order, 3)], plain[videos_at(videos, order, 0)]]))
    assert cache.stats()["misses"] == 3 and cache.stats()["entries"] == 3


def test_the_merger_gets_the_gradient_it_gets_without_the_cache(videos, tiny_model_dir, params):
    """SFT trains the merger on top of the frozen trunk: its gradient must not change when hits
    replace the trunk's forward."""
    import torch

    from srvau.modeling.vision_cache import cache_vision_trunk

    def merger_grads(model, weights):
        model.zero_grad(set_to_none=True)
        (_features(model, *_batch(videos, [1, 0, 1])) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.model.visual.merger.named_parameters()}

    model = _model(tiny_model_dir, params)
    with torch.no_grad():
        weights = torch.randn_like(_features(model, *_batch(videos, [1, 0, 1])), generator=torch.Generator().manual_seed(0))
    plain = merger_grads(model, weights)
    cache = cache_vision_trunk(model, 64)
    for _ in range(2):  # misses, then hits
        cached = merger_grads(model, weights)
        assert plain.keys() == cached.keys() and all(torch.equal(plain[n], cached[n]) for n in plain)
    assert cache.stats()["hits"] > 0 and cache.stats()["bypassed"] == 0


def test_the_cache_steps_aside_while_the_trunk_trains_and_keeps_to_its_budget(videos, tiny_model_dir, params):
    import torch

    from srvau.modeling.vision_cache import cache_vision_trunk

    model = _model(tiny_model_dir, params)
    entry = videos[0]["pixel_values_videos"].nbytes  # an entry is its patches plus a few % of outputs
    cache = cache_vision_trunk(model, 1.5 * entry / 2**20)
    with torch.no_grad():
        _features(model, *_batch(videos, [0, 1, 2]))
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] <= cache.max_bytes  # the last one kept
    for name, p in model.model.visual.named_parameters():
        if name.startswith("blocks.0."):
            p.requires_grad_(True)
    pixels, grid = _batch(videos, [2, 2])
    out = _features(model, pixels, grid)
    assert cache.stats()["bypassed"] == 1 and cache.stats()["hits"] == 0
    assert out.requires_grad and model.model.visual.blocks[0].attn.qkv.weight.grad is None
    out.sum().backward()  # the gradient reaches the trunk: nothing cached stood in for it
    assert model.model.visual.blocks[0].attn.qkv.weight.grad is not None


def test_a_budget_of_zero_installs_nothing(tiny_model_dir, params):
    from srvau.modeling.vision_cache import cache_vision_trunk, trunk_cache

    model = _model(tiny_model_dir, params)
    assert cache_vision_trunk(model, 0) is None and trunk_cache(model) is None


def _sha(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


def test_sft_and_grpo_train_the_same_weights_with_and_without_the_cache(train_rocot, tiny_model_dir, params, tmp_path):
    """The stages themselves, cache on (the default) and off: the same merged weights to the byte. GRPO
    as the demo runs it (LoRA: one model, frozen trunk) and as the paper recipe does (all weights train,
    so the policy's cache steps aside, and a separate reference model whose cache is used)."""
    from srvau.config import load_params
    from srvau.training.grpo import grpo
    from srvau.training.sft import sft

    fast = {**{f"synth.{k}": v for k, v in params.synth.model_dump().items()},
            "sft.max_steps": 4, "sft.per_device_train_batch_size": 2, "sft.save_steps": 100,
            "grpo.max_steps": 2, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2,
            "grpo.max_completion_length": 12, "grpo.save_steps": 100}
    full = {"grpo.lora": False, "grpo.freeze_vision": False}
    rocot = train_rocot(load_params(overrides=fast))
    shas = {}
    for mb in (0, 64):
        p = load_params(overrides={**fast, "model.vision_trunk_cache_mb": mb})
        out = tmp_path / f"mb{mb}"
        sft(rocot, str(tiny_model_dir), out / "sft", p)
        grpo(rocot, str(out / "sft" / "merged"), out / "grpo-lora", p)
        grpo(rocot, str(out / "sft" / "merged"), out / "grpo-full", load_params(overrides={**fast, **full,
                                                                                         "model.vision_trunk_cache_mb": mb}))
        shas[mb] = [_sha(out / stage / "merged") for stage in ("sft", "grpo-lora", "grpo-full")]
    assert shas[0] == shas[64]


def test_grpo_caches_the_reference_models_trunk_not_a_training_one(tiny_model_dir, params, tmp_path):
    """Full fine-tuning with the vision tower trained (the paper recipe): the policy's cache steps aside,
    the separate reference model never trains and keeps its encodings."""
    from datasets import Dataset

    from srvau.config import load_params
    from srvau.modeling import load_model, load_processor
    from srvau.modeling.vision_cache import trunk_cache
    from srvau.training.grpo import build_trainer

    p = load_params(overrides={"grpo.lora": False, "grpo.freeze_vision": False, "grpo.beta": 0.04})
    model = load_model(tiny_model_dir, p.model)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "x"}], "task": "qa"}])
    trainer = build_trainer(model, load_processor(tiny_model_dir, p.model), rows, p.grpo, p, tmp_path)
    assert trainer.ref_model is not None
    assert not any(q.requires_grad for q in trainer.ref_model.parameters())
    assert trunk_cache(trainer.ref_model) is not None
    assert any(q.requires_grad for n, q in trainer.model.named_parameters() if ".visual.blocks." in f".{n}")

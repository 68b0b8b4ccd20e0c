"""GPU check: the real Qwen2.5-VL-3B architecture trained for a few SFT and video GRPO steps at the paper
recipe's settings, before a GPU-day is spent on it.

What runs (no download, nothing but this checkout):
  * the model: Qwen2.5-VL-3B-Instruct's architecture with random weights, built from its config values
    (``QWEN25_VL_3B`` below, copied from the Hub checkpoint's config.json) and a BPE tokenizer trained
    offline; saved as safetensors and loaded back through ``srvau.modeling`` as the stages do;
  * the data: synthetic clips at the recipe's frame budget (``video.*`` of configs/recipe/paper-3b.yaml: a
    60 s clip at 2 fps under the total-pixel cap, about 3.5k vision tokens) and reflection traces of the
    recipe's lengths (``cot.think_max_words`` / ``answer_max_words``);
  * SFT through ``srvau.training.sft.build_trainer`` (our video collator, TRL's SFTTrainer) and GRPO
    through ``srvau.training.grpo.build_trainer`` (our VideoGRPOTrainer, the recipe's rewards,
    generations and completion length), both with the recipe's bf16 and gradient checkpointing.

It records, per stage, the median step time (first step excluded: warm-up), tokens/s, for GRPO the
share of step time spent in ``generate()``, and peak GPU memory; prints a table and writes JSON
(default ``bench/results/gpu_check.json``). Without CUDA it exits 2 with a message; ``--tiny`` runs the
same code path on CPU with a small config (what the test suite runs).

On a bare GPU machine (torch, transformers, accelerate, peft installed) carry the rest as wheels,
built on a machine with pip (x86-64, the GPU machine's Python version)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \\
        trl==1.16.0 datasets==5.2.0 dill multiprocess pydantic pydantic-core annotated-types \\
        typing-inspection transformers==5.23.0
    # there:
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
    python bench/gpu_check.py [--sft-steps 3] [--grpo-steps 3] [--completion-length 1024]

(transformers travels too when the machine's is older than the one this project pins.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = "paper-3b"
NO_CUDA_EXIT = 2

# Qwen2.5-VL-3B-Instruct's config.json (the Hub checkpoint), not transformers' defaults (those are 7B/72B).
QWEN25_VL_3B = {
    "text": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
        hidden_act="silu", use_sliding_window=False, sliding_window=32768, max_window_layers=70,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
    ),
    "vision": dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
        hidden_act="silu", patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
    ),
    "tie_word_embeddings": True,
    "tokenizer_vocab": 8192,  # our offline BPE; the 151936-row embedding and lm_head stay full size
}
# The same code path at CPU size (head_dim 32: mrope sections 4+6+6 = 16 rotary pairs).
TINY = {
    "text": dict(
        vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 6, 6]},
    ),
    "vision": dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128, hidden_act="silu",
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
        tokens_per_second=2,
    ),
    "tie_word_embeddings": False,
    "tokenizer_vocab": 1024,
}
CLIP_SECONDS = 60.0  # a typical VAU-Bench clip length; the pixel budget binds, not the length
SOURCE = {"fps": 30.0, "height": 360, "width": 640}

log = logging.getLogger("gpu_check")


def require_cuda(tiny: bool) -> None:
    """Exit with a message on a machine without CUDA, unless ``--tiny`` (CPU) was asked for."""
    if tiny:
        return
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}): this check measures the 3B model on a GPU. "
              "Run it on a CUDA machine, or with --tiny for the CPU smoke run of the same code path.",
              file=sys.stderr)
        raise SystemExit(NO_CUDA_EXIT)


def recipe_params(args):
    """The paper recipe, with the step counts of this check and no checkpoints; ``--tiny`` shrinks the
    frame budget and the lengths to CPU size and trains in fp32."""
    from srvau.config import load_params

    over = {
        "sft.max_steps": args.sft_steps, "sft.save_steps": 10**6, "sft.logging_steps": 1,
        "sft.dataloader_num_workers": 0,  # the synthetic clips live in this process
        "grpo.max_steps": args.grpo_steps, "grpo.save_steps": 10**6, "grpo.log_completions_every": 0,
    }
    if args.completion_length:
        over["grpo.max_completion_length"] = args.completion_length
    if args.tiny:
        over.update({
            "model.torch_dtype": "float32", "model.attn_implementation": "sdpa", "sft.bf16": False,
            "video.max_frames": 8, "video.max_pixels_per_frame": 112 * 112, "video.total_pixels": 8 * 112 * 112,
            "cot.think_max_words": 12, "cot.answer_max_words": 12, "sft.max_length": 2048,
            "grpo.max_prompt_length": 2048, "grpo.max_completion_length": args.completion_length or 16,
        })
    params = load_params(recipe=RECIPE, overrides=over)
    if params.model.attn_implementation == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:  # a bare machine has no flash-attn wheel: measure sdpa and say so
            params.model.attn_implementation = "sdpa"
    return params


# ----------------------------------------------------------------------------- model and data


def synthetic_clip(params, seed: int):
    """uint8 (T, H, W, 3) frames and cache-style metadata for a CLIP_SECONDS clip under ``params.video``."""
    import numpy as np

    from srvau.video.sampling import num_sampled_frames, resize_target

    n = num_sampled_frames(CLIP_SECONDS, params.video)
    n += n % 2
    h, w = resize_target(SOURCE["height"], SOURCE["width"], n, params.video)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    total = int(CLIP_SECONDS * SOURCE["fps"])
    meta = {"total_num_frames": total, "fps": SOURCE["fps"], "duration": CLIP_SECONDS,
            "frames_indices": [int(i) for i in np.linspace(0, total - 1, n).round()]}
    return frames, meta


def words(n: int, seed: int) -> str:
    vocab = ["the", "person", "runs", "toward", "car", "fire", "smoke", "crowd", "street", "falls", "near",
             "door", "camera", "shows", "a", "man", "then", "suddenly", "vehicle", "collides", "with", "wall"]
    return " ".join(vocab[(seed * 7 + i * 3) % len(vocab)] for i in range(n))


def rocot_rows(params, n: int) -> list[dict]:
    """RoCoT-shaped rows (QA and grounding) whose traces have the recipe's lengths."""
    from srvau.contract.prompts import system_prompt
    from srvau.contract.trace import render_trace

    cot, rows = params.cot, []
    for i in range(n):
        task = ("qa", "grounding")[i % 2]
        think = words(cot.think_max_words, i)
        if task == "qa":
            prompt = f"What happens in the video? Options: (A) {words(6, i)} (B) {words(6, i + 1)} (C) a fire (D) nothing"
            trace = render_trace(think, "B", think, think, "A")
            truth = {"answer": "A", "gt_start": float("nan"), "gt_end": float("nan"), "interval_kind": "anomaly"}
        else:
            prompt = "When does the anomaly happen? Give the interval in seconds."
            trace = render_trace(think, "Anomaly", think, think, "Anomaly", (10.0, 20.0), (12.0, 24.0))
            truth = {"answer": "Anomaly", "gt_start": 12.0, "gt_end": 24.0, "interval_kind": "anomaly"}
        rows.append({"sample_id": f"s{i}", "video_id": f"v{i}", "split": "train", "task": task, "style": "reflect",
                     "system": system_prompt("reflect", task), "prompt": prompt, "completion": trace,
                     "frames_path": f"synthetic/{i}.npz", "anomaly_class": "Fighting", **truth})
    return rows


def build_checkpoint(spec: dict, params, out: Path, corpus: list[str]) -> tuple[Path, int, int, int]:
    """Random-weight Qwen2.5-VL of ``spec`` + an offline tokenizer/processor, saved as safetensors;
    returns (folder, parameters, tokenizer vocabulary, model vocabulary)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from srvau.modeling.tiny import CHAT_TOKENS, VISION_TOKENS, build_processor, train_tokenizer

    tokenizer = train_tokenizer(corpus, spec["tokenizer_vocab"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS + VISION_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={**spec["text"], "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config=spec["vision"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec["tie_word_embeddings"],
    )
    torch.manual_seed(params.seed)
    dtype = getattr(torch, params.model.torch_dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialise where it runs: a 3B random init on CPU takes minutes
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tokenizer, params.video).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out, n, len(tokenizer), config.text_config.vocab_size


# ----------------------------------------------------------------------------- measurement


class Clock:
    """Wall time of a region, GPU work included."""

    @staticmethod
    def now() -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> dict:
    import torch

    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["peak_gpu_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def step_timer():
    """A TrainerCallback timing every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = Clock.now()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(Clock.now() - self._t)

    return StepTimer()


class CountingCollator:
    """Our collator, counting the tokens (text + vision placeholders, no padding) of each batch."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def no_checkpoints(trainer) -> None:
    """Measure steps, not disk: a 3B full fine-tune's checkpoint (fp32 weights + AdamW state, ~45 GB)
    would fill the machine's disk. transformers 5 saves at the last step under save_strategy "steps"."""
    from srvau.training.checkpoints import SaveLastStep

    trainer.remove_callback(SaveLastStep)
    trainer.args.save_strategy = "no"


def _median_after_warmup(xs: list[float]) -> float | None:
    xs = xs[1:] if len(xs) > 1 else xs
    return statistics.median(xs) if xs else None


def run_sft(params, ckpt: Path, clips, rows, tmp: Path) -> dict:
    from datasets import Dataset

    from srvau.training.sft import build_trainer

    reset_peak()
    loader = lambda ref: clips[int(Path(ref).stem) % len(clips)]  # noqa: E731
    trainer = build_trainer(Dataset.from_list(rows), ckpt, tmp / "sft", params, video_loader=loader)
    no_checkpoints(trainer)
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    steps = len(timer.times)
    tokens = _chunks(counter.tokens, params.sft.gradient_accumulation_steps)[:steps]  # micro-batches per step
    out = {"steps": steps, "step_times_s": timer.times, "step_time_s": _median_after_warmup(timer.times),
           "tokens_per_step": statistics.median(tokens) if tokens else None,
           "tokens_per_s": _median_after_warmup([n / t for n, t in zip(tokens, timer.times)]), "loss": trainer.state.log_history[-1].get("train_loss"),
           "bf16_autocast": bool(trainer.args.bf16), "gradient_checkpointing": bool(trainer.args.activation_checkpointing),
           **peak_memory_gb()}
    del trainer
    _free()
    return out


def _chunks(xs: list[int], size: int) -> list[int]:
    size = max(size, 1)
    return [sum(xs[i : i + size]) for i in range(0, len(xs), size)]


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_grpo(params, ckpt: Path, clips, rows, tmp: Path, tokenizer_vocab: int, model_vocab: int) -> dict:
    from datasets import Dataset

    from srvau.modeling import load_model, load_processor
    from srvau.training import checkpoints as ckpts
    from srvau.training.grpo import build_trainer, grpo_rows

    reset_peak()
    cfg = params.grpo
    load_cfg, autocast = ckpts.training_dtype(params.model)
    model = load_model(ckpt, load_cfg)
    processor = load_processor(ckpt, params.model)
    trainer = build_trainer(model, processor, Dataset.from_list(grpo_rows(rows, cfg, params)), cfg, params,
                            tmp / "grpo", bf16=autocast)
    trainer.video_loader = lambda ref: clips[int(Path(ref).stem) % len(clips)]
    no_checkpoints(trainer)
    if model_vocab > tokenizer_vocab:  # random weights would sample ids our offline tokenizer lacks
        extra = list(range(tokenizer_vocab, model_vocab))
        suppress = sorted(set(trainer.generation_kwargs.get("suppress_tokens") or []) | set(extra))
        trainer.generation_kwargs["suppress_tokens"] = suppress
        trainer.generation_config.suppress_tokens = suppress
    gen_times: list[float] = []
    generate = trainer.model.generate

    def timed_generate(*a, **kw):  # the rollout's share of a step
        t0 = Clock.now()
        try:
            return generate(*a, **kw)
        finally:
            gen_times.append(Clock.now() - t0)

    trainer.model.generate = timed_generate
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    tokens = [h["num_tokens"] for h in logs]
    per_step_tokens = [b - a for a, b in zip([0.0] + tokens[:-1], tokens)]
    steps = len(timer.times)
    gen_per_step = _chunk_floats(gen_times, steps)
    out = {"steps": steps, "step_times_s": timer.times, "step_time_s": _median_after_warmup(timer.times),
           "tokens_per_step": statistics.median(per_step_tokens) if per_step_tokens else None,
           "tokens_per_s": _median_after_warmup([n / t for n, t in zip(per_step_tokens, timer.times)]),
           "generation_share": _median_after_warmup([g / t for g, t in zip(gen_per_step, timer.times)]),
           "generate_calls": len(gen_times), "completion_length_max": cfg.max_completion_length,
           "num_generations": cfg.num_generations, "bf16_autocast": bool(trainer.args.bf16),
           "gradient_checkpointing": bool(trainer.args.activation_checkpointing), **peak_memory_gb()}
    del trainer, model
    _free()
    return out


def _chunk_floats(xs: list[float], steps: int) -> list[float]:
    if not steps:
        return []
    size = max(len(xs) // steps, 1)
    return [sum(xs[i : i + size]) for i in range(0, size * steps, size)]


# ----------------------------------------------------------------------------- main


def table(result: dict) -> str:
    rows = [("stage", "step s", "tokens/step", "tokens/s", "gen share", "peak GPU GB", "peak RSS GB")]
    for stage in ("sft", "grpo"):
        r = result[stage]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows.append((stage, fmt(r["step_time_s"], ".2f"), fmt(r["tokens_per_step"], ".0f"), fmt(r["tokens_per_s"], ".0f"),
                     fmt(r.get("generation_share"), ".0%"), fmt(r.get("peak_gpu_allocated_gb"), ".1f"),
                     fmt(r["peak_rss_gb"], ".1f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small config on CPU: the same code path, for tests")
    ap.add_argument("--sft-steps", type=int, default=3)
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=8, help="synthetic RoCoT rows (and distinct clips: 4)")
    ap.add_argument("--completion-length", type=int, default=None, help="GRPO completion tokens (default: the recipe's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/gpu_check[_tiny].json)")
    args = ap.parse_args(argv)
    require_cuda(args.tiny)  # before the heavy imports: a CPU machine answers at once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out_path = args.out or ROOT / "bench" / "results" / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")

    import torch
    import transformers

    from srvau.compat import ensure_torchvision

    ensure_torchvision()
    t0 = time.perf_counter()
    params = recipe_params(args)
    spec = TINY if args.tiny else QWEN25_VL_3B
    clips = [synthetic_clip(params, i) for i in range(4)]
    rows = rocot_rows(params, args.samples)
    corpus = [r["prompt"] for r in rows] + [r["completion"] for r in rows] + [r["system"] for r in rows]
    with tempfile.TemporaryDirectory(prefix="srvau-gpu-check-") as d:
        tmp = Path(d)
        ckpt, n_params, tok_vocab, model_vocab = build_checkpoint(spec, params, tmp / "base", corpus)
        log.info("model: %.2f B parameters, built in %.0f s", n_params / 1e9, time.perf_counter() - t0)
        sft = run_sft(params, ckpt, clips, rows, tmp)
        grpo = run_grpo(params, ckpt, clips, rows, tmp, tok_vocab, model_vocab)
    frames, _ = clips[0]
    result = {
        "check": "gpu_check",
        "model": "tiny (CPU smoke run)" if args.tiny else "Qwen2.5-VL-3B-Instruct architecture, random weights",
        "parameters": n_params,
        "recipe": RECIPE,
        "settings": {
            "torch_dtype": params.model.torch_dtype, "attn_implementation": params.model.attn_implementation,
            "frames_per_clip": int(frames.shape[0]), "frame_hw": list(frames.shape[1:3]),
            "vision_tokens_per_clip": int(frames.shape[0] // 2 * frames.shape[1] * frames.shape[2] // 784),
            "sft_batch": params.sft.per_device_train_batch_size, "grpo_batch": params.grpo.per_device_train_batch_size,
            "think_max_words": params.cot.think_max_words, "answer_max_words": params.cot.answer_max_words,
        },
        "sft": sft,
        "grpo": grpo,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(table(result))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())

"""Benchmark: GRPO step time and tokens/s, our video GRPO vs stock TRL GRPOTrainer fed the frames as images.

Two ways to give the same sampled frames to GRPO on Qwen2.5-VL, side by side in one run:

    ours    srvau.training.grpo.VideoGRPOTrainer: the frames as one *video* (temporal patches of 2
            frames, M-RoPE time positions from the cache metadata), in generation and in every
            log-prob forward
    stock   trl.GRPOTrainer, unmodified, the frames as a list of *images* (one image per frame, the
            peer most users would try: TRL has no video path). Each frame becomes its own image:
            twice the vision tokens of the video path, and no temporal positions.

Same model (the tiny Qwen2.5-VL built from the demo data, or ``--model``), same prompts (RoCoT from the
real builder over synthetic demo videos), same rewards (the registry set of params.yaml), same batch,
generations, KL beta and completion length. Completions are forced to exactly ``--completion-length``
tokens (``min_new_tokens``), so both sides generate and score the same number of completion tokens;
vision placeholders are suppressed on both sides.

Each (variant, round) runs in a fresh subprocess (imports and setup not timed) for ``--warmup`` +
``--steps`` optimizer steps; the per-step times are TRL's own ``step_time`` metric (generation +
scoring + forward/backward of one step), tokens are TRL's ``num_tokens`` (prompt incl. vision
placeholders + completion). Rounds alternate the variants so machine load hits both; the table shows
medians over all measured steps, and the peak RSS of each variant's process. Prints a table, writes
bench/results/grpo.json.

    python bench/grpo.py [--videos 8] [--steps 5] [--warmup 1] [--rounds 2] [--batch 8] [--generations 4]
                         [--completion-length 32] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = ("ours", "stock")


def prepare(tmp: Path, n_videos: int, model: str | None) -> dict:
    from bench.common import synthetic_train_set
    from srvau.modeling.tiny import build_tiny

    # no reading drills (minutes of practice the step timings do not need; completions are forced to
    # --completion-length anyway)
    params, demo, rocot = synthetic_train_set(tmp, n_videos, {"model.tiny.reading_drill_steps": 0})
    if model is None:
        model = str(build_tiny(tmp / "tiny", params, sorted(demo.glob("*.csv"))))
    return {"rocot": str(rocot), "model": model}


def worker(args) -> dict:
    """One variant, one round, in this (fresh) process."""
    from srvau.modeling import load_model, load_processor, vision_token_ids  # first: makes torchvision importable

    import torch
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from srvau.config import load_params
    from srvau.training.common import load_video
    from srvau.training.grpo import VideoGRPOTrainer, grpo_rows
    from srvau.training.rewards import get_reward_funcs
    from srvau.training.sft import load_split

    torch.set_num_threads(args.threads)
    params = load_params()
    rows = grpo_rows(load_split(Path(args.rocot), "train").to_list(), params.grpo, params)
    processor = load_processor(args.model, params.model)
    funcs, weights = get_reward_funcs(params.grpo.reward_funcs)
    suppress = vision_token_ids(processor.tokenizer)
    config = GRPOConfig(
        output_dir=str(Path(args.tmp) / f"out-{args.worker}"),
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch,
        num_generations=args.generations,
        max_completion_length=args.completion_length,
        generation_kwargs={"min_new_tokens": args.completion_length, "suppress_tokens": suppress},
        temperature=1.0,
        beta=0.04,
        learning_rate=1e-5,
        loss_type="grpo",
        reward_weights=weights,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=params.seed,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    model = load_model(args.model, params.model)
    if args.worker == "ours":
        import functools

        trainer = VideoGRPOTrainer(
            model=model, reward_funcs=funcs, args=config, train_dataset=Dataset.from_list(rows),
            processing_class=processor, video_loader=functools.partial(load_video, params=params),
        )
    else:
        image_rows = []
        for r in rows:
            frames, _ = load_video(r["video"], params)
            image_rows.append({**{k: v for k, v in r.items() if k != "video"}, "images": [Image.fromarray(f) for f in frames]})
        trainer = GRPOTrainer(
            model=model, reward_funcs=funcs, args=config, train_dataset=Dataset.from_list(image_rows),
            processing_class=processor,
        )
    trainer.train()
    steps = [h for h in trainer.state.log_history if "step_time" in h]
    tokens = [h["num_tokens"] for h in steps]
    per_step_tokens = [b - a for a, b in zip([0.0] + tokens[:-1], tokens)]
    measured = list(zip([h["step_time"] for h in steps], per_step_tokens))[args.warmup :]
    return {
        "variant": args.worker,
        "step_times_s": [t for t, _ in measured],
        "tokens_per_step": [n for _, n in measured],
        "vision_tokens_per_prompt": vision_tokens(processor, rows[0], params, args.worker),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def vision_tokens(processor, row, params, variant: str) -> int:
    """Vision placeholder tokens of one prompt as each variant feeds it."""
    from PIL import Image

    from srvau.modeling.inputs import processor_inputs
    from srvau.training.common import load_video

    frames, meta = load_video(row["video"], params)
    if variant == "ours":
        enc = processor_inputs(processor, ["<|vision_start|><|video_pad|><|vision_end|>"], [frames], [meta])
        pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    else:
        text = "".join("<|vision_start|><|image_pad|><|vision_end|>" for _ in frames)
        enc = processor(text=[text], images=[Image.fromarray(f) for f in frames], return_tensors="pt")
        pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return int((enc["input_ids"] == pad).sum())


def run_worker(variant: str, args, prep: dict, tmp: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", variant, "--rocot", prep["rocot"], "--model", prep["model"],
        "--tmp", str(tmp), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
        "--generations", str(args.generations), "--completion-length", str(args.completion_length),
        "--threads", str(args.threads),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{proc.stderr[-4000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def summarize(results: list[dict]) -> dict:
    out = {}
    for v in VARIANTS:
        mine = [r for r in results if r["variant"] == v]
        times = [t for r in mine for t in r["step_times_s"]]
        toks = [n for r in mine for n in r["tokens_per_step"]]
        rates = [n / t for r in mine for t, n in zip(r["step_times_s"], r["tokens_per_step"])]
        out[v] = {
            "step_time_s_median": statistics.median(times),
            "step_time_s_min": min(times),
            "tokens_per_step": statistics.median(toks),
            "tokens_per_s_median": statistics.median(rates),
            "vision_tokens_per_prompt": mine[0]["vision_tokens_per_prompt"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "steps_measured": len(times),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="completions per step (prompts x generations)")
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--completion-length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (shared small machines: 1)")
    ap.add_argument("--model", default=None, help="checkpoint to benchmark (default: the tiny model)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo.json")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--rocot", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srvau-bench-grpo-") as d:
        tmp = Path(d)
        print(f"preparing {args.videos} demo videos, RoCoT and the model ...", file=sys.stderr)
        prep = prepare(tmp, args.videos, args.model)
        results = []
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                print(f"round {r + 1}/{args.rounds}: {v} ...", file=sys.stderr)
                results.append(run_worker(v, args, prep, tmp))
    summary = summarize(results)
    ours, stock = summary["ours"], summary["stock"]
    ratios = {
        "step_time_stock_over_ours": stock["step_time_s_median"] / ours["step_time_s_median"],
        "tokens_per_s_ours_over_stock": ours["tokens_per_s_median"] / stock["tokens_per_s_median"],
        "vision_tokens_stock_over_ours": stock["vision_tokens_per_prompt"] / ours["vision_tokens_per_prompt"],
    }

    rows = [("variant", "step s (median)", "step s (min)", "tokens/step", "tokens/s", "vision tok/prompt", "peak RSS MB")]
    for v in VARIANTS:
        s = summary[v]
        rows.append((v, f"{s['step_time_s_median']:.3f}", f"{s['step_time_s_min']:.3f}", f"{s['tokens_per_step']:.0f}",
                     f"{s['tokens_per_s_median']:.0f}", str(s["vision_tokens_per_prompt"]), f"{s['peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(f"step time stock/ours: {ratios['step_time_stock_over_ours']:.2f}x   "
          f"tokens/s ours/stock: {ratios['tokens_per_s_ours_over_stock']:.2f}x   "
          f"vision tokens stock/ours: {ratios['vision_tokens_stock_over_ours']:.2f}x")

    report = {
        "benchmark": "grpo",
        "settings": {k: getattr(args, k) for k in ("videos", "steps", "warmup", "rounds", "batch", "generations",
                                                    "completion_length", "threads")}
        | {"model": args.model or "tiny (built from the demo data)"},
        "results": summary,
        "ratios": ratios,
        "runs": results,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Benchmark: how much of GRPO's logged reward trend is the luck of sampling, with and without paired sampling.

The demo's criteria read the GRPO stage's logged reward (``grpo.reward``): its last quarter of steps
against its first. With ``grpo.mirror_prompts`` the two quarters hold the same prompts, but each
step still samples its completions afresh, so the trend mixes what the policy learnt with the draw.
``grpo.paired_sampling`` gives the mirrored steps the same random numbers (common random numbers,
``VideoGRPOTrainer.sampling_seed``). This script trains the stage for real (its own settings, from
the SFT model, on its own prompts) once per sampling seed, unpaired (the peer) and paired, and
compares the spread of last-minus-first over the seeds. The seed changes the sampling only: the
trainer, its LoRA initialisation and the prompt order are built the same way each time.

Run it in a project that has been through ``make run`` (``data/rocot``, ``models/sft/merged``, its
``params.yaml``; ``--set seed=N`` if the project was run with another seed). About two minutes per
run on two cores. Prints a table, writes bench/results/grpo_trend.json.

    python bench/grpo_trend.py [--model models/sft/merged] [--seeds 1 2 3] [--set k=v]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("unpaired", "paired")


def train_a_run(model_dir: str, paired: bool, seed: int, out: Path, params, rocot: Path | None = None):
    """One training run of the stage from ``model_dir``, its completions sampled from ``seed``; the trainer."""
    import transformers

    from bench.common import grpo_stage_trainer

    trainer = grpo_stage_trainer(model_dir, out, params, rocot, paired_sampling=paired)
    # After the trainer's own seeding (LoRA initialisation, the run's stream): only the sampling changes.
    transformers.set_seed(seed)
    trainer.args.seed = seed  # what paired sampling derives each pair's seed from
    trainer.train()
    return trainer


def trend_of_a_run(model_dir: str, paired: bool, seed: int, out: Path, params) -> list[float]:
    """The stage's per-step mean rewards for one training run from ``model_dir``, sampled from ``seed``."""
    trainer = train_a_run(model_dir, paired, seed, out, params)
    return [h["reward"] for h in trainer.state.log_history if "reward" in h]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/sft/merged", help="the policy GRPO starts from")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="sampling seeds")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="unpaired (the peer), paired, or both")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of the project's params.yaml, as the stage was run (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo_trend.json")
    args = ap.parse_args()

    from srvau.config import load_params, parse_override
    from srvau.evaluation.demo_check import quarter_means  # the demo's own reading of the trend

    params = load_params(overrides=dict(parse_override(o) for o in args.overrides))
    if not params.grpo.mirror_prompts:
        ap.error("paired sampling needs grpo.mirror_prompts: true (--set grpo.mirror_prompts=true)")
    variants = [v for v in VARIANTS if v in args.variants]
    runs: dict[str, dict[int, dict]] = {v: {} for v in variants}
    with tempfile.TemporaryDirectory(prefix="srvau-bench-trend-") as d:
        for seed in args.seeds:
            for variant in variants:
                rewards = trend_of_a_run(args.model, variant == "paired", seed, Path(d) / f"{variant}-{seed}", params)
                q1, q4 = quarter_means(rewards)
                runs[variant][seed] = {"rewards": rewards, "q1": q1, "q4": q4, "trend": q4 - q1,
                                       "all": statistics.fmean(rewards)}
                print(f"{variant} seed {seed}: q1 {q1:.3f} q4 {q4:.3f} trend {q4 - q1:+.3f}", file=sys.stderr)

    n_steps = len(runs[variants[0]][args.seeds[0]]["rewards"])
    print(f"\nGRPO's logged reward, {n_steps} steps from {args.model}, one training run per sampling seed")
    print(f"{'sampling':<9} {'seed':>5} {'q1':>7} {'q4':>7} {'q4-q1':>7} {'all':>7}")
    for variant in variants:
        for seed in args.seeds:
            r = runs[variant][seed]
            print(f"{variant:<9} {seed:>5} {r['q1']:7.3f} {r['q4']:7.3f} {r['trend']:+7.3f} {r['all']:7.3f}")
    summary = {}
    for variant in variants:
        trends = [runs[variant][s]["trend"] for s in args.seeds]
        summary[variant] = {"trend_mean": statistics.fmean(trends),
                            "trend_sd": statistics.stdev(trends) if len(trends) > 1 else float("nan"),
                            "rising": sum(t > 0 for t in trends), "runs": len(trends)}
    for variant in variants:
        s = summary[variant]
        print(f"{variant:<9} trend mean {s['trend_mean']:+.3f}, sd {s['trend_sd']:.3f}, rising at {s['rising']} of {s['runs']}")
    if len(variants) == 2 and len(args.seeds) > 1 and summary["unpaired"]["trend_sd"] > 0:
        summary["sd_ratio_paired_over_unpaired"] = summary["paired"]["trend_sd"] / summary["unpaired"]["trend_sd"]
        print(f"spread of the trend, paired / unpaired: {summary['sd_ratio_paired_over_unpaired']:.2f}x")

    from bench.common import write_results

    write_results(args.out, {"model": args.model, "seeds": args.seeds, "overrides": args.overrides, "runs": runs,
                             "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

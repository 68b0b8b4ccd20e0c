"""Benchmark: SFT and GRPO with the vision trunk cache on and off.

Same data, model, settings and seed, in one run:

    cached    model.vision_trunk_cache_mb: 512 (the default): each video's frozen trunk output is kept,
              so a video is encoded once per run (SFT) or once per step instead of once per row and pass
              (GRPO: rollout, reference and policy passes over rows that repeat each video)
    uncached  model.vision_trunk_cache_mb: 0: the vision tower runs on every row of every call

Each (stage, variant, round) is one ``srvau sft`` / ``srvau grpo`` process; the time is the stage's own
``train_wall_s`` (the trainer loop). Rounds alternate the variants so machine load hits both; the ratio
uses the fastest run of each (medians are reported too). The merged weights of the two variants are
compared byte for byte: the cache must not change what is trained. GRPO starts from the tiny base
model, not an SFT model (the step's work is the same).

Data: a synthetic demo set (``srvau.data.synth``) of ``--videos`` train videos through the real ingest
and RoCoT stages, in a temporary folder; the tiny Qwen2.5-VL built from it without reading drills. The
demo's own batch sizes. Prints a table, writes bench/results/trunk_cache.json.

    python bench/trunk_cache.py [--videos 16] [--sft-epochs 2] [--grpo-steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = {"cached": 512, "uncached": 0}


def run_stage(tmp: Path, stage: str, rocot: Path, model: Path, variant: str, round_: int, steps: int) -> dict:
    from bench.common import run_training_stage

    return run_training_stage(stage, rocot, model, tmp / f"{stage}-{variant}-{round_}", steps,
                              [f"model.vision_trunk_cache_mb={VARIANTS[variant]}"], f"{stage} {variant} round {round_}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16, help="train videos (synthetic)")
    ap.add_argument("--sft-epochs", type=int, default=2, help="SFT epochs per run (the demo trains ~4.3)")
    ap.add_argument("--grpo-steps", type=int, default=8, help="GRPO steps per run (the demo trains 50)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trunk_cache.json")
    args = ap.parse_args()

    from bench.common import synthetic_train_set, write_results
    from srvau.modeling.tiny import build_tiny
    from srvau.training.sft import load_split

    results: dict[str, dict] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="srvau-bench-trunk-") as d:
        tmp = Path(d)
        print(f"preparing {args.videos} synthetic train videos (ingest, RoCoT, tiny model) ...", file=sys.stderr)
        params, demo, rocot = synthetic_train_set(tmp, args.videos, {"model.tiny.reading_drill_steps": 0})
        model = build_tiny(tmp / "tiny", params, sorted(demo.glob("*.csv")))
        rows = len(load_split(rocot, "train"))
        plan = {"sft": args.sft_epochs * math.ceil(rows / params.sft.per_device_train_batch_size),
                "grpo": args.grpo_steps}
        for stage, steps in plan.items():
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for r in range(args.rounds):
                for v in (VARIANTS if r % 2 == 0 else reversed(VARIANTS)):
                    runs[v].append(run_stage(tmp, stage, rocot, model, v, r, steps))
                    print(f"{stage} round {r} {v}: {runs[v][-1]['train_wall_s']:.1f} s", file=sys.stderr)
            best = {v: min(x["train_wall_s"] for x in runs[v]) for v in VARIANTS}
            median = {v: statistics.median(x["train_wall_s"] for x in runs[v]) for v in VARIANTS}
            identical = len({x["weights_sha256"] for v in VARIANTS for x in runs[v]}) == 1
            ok &= identical
            results[stage] = {"steps": steps, "runs": runs, "best_s": best, "median_s": median,
                              "ratio_uncached_over_cached": best["uncached"] / best["cached"],
                              "median_ratio": median["uncached"] / median["cached"], "weights_identical": identical}

    print(f"\n{rows} rows over {args.videos} videos, {args.rounds} rounds per variant")
    print(f"{'stage':<6} {'steps':>6} {'cached s':>9} {'uncached s':>11} {'ratio':>6} {'median':>7}  weights")
    for stage, r in results.items():
        print(f"{stage:<6} {r['steps']:>6} {r['best_s']['cached']:9.1f} {r['best_s']['uncached']:11.1f} "
              f"{r['ratio_uncached_over_cached']:5.2f}x {r['median_ratio']:6.2f}x  "
              f"{'identical' if r['weights_identical'] else 'DIFFER'}")
    write_results(args.out, {"settings": {"videos": args.videos, "rows": rows, "rounds": args.rounds,
                                          "vision_trunk_cache_mb": VARIANTS}, **results})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: SFT wall time with processed rows kept in memory vs processed again every epoch.

Same data, model, settings and seed, in one run:

    kept         sft.keep_samples_mb: 1024 (the demo default): the collator keeps each processed row
                 (tokens, labels) and each video's patches, so epochs after the first read no frames and
                 render no chat template
    reprocessed  sft.keep_samples_mb: 0 (the paper recipe): every batch reads its frames from the cache and
                 renders, tokenises and patches its rows

Each (variant, round) is one ``srvau sft`` process for ``--epochs`` epochs; the time is the stage's own
``train_wall_s`` (the trainer loop: imports, model loading and export not counted). Rounds alternate the
variants so machine load hits both; the ratio uses the fastest run of each (medians are reported too).
The merged weights of the two variants are compared byte for byte: keeping rows must not change what
is trained. torch runs on torch's default threads, as the stage does.

Data: a synthetic demo set (``srvau.data.synth``) of ``--videos`` train videos through the real ingest
and RoCoT stages, in a temporary folder; the tiny Qwen2.5-VL built from it without reading drills (they
change the weights, not the step time). Prints a table, writes bench/results/sft.json.

    python bench/sft.py [--videos 16] [--epochs 4] [--rounds 3] [--batch 4]
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
VARIANTS = {"kept": 1024, "reprocessed": 0}


def prepare(tmp: Path, n_videos: int) -> tuple[Path, Path, int]:
    from bench.common import synthetic_train_set
    from srvau.modeling.tiny import build_tiny
    from srvau.training.sft import load_split

    params, demo, rocot = synthetic_train_set(tmp, n_videos, {"model.tiny.reading_drill_steps": 0})
    model = build_tiny(tmp / "tiny", params, sorted(demo.glob("*.csv")))
    return rocot, model, len(load_split(rocot, "train"))


def run_sft(tmp: Path, rocot: Path, model: Path, variant: str, round_: int, steps: int, batch: int) -> dict:
    from bench.common import run_training_stage

    return run_training_stage("sft", rocot, model, tmp / f"sft-{variant}-{round_}", steps,
                              [f"sft.per_device_train_batch_size={batch}", f"sft.keep_samples_mb={VARIANTS[variant]}"],
                              f"{variant} round {round_}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16, help="train videos (synthetic)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the demo trains ~4.3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="rows per step (the demo's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sft.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="srvau-bench-sft-") as d:
        tmp = Path(d)
        print(f"preparing {args.videos} synthetic train videos (ingest, RoCoT, tiny model) ...", file=sys.stderr)
        rocot, model, rows = prepare(tmp, args.videos)
        steps = args.epochs * math.ceil(rows / args.batch)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            for v in (VARIANTS if r % 2 == 0 else reversed(VARIANTS)):
                runs[v].append(run_sft(tmp, rocot, model, v, r, steps, args.batch))
                print(f"round {r} {v}: {runs[v][-1]['train_wall_s']:.1f} s", file=sys.stderr)

    best = {v: min(x["train_wall_s"] for x in runs[v]) for v in VARIANTS}
    median = {v: statistics.median(x["train_wall_s"] for x in runs[v]) for v in VARIANTS}
    identical = len({x["weights_sha256"] for v in VARIANTS for x in runs[v]}) == 1
    ratio = best["reprocessed"] / best["kept"]
    print(f"\nSFT, {rows} rows, {steps} steps ({args.epochs} epochs of {math.ceil(rows / args.batch)}), "
          f"batch {args.batch}, {args.rounds} rounds")
    print(f"{'variant':<12} {'best s':>8} {'median s':>9} {'ms/step':>8}")
    for v in VARIANTS:
        print(f"{v:<12} {best[v]:8.1f} {median[v]:9.1f} {best[v] / steps * 1000:8.0f}")
    print(f"reprocessed / kept: {ratio:.2f}x (best), {median['reprocessed'] / median['kept']:.2f}x (median); "
          f"merged weights identical: {'yes' if identical else 'NO'}")

    from bench.common import write_results

    write_results(args.out, {
        "settings": {"videos": args.videos, "rows": rows, "epochs": args.epochs, "steps": steps, "batch": args.batch,
                     "rounds": args.rounds, "keep_samples_mb": VARIANTS},
        "runs": runs, "best_s": best, "median_s": median,
        "ratio_reprocessed_over_kept": ratio, "weights_identical": identical,
    })
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

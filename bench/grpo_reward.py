"""Benchmark: the reward each policy earns on GRPO's own prompts, with the policy held still.

The GRPO stage logs the mean reward of every step (``grpo.reward``), and the demo's criteria read its
trend: the last quarter of steps against the first. Each step samples its completions, and unless
``grpo.mirror_prompts`` is on (the demo's default since 3baa260) the two quarters also hold different
prompts, so they differ in prompts and in luck as well as in the policy; the numbers in docs were
measured on the stratified order before mirroring. This script holds each policy still and replays the stage's exact prompt sequence, once
per sampling seed: a GRPO run with the stage's settings and ``learning_rate`` 1e-30. A weight then
moves by ~1e-30 a step at most, which no output of the model shows (tests/code/test_bench.py). The
peer is the SFT model on the same prompts with the same seeds:

    same policy, q4 - q1   what the logged trend shows with no learning at all (prompts and sampling)
    GRPO - SFT, all steps  what GRPO changed in the reward on its own prompts

Run it in a project that has been through ``make run`` (``data/rocot``, ``models/sft/merged``,
``models/grpo/merged``, its ``params.yaml``). About 90 s per policy and seed on two cores. Prints a
table, writes bench/results/grpo_reward.json.

    python bench/grpo_reward.py [--models sft=models/sft/merged grpo=models/grpo/merged] [--seeds 1 2 3] [--set k=v]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def held_still_trainer(model_dir: str, out: Path, params=None, rocot: Path | None = None):
    """The GRPO stage's trainer for ``model_dir`` on its own prompt order, with ``learning_rate`` 1e-30.
    ``params`` default to the project's; ``rocot`` to its ``paths.rocot``."""
    from bench.common import grpo_stage_trainer
    from srvau.config import load_params

    return grpo_stage_trainer(model_dir, out, params or load_params(), rocot, learning_rate=1e-30)


def rewards_held_still(model_dir: str, seed: int, out: Path, params=None) -> list[float]:
    """The stage's per-step mean rewards for ``model_dir`` held still, its completions sampled from ``seed``."""
    import transformers

    trainer = held_still_trainer(model_dir, out, params)
    transformers.set_seed(seed)  # after the trainer's own seeding: only the sampling changes
    trainer.train()
    return [h["reward"] for h in trainer.state.log_history if "reward" in h]


def quarters(rewards: list[float]) -> dict[str, float]:
    from srvau.evaluation.demo_check import quarter_means  # the demo's own reading of the trend

    q1, q4 = quarter_means(rewards)
    return {"q1": q1, "q4": q4, "all": statistics.fmean(rewards)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["sft=models/sft/merged", "grpo=models/grpo/merged"],
                    help="name=folder; the first is the peer")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="sampling seeds")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of the project's params.yaml, as the stage was run (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo_reward.json")
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.models)

    from srvau.config import load_params, parse_override

    params = load_params(overrides=dict(parse_override(o) for o in args.overrides))

    runs: dict[str, dict[int, dict]] = {name: {} for name in models}
    with tempfile.TemporaryDirectory(prefix="srvau-bench-reward-") as d:
        for seed in args.seeds:
            for name, folder in models.items():
                rewards = rewards_held_still(folder, seed, Path(d) / f"{name}-{seed}", params)
                runs[name][seed] = {"rewards": rewards, **quarters(rewards)}
                r = runs[name][seed]
                print(f"{name} seed {seed}: q1 {r['q1']:.3f} q4 {r['q4']:.3f} all {r['all']:.3f}", file=sys.stderr)

    peer = next(iter(models))
    print(f"\nreward per step on the GRPO stage's {len(next(iter(runs[peer].values()))['rewards'])} steps, "
          "each policy held still (learning_rate 1e-30)")
    print(f"{'policy':<8} {'seed':>5} {'q1':>7} {'q4':>7} {'q4-q1':>7} {'all':>7} {'all - ' + peer:>10}")
    for name in models:
        for seed in args.seeds:
            r = runs[name][seed]
            print(f"{name:<8} {seed:>5} {r['q1']:7.3f} {r['q4']:7.3f} {r['q4'] - r['q1']:+7.3f} {r['all']:7.3f} "
                  f"{r['all'] - runs[peer][seed]['all']:+10.3f}")
    summary = {name: {"mean_all": statistics.fmean(runs[name][s]["all"] for s in args.seeds),
                      "q4_minus_q1": [runs[name][s]["q4"] - runs[name][s]["q1"] for s in args.seeds]}
               for name in models}
    for name in models:
        print(f"{name}: mean over seeds {summary[name]['mean_all']:.3f}; q4 - q1 from "
              f"{min(summary[name]['q4_minus_q1']):+.3f} to {max(summary[name]['q4_minus_q1']):+.3f}")

    from bench.common import write_results

    write_results(args.out, {"models": models, "seeds": args.seeds, "overrides": args.overrides, "runs": runs,
                             "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

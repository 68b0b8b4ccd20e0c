"""Benchmark: building a reading-drill batch one drill at a time vs in rounds with prompts reused.

The tiny base practises up to ``model.tiny.reading_drill_steps`` drill batches before it is saved
(``srvau.modeling.tiny.reading_drills``), the longest stage of ``make run``. Each batch is built in Python
before the model sees it. Same drills, same generator, in one process:

    one-by-one  ``_drill`` until the batch is full: a chat template and two tokenizer calls per drill
    rounds      ``drill_batch`` with a ``DrillTokens``: one tokenizer call per round, each prompt rendered
                and tokenised once, only the pass tokenised per drill

The two must give equal batches from equal generators (checked on every batch). A drill training step
(forward, backward, AdamW on the drilled parameters of the demo's tiny model) is timed too, so the
saving can be read as a share of a step, in two variants on the same batches:

    all grads      every parameter requires a gradient (what ``reading_drills`` did before)
    drilled grads  only the drilled ones do (what it does now); the weights after must be equal

Rounds alternate the variants so machine load hits both; the batch ratio uses the fastest round of each
(medians too), the step ratio the medians.

Data: the demo set (``srvau.data.synth`` with the project's params; only its CSVs are read) and the
tiny model built from them, not drilled. Prints a table, writes bench/results/drills.json.

    python bench/drills.py [--batches 40] [--rounds 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_by_one(tokenizer, lists, words, rng, n: int) -> dict:
    """The batch ``drill_batch`` must equal, built the way it was before rounds: drill by drill."""
    from srvau.modeling.drills import _drill, pad_drills

    rows = []
    while len(rows) < n:
        d = _drill(tokenizer, lists, words, rng)
        if d is not None:
            rows.append(d)
    return pad_drills(tokenizer, rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40, help="batches per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="drills per batch (reading_drills' default)")
    ap.add_argument("--steps", type=int, default=30, help="model steps timed per gradient variant")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drills.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from bench.common import write_results
    from srvau.config import load_params
    from srvau.data.synth import synthesize
    from srvau.modeling.drills import DrillTokens, drill_batch, drill_words
    from srvau.modeling.tiny import build_model, corpus_from_csvs, is_drilled, option_lists_from_csvs, train_tokenizer

    params = load_params()
    with tempfile.TemporaryDirectory(prefix="srvau-bench-drills-") as d:
        synthesize(Path(d), params.synth, params.seed)
        csvs = sorted(Path(d).glob("*.csv"))
        corpus = corpus_from_csvs(csvs)
        lists, words = option_lists_from_csvs(csvs), drill_words(corpus)
    tokenizer = train_tokenizer(corpus, params.model.tiny.vocab_size)
    model = build_model(tokenizer, params.model.tiny, params.seed)

    tokens = DrillTokens(tokenizer)  # kept across rounds, as reading_drills keeps it across steps
    times: dict[str, list[float]] = {"one-by-one": [], "rounds": []}
    equal = True
    for r in range(args.rounds):
        gens = {v: np.random.default_rng(params.seed + r) for v in times}
        built: dict[str, list[dict]] = {}
        for v in (times if r % 2 == 0 else reversed(times)):
            start = time.perf_counter()
            if v == "rounds":
                built[v] = [drill_batch(tokenizer, lists, words, gens[v], args.batch, tokens) for _ in range(args.batches)]
            else:
                built[v] = [one_by_one(tokenizer, lists, words, gens[v], args.batch) for _ in range(args.batches)]
            times[v].append((time.perf_counter() - start) / args.batches)
        equal &= all(torch.equal(a[k], b[k]) for a, b in zip(built["one-by-one"], built["rounds"]) for k in a)
        print(f"round {r}: " + ", ".join(f"{v} {times[v][-1] * 1e3:.1f} ms" for v in times), file=sys.stderr)

    steps = {"all grads": [], "drilled grads": []}  # what reading_drills computed before, what it computes now
    models = {v: copy.deepcopy(model) for v in steps}
    for name, p in models["drilled grads"].named_parameters():
        p.requires_grad_(is_drilled(name))
    opts = {v: torch.optim.AdamW([p for n, p in m.named_parameters() if is_drilled(n)], lr=1e-3)
            for v, m in models.items()}
    for r, b in enumerate(built["rounds"][: args.steps]):
        for v in (steps if r % 2 == 0 else reversed(steps)):
            models[v].train()
            start = time.perf_counter()
            models[v](**b).loss.backward()
            opts[v].step()
            opts[v].zero_grad(set_to_none=True)
            steps[v].append(time.perf_counter() - start)
    same_update = all(torch.equal(p, q) for p, q in zip(*(m.state_dict().values() for m in models.values())))
    step_median = {v: statistics.median(t[2:]) for v, t in steps.items()}
    step = step_median["drilled grads"]

    best = {v: min(t) for v, t in times.items()}
    median = {v: statistics.median(t) for v, t in times.items()}
    ratio = best["one-by-one"] / best["rounds"]
    print(f"\nreading-drill batches of {args.batch}, {args.batches} per round, {args.rounds} rounds, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'variant':<12} {'best ms':>8} {'median ms':>10} {'of a step':>10}")
    for v in times:
        print(f"{v:<12} {best[v] * 1e3:8.1f} {median[v] * 1e3:10.1f} {median[v] / (step + median[v]):10.0%}")
    print(f"one-by-one / rounds: {ratio:.2f}x (best), {median['one-by-one'] / median['rounds']:.2f}x (median); "
          f"batches equal: {'yes' if equal else 'NO'}; prompts cached {len(tokens.prefix)}, "
          f"tokenised whole {sum(v is None for v in tokens.prefix.values())}")
    print(f"\nmodel step (forward, backward, AdamW), {args.steps} batches alternating:")
    print(f"{'gradients for':<14} {'median ms':>10}")
    for v in steps:
        print(f"{v:<14} {step_median[v] * 1e3:10.0f}")
    step_ratio = step_median["all grads"] / step_median["drilled grads"]
    print(f"all / drilled-only gradients: {step_ratio:.2f}x (median); weights after equal: {'yes' if same_update else 'NO'}")

    write_results(args.out, {
        "settings": {"batch": args.batch, "batches": args.batches, "rounds": args.rounds, "seed": params.seed},
        "batch_s": times, "best_s": best, "median_s": median, "model_step_median_s": step,
        "ratio_one_by_one_over_rounds": ratio, "batches_equal": equal,
        "step_s": steps, "step_median_s": step_median, "ratio_all_over_drilled_grads": step_ratio,
        "step_weights_equal": same_update,
    }, torch_threads=torch.get_num_threads())
    return 0 if equal and same_update else 1


if __name__ == "__main__":
    raise SystemExit(main())

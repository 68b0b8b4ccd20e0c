"""Benchmark: what pinning the CPU kernels to AVX2 (srvau/numerics.py) costs against the CPU's own choice.

Every srvau process pins PyTorch's kernels (``ATEN_CPU_CAPABILITY=avx2``), MKL's (``MKL_CBWR=AVX2``)
and oneDNN's (``ONEDNN_MAX_CPU_ISA=AVX2``), so the same seed trains the same weights on any x86-64
machine. On a CPU with AVX-512 the libraries would otherwise pick wider kernels. Two variants, each in
fresh processes (the variables are read once, when the libraries start), rounds alternating so machine
load hits both:

    pinned  the default (srvau's pins)
    native  ``SRVAU_CPU_KERNELS=native``: the libraries choose by the CPU

Two workloads of the demo: reading-drill steps of the tiny base (forward, backward, AdamW on the
drilled parameters; ``srvau.modeling.tiny``) and a short ``srvau sft`` run (16 synthetic videos). Each
reports time and the sha256 of the weights after, so the table also says whether each variant is
deterministic and whether the two variants train the same weights (they do on an AVX2-only CPU, not on
an AVX-512 one).

The pins hold the instruction set, not the thread count. After the rounds, each workload runs once more
pinned at each of ``--threads`` (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``), and the table says whether
its weights equal the pinned rounds' (which run at torch's default, one thread per core). Prints a table,
writes bench/results/cpu_kernels.json.

    python bench/cpu_kernels.py [--rounds 3] [--drill-steps 40] [--sft-steps 40] [--threads 1 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {"pinned": {}, "native": {"SRVAU_CPU_KERNELS": "native"}}


def variant_env(name: str) -> dict[str, str]:
    """The environment of a variant's processes: this one's, without the pins this process inherited or
    set when it imported srvau."""
    from srvau.numerics import CPU_KERNEL_PINS, OPT_OUT

    env = {k: v for k, v in os.environ.items() if k not in {*CPU_KERNEL_PINS, OPT_OUT}}
    return {**env, **VARIANTS[name]}


def drill_worker(demo: Path, steps: int) -> None:
    """In a fresh process: ``steps`` drill steps from the undrilled base; prints JSON."""
    import hashlib
    import time

    import srvau  # noqa: F401  (the pins, before torch)
    import numpy as np
    import torch

    from srvau.config import load_params
    from srvau.modeling.drills import DrillTokens, drill_batch, drill_words
    from srvau.modeling.tiny import build_model, corpus_from_csvs, is_drilled, option_lists_from_csvs, train_tokenizer

    params = load_params()
    csvs = sorted(demo.glob("*.csv"))
    corpus = corpus_from_csvs(csvs)
    tokenizer = train_tokenizer(corpus, params.model.tiny.vocab_size)
    model = build_model(tokenizer, params.model.tiny, params.seed)
    lists, words = option_lists_from_csvs(csvs), drill_words(corpus)
    rng, tokens = np.random.default_rng(params.seed), DrillTokens(tokenizer)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if is_drilled(n)], lr=1e-3)
    model.train()
    times = []
    for _ in range(steps):
        batch = drill_batch(tokenizer, lists, words, rng, 32, tokens)
        start = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().numpy().tobytes())
    print(json.dumps({"step_median_s": statistics.median(times[2:]), "weights_sha256": h.hexdigest(),
                      "capability": torch.backends.cpu.get_cpu_capability(), "mkl_cbwr": os.environ.get("MKL_CBWR")}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drill-steps", type=int, default=40)
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 4],
                    help="thread counts to compare the pinned weights at (none: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_kernels.json")
    ap.add_argument("--drill-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drill_worker:
        drill_worker(args.drill_worker, args.drill_steps)
        return 0

    from bench.common import run_training_stage, synthetic_train_set, write_results
    from srvau.modeling.tiny import build_tiny

    def drills(env: dict[str, str]) -> dict:
        proc = subprocess.run([sys.executable, __file__, "--drill-worker", str(demo), "--drill-steps",
                               str(args.drill_steps)], env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"drills failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def sft(env: dict[str, str], out: Path, label: str) -> dict:
        return run_training_stage("sft", rocot, base, out, args.sft_steps, [], label, env=env)

    results: dict[str, dict[str, list]] = {v: {"drill_step_s": [], "drill_sha": [], "sft_s": [], "sft_sha": [],
                                               "capability": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="srvau-bench-kernels-") as d:
        tmp = Path(d)
        params, demo, rocot = synthetic_train_set(tmp, 16, {"model.tiny.reading_drill_steps": 0})
        base = build_tiny(tmp / "base", params, sorted(demo.glob("*.csv")))  # undrilled: SFT from random weights
        for r in range(args.rounds):
            for v in (VARIANTS if r % 2 == 0 else reversed(list(VARIANTS))):
                env = variant_env(v)
                w = drills(env)
                s = sft(env, tmp / f"sft-{v}-{r}", f"sft {v}")
                res = results[v]
                res["drill_step_s"].append(w["step_median_s"])
                res["drill_sha"].append(w["weights_sha256"])
                res["capability"].append(f"{w['capability']} MKL_CBWR={w['mkl_cbwr']}")
                res["sft_s"].append(s["train_wall_s"])
                res["sft_sha"].append(s["weights_sha256"])
                print(f"round {r} {v}: drill step {w['step_median_s'] * 1e3:.0f} ms, sft {s['train_wall_s']:.1f} s",
                      file=sys.stderr)

        by_threads = {}
        for t in args.threads:
            env = {**variant_env("pinned"), "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)}
            by_threads[t] = {"drill_sha": drills(env)["weights_sha256"],
                             "sft_sha": sft(env, tmp / f"sft-threads-{t}", f"sft {t} threads")["weights_sha256"]}
            print(f"pinned at {t} threads done", file=sys.stderr)

    med = {v: {"drill_step_s": statistics.median(r["drill_step_s"]), "sft_s": statistics.median(r["sft_s"])}
           for v, r in results.items()}
    same = {w: results["pinned"][f"{w}_sha"][0] == results["native"][f"{w}_sha"][0] for w in ("drill", "sft")}
    steady = {v: {w: len(set(r[f"{w}_sha"])) == 1 for w in ("drill", "sft")} for v, r in results.items()}
    ratio = {w: med["pinned"][k] / med["native"][k] for w, k in (("drill", "drill_step_s"), ("sft", "sft_s"))}
    print(f"\nCPU kernels, {args.rounds} rounds alternating (medians)")
    print(f"{'variant':<8} {'kernels':<24} {'drill step ms':>14} {'sft s':>8} {'same weights each round':>24}")
    for v, r in results.items():
        print(f"{v:<8} {r['capability'][0]:<24} {med[v]['drill_step_s'] * 1e3:14.0f} {med[v]['sft_s']:8.1f} "
              f"{'yes' if all(steady[v].values()) else 'NO':>24}")
    print(f"pinned / native: drills {ratio['drill']:.2f}x, sft {ratio['sft']:.2f}x; "
          f"pinned and native train the same weights: drills {'yes' if same['drill'] else 'no'}, "
          f"sft {'yes' if same['sft'] else 'no'}")
    same_at = {t: {w: r[f"{w}_sha"] == results["pinned"][f"{w}_sha"][0] for w in ("drill", "sft")}
               for t, r in by_threads.items()}
    if same_at:
        print(f"\npinned, another thread count (default here: {os.cpu_count()} cores)")
        print(f"{'threads':>8} {'drills: same weights':>21} {'sft: same weights':>18}")
        for t, same_t in same_at.items():
            print(f"{t:>8} {'yes' if same_t['drill'] else 'no':>21} {'yes' if same_t['sft'] else 'no':>18}")
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (int, list))}
    write_results(args.out, {"settings": settings, "runs": results, "median": med,
                             "ratio_pinned_over_native": ratio, "same_weights_pinned_and_native": same,
                             "deterministic": steady, "pinned_by_threads": by_threads,
                             "same_weights_as_default_threads": same_at})
    return 0 if all(all(s.values()) for s in steady.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

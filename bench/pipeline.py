"""Benchmark: the demo pipeline's wall time, split into stage compute and orchestration.

Runs the Prefect flow (``python -m flows.pipeline``, the command ``make run`` ends with) on a fresh
copy of this project in a temporary folder: the tracked and untracked-but-not-ignored files, so no
data, models, DVC cache, MLflow store or Prefect state carry over and every stage runs. The copy gets
its own git repository (DVC needs one) and composes its params.yaml with ``srvau config compose``
plus the ``--set`` overrides (none by default: the demo exactly as ``make run`` runs it).

Each ``srvau <stage>`` times its own body, inside its tracking run (``srvau.cli.context.stage_timing``
appends to ``reports/tracking/timings.jsonl``): that is **stage compute**. Everything else in the
flow's wall time is **orchestration**: Prefect (its temporary server, flow and task runs), DVC
(in the flow's process: its import, status and repro per stage, hashing deps and outputs; then the
``dvc push`` process), MLflow (the parent run, opening and closing each stage's run, the records of
stages DVC skipped) and process start and end (the interpreter and imports of each ``srvau``
process before its body, its exit after it). Process start is
measured too (each record holds how old its process was when the body began); the rest is the
remainder per gap between stages. The peer is the compute itself: the table reports orchestration
as a share of the wall time (target <= 15 %). Prints a table, writes bench/results/pipeline.json.

    python bench/pipeline.py [--set sft.max_steps=50 ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_OVERHEAD = 0.15
TIMINGS = Path("reports") / "tracking" / "timings.jsonl"  # srvau.cli.context.TIMINGS_FILE under paths.reports


def copy_project(dest: Path) -> None:
    """The project's files as a fresh clone would have them (plus uncommitted edits), in a new git repo."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():  # a deleted-but-tracked file is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench copy"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)


def env_for(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SRVAU_ROOT"] = str(project)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "PREFECT_API_URL", "PREFECT_HOME", "SRVAU_PARENT_RUN_ID",
                "SRVAU_TIMINGS_FILE"):
        env.pop(key, None)  # the copy's own stores, never the caller's
    return env


def split(wall_s: float, t_start: float, records: list[dict]) -> dict:
    """Per stage: compute, process start, and the orchestration gap before it; totals and the share."""
    stages, prev_end = [], t_start
    for r in sorted(records, key=lambda r: r["finished_at"]):
        begin = r["finished_at"] - r["compute_s"]
        gap = begin - prev_end  # from the previous stage's end (or the flow's start) to this body's start
        start = r.get("process_age_at_start_s") or 0.0
        stages.append({"stage": r["stage"], "compute_s": r["compute_s"], "gap_before_s": round(gap, 3),
                       "process_start_s": round(start, 3), "other_orchestration_s": round(gap - start, 3),
                       "ok": r["ok"]})
        prev_end = r["finished_at"]
    compute = sum(s["compute_s"] for s in stages)
    process_start = sum(s["process_start_s"] for s in stages)
    first_gap = stages[0]["gap_before_s"] - stages[0]["process_start_s"] if stages else 0.0
    tail = t_start + wall_s - prev_end
    orchestration = wall_s - compute
    return {
        "stages": stages,
        "wall_s": round(wall_s, 3),
        "compute_s": round(compute, 3),
        "orchestration_s": round(orchestration, 3),
        "overhead_share": orchestration / wall_s if wall_s else None,
        "compute_over_orchestration": compute / orchestration if orchestration > 0 else None,
        "orchestration_parts_s": {
            "process_start": round(process_start, 3),  # interpreter + imports + params + opening the stage's run
            "flow_start": round(first_gap, 3),  # Prefect server and flow run, parent MLflow run, first dvc status/repro
            # a stage process's exit, dvc status + repro, the Prefect task run, the stage's record in the parent run
            "between_stages": round(orchestration - process_start - first_gap - tail, 3),
            "flow_end": round(tail, 3),  # last run closed, dvc.lock logged, dvc push, summary, Prefect shutdown
        },
    }


def table(report: dict) -> str:
    s = report["split"]
    lines = [f"demo pipeline (Prefect flow, {report['settings']}): {s['wall_s']:.0f} s wall", "",
             f"{'stage':<12} {'compute s':>10} {'gap before s':>13} {'process start s':>16} {'other s':>8}",
             "-" * 63]
    for r in s["stages"]:
        lines.append(f"{r['stage']:<12} {r['compute_s']:>10.1f} {r['gap_before_s']:>13.1f} {r['process_start_s']:>16.1f} "
                     f"{r['other_orchestration_s']:>8.1f}")
    p = s["orchestration_parts_s"]
    lines += ["", f"stage compute {s['compute_s']:.1f} s, orchestration {s['orchestration_s']:.1f} s "
              f"(process start {p['process_start']:.1f}, flow start {p['flow_start']:.1f}, between stages "
              f"{p['between_stages']:.1f}, flow end {p['flow_end']:.1f})",
              f"target orchestration <= {TARGET_OVERHEAD:.0%} of the wall time: "
              f"{'PASS' if s['overhead_share'] <= TARGET_OVERHEAD else 'FAIL'} ({s['overhead_share']:.1%}; "
              f"compute / orchestration {s['compute_over_orchestration']:.2f}x)"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="Hydra overrides for the copy's params.yaml")
    ap.add_argument("--keep", type=Path, default=None, help="make the copy here and keep it (must not exist)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = ap.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="srvau-bench-pipeline-"))
    project = base / "project" if not args.keep else base
    project.mkdir(parents=True, exist_ok=args.keep is None)
    try:
        copy_project(project)
        env = env_for(project)
        srvau = str(Path(sys.executable).with_name("srvau"))
        subprocess.run([srvau, "config", "compose", *args.overrides], cwd=project, env=env, check=True,
                       capture_output=True)
        load_at_start = os.getloadavg()[0]
        t_start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=project, env=env, text=True,
                              capture_output=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
            raise SystemExit(f"the flow failed (exit {proc.returncode}) in {project}")
        timings = project / TIMINGS
        records = [json.loads(x) for x in timings.read_text().splitlines() if x.strip()]
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    report = {
        "benchmark": "demo pipeline wall time: stage compute vs orchestration (Prefect, DVC, MLflow, process start)",
        "settings": "demo defaults" + (f" + {' '.join(args.overrides)}" if args.overrides else ""),
        "split": split(wall, t_start, records),
        "target_overhead_share": TARGET_OVERHEAD,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_at_start": load_at_start, "load_avg_1m_at_end": os.getloadavg()[0]},
    }
    report["overhead_within_target"] = report["split"]["overhead_share"] <= TARGET_OVERHEAD
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

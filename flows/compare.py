"""``make compare``: the SRVAU-R1 recipe (params.yaml) and the VAU-R1 baseline (configs/vau-r1.yaml) as two
DVC experiments on the same demo data, then one side-by-side report (``srvau eval compare``).

Wiring only: each run is ``dvc exp run --temp -S recipe=...`` (a temporary workspace, so this checkout's
params.yaml and outputs stay as they were); its metrics.json is read back from the experiment with
``dvc exp show --json`` and compared by srvau.evaluation.compare.

    python -m flows.compare [--out reports/compare]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"srvau-r1": None, "vau-r1": "configs/vau-r1.yaml"}  # label -> recipe overlay (None = params.yaml)
METRICS = "reports/eval/metrics.json"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so dvc.yaml's ``srvau`` commands resolve to it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _exp_metrics(name: str) -> dict:
    """The metrics.json of experiment ``name`` as ``dvc exp show --json`` reports it."""
    out = subprocess.run([_bin("dvc"), "exp", "show", "--json"], cwd=ROOT, check=True, capture_output=True, text=True, env=_env()).stdout
    for baseline in json.loads(out):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return rev["data"]["metrics"][METRICS]["data"]
    raise RuntimeError(f"experiment {name} not found in `dvc exp show`")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/compare")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from srvau.config import load_params

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: list[str] = []
    for label, recipe in RECIPES.items():
        name = f"{label}-{stamp}"
        print(f"compare: running {label} ({recipe or 'params.yaml'}) as DVC experiment {name}", flush=True)
        subprocess.run(
            [_bin("dvc"), "exp", "run", "--temp", "-n", name, "-S", f"recipe={recipe or 'null'}"], cwd=ROOT, check=True,
            env=_env(),
        )
        path = out / f"{label}.metrics.json"
        path.write_text(json.dumps(_exp_metrics(name), indent=2) + "\n")
        style = load_params(recipe=recipe).evaluate.primary_style
        runs += ["--run", f"{label}={path}:{style}"]
    subprocess.run([_bin("srvau"), "eval", "compare", *runs, "--out", str(out)], cwd=ROOT, check=True, env=_env())
    print(f"compare: report at {out / 'report.html'}; `dvc exp show` lists both experiments", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

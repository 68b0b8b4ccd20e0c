"""``make compare``: the SRVAU-R1 recipe (the defaults) and the VAU-R1 baseline (configs/recipe/vau-r1.yaml) as two
DVC experiments on the same demo data, then one side-by-side report (``srvau eval compare``).

Wiring only. Each run is ``dvc exp run -S recipe=NAME`` (``-S ~recipe`` for the defaults) in this workspace, with
``-S register.auto_promote=false`` (a comparison does not move ``@champion``); its ``metrics.json`` is copied
to ``reports/compare/<label>.metrics.json`` right after (DVC keeps the metrics file out of its cache and
git ignores ``reports/``, so an experiment commit does not carry it: ``dvc exp run --temp`` would lose
it). The baseline runs first and the default recipe last, so the workspace, dvc.lock included, ends on
the default's outputs; ``params.yaml``, which ``-S`` rewrites, is restored byte for byte.

    python -m flows.compare [--out reports/compare]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"vau-r1": "vau-r1", "srvau-r1": None}  # label -> recipe name (None = the defaults); the default last
METRICS = "reports/eval/metrics.json"


def recipe_override(recipe: str | None) -> str:
    """The ``-S`` that selects ``recipe``; ``~recipe`` (Hydra's delete) for the defaults, since Hydra
    refuses ``recipe=null`` as a group override."""
    return f"recipe={recipe}" if recipe else "~recipe"


def experiment_overrides(recipe: str | None) -> list[str]:
    """The ``-S`` overrides of one experiment: its recipe, and no automatic promotion. Both recipes register
    their GRPO model (dvc.yaml's last stage), and a comparison must not move ``@champion``: at the demo's
    seed the baseline's version took it from the pipeline's own. ``srvau registry promote`` still can."""
    return [recipe_override(recipe), "register.auto_promote=false"]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so dvc.yaml's ``srvau`` commands resolve to it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/compare")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from srvau.config import load_params

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    params_yaml = (ROOT / "params.yaml").read_bytes()  # `-S` recomposes it
    runs: list[str] = []
    try:
        for label, recipe in RECIPES.items():
            name = f"{label}-{stamp}"
            print(f"compare: running {label} (recipe {recipe or 'none: the defaults'}) as DVC experiment {name}", flush=True)
            sets = [arg for o in experiment_overrides(recipe) for arg in ("-S", o)]
            subprocess.run([_bin("dvc"), "exp", "run", "-n", name, *sets], cwd=ROOT, check=True, env=_env())
            path = out / f"{label}.metrics.json"
            shutil.copyfile(ROOT / METRICS, path)
            style = load_params().evaluate.primary_style  # params.yaml as this experiment composed it
            runs += ["--run", f"{label}={path}:{style}"]
    finally:
        (ROOT / "params.yaml").write_bytes(params_yaml)
    subprocess.run([_bin("srvau"), "eval", "compare", *runs, "--out", str(out)], cwd=ROOT, check=True, env=_env())
    print(f"compare: report at {out / 'report.html'}; `dvc exp show` lists both experiments", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

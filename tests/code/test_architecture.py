"""The package's shape: no import cycles, a contract layer below every stage, and DVC stage deps that cover
every module a stage's command imports (so editing a rule re-runs every stage that uses it)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "srvau"


# ----------------------------------------------------------------------------- the import graph


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(f): f for f in PKG.rglob("*.py")}


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.AST, module: str, is_pkg: bool, mods: dict[str, Path]) -> set[str]:
    """srvau modules imported anywhere in ``tree`` (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` needs the submodule; ``from pkg import name`` needs pkg/__init__
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
        for n in names:
            target = _resolve(n, mods) if n.startswith("srvau") else None
            if target and target != module:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(ast.parse(f.read_text()), m, f.name == "__init__.py", mods) for m, f in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(d for d in graph.get(m, ()) if d in graph)
    return seen


def test_no_import_cycles_function_level_imports_included():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_contract_layer_imports_only_itself_and_the_config():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("srvau.contract"):
            stray = {d for d in deps if not d.startswith("srvau.contract") and d != "srvau.config"}
            assert not stray, f"{mod} imports {stray}: the contract layer must not depend on the stages"


# ----------------------------------------------------------------------------- dvc.yaml deps


def _command_function(argv: list[str]):
    """The Python function behind ``srvau <argv>`` (through typer's click tree)."""
    import typer.main

    from srvau.cli import app

    cmd = typer.main.get_command(app)
    for word in argv:
        cmd = cmd.commands[word]
    return cmd.callback


def _stage_modules(cmd: str, graph: dict[str, set[str]]) -> set[str]:
    """srvau modules that ``cmd`` runs: what its command function imports (itself, or through the names it
    uses from its CLI module's imports), followed transitively; the CLI wiring (srvau.cli.*) is left out."""
    import inspect

    words = cmd.split()
    assert words[0] == "srvau", cmd
    fn = inspect.unwrap(_command_function([w for w in words[1:] if not w.startswith("-")]))
    mods = _modules()
    body = ast.parse(inspect.getsource(fn).lstrip())
    used = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
    start = _imports(body, fn.__module__, False, mods)
    for node in ast.parse(_modules()[fn.__module__].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srvau"):
            for a in node.names:
                if (a.asname or a.name) in used:
                    target = _resolve(f"{node.module}.{a.name}", mods)
                    start.add(target)
    graph = {m: deps for m, deps in graph.items() if not m.startswith("srvau.cli")}
    return {m for m in closure({m for m in start if not m.startswith("srvau.cli")}, graph)}


def _covered(module: str, deps: list[str]) -> bool:
    path = _modules()[module].relative_to(ROOT).as_posix()
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def uncovered_deps(stages: dict) -> dict[str, list[str]]:
    """Per stage, the modules its command imports that none of its deps covers."""
    graph = import_graph()
    out = {}
    for name, stage in stages.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        missing = sorted(m for m in _stage_modules(stage["cmd"], graph) if not _covered(m, deps))
        if missing:
            out[name] = missing
    return out


def _dvc_stages() -> dict:
    """dvc.yaml's stage definitions as written (a ``foreach`` group by its ``do`` body)."""
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


def test_stages_track_each_section_they_read_where_it_was_set():
    """Each top-level section a stage reads from params.yaml is also tracked at ``${set_by.<section>}``
    (the file that set it), so an edit inside a recipe shows in `dvc status` before recomposition."""
    for name, stage in _dvc_stages().items():
        plain = {p.split(".")[0] for p in stage.get("params", []) if isinstance(p, str)}
        at_source = {f: keys for p in stage.get("params", []) if isinstance(p, dict) for f, keys in p.items()}
        assert at_source == {f"${{set_by.{sec}}}": [sec] for sec in plain}, name


def test_data_and_model_paths_come_from_params_not_the_demo():
    """Regression: ingest depended on data/demo and sft/evaluate on models/tiny-base whatever the recipe
    named, so DVC never saw a recipe's own videos, CSVs or base model."""
    text = (ROOT / "dvc.yaml").read_text()
    body = text[text.index("stages:"):]
    for literal in ("data/demo", "models/tiny-base", "data/vau-bench"):
        assert literal not in body, f"dvc.yaml names {literal}: take it from params (${{...}})"


def test_every_stage_depends_on_the_modules_its_command_imports():
    assert uncovered_deps(_dvc_stages()) == {}


def test_every_code_dep_exists():
    """A dep on a file that is gone makes `dvc repro` fail ("does not exist as an output or a stage name")."""
    for name, stage in _dvc_stages().items():
        for d in stage.get("deps", []):
            d = d if isinstance(d, str) else next(iter(d))
            if d.startswith("srvau/"):
                assert (ROOT / d).exists(), f"stage {name}: dep {d} does not exist"


def test_removing_a_dep_is_caught():
    stages = _dvc_stages()
    stages["grpo"]["deps"] = [d for d in stages["grpo"]["deps"] if d != "srvau/contract"]
    assert "srvau.contract.trace" in uncovered_deps({"grpo": stages["grpo"]})["grpo"]


def test_trace_parser_is_a_dep_of_every_stage_that_parses_traces():
    """What `dvc status` reports after the parser changes: every stage whose deps cover its file."""
    from dvc.repo import Repo

    trace = "srvau/contract/trace.py"
    with Repo(str(ROOT)) as repo:
        stages = {
            s.name
            for s in repo.index.stages
            if any(trace == d.def_path or trace.startswith(d.def_path.rstrip("/") + "/") for d in s.deps)
        }
    assert {"cot", "validate", "grpo", "evaluate"} <= stages


# ----------------------------------------------------------------------------- self-contained docs


def test_code_points_to_docs_in_this_repository():
    hits = subprocess.run(
        ["grep", "-rnE", r"DESIGN|STACK\.md|\.\./shared", "srvau", "flows"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert hits == ""
    cited = set(re.findall(r"docs/[\w-]+\.md", "\n".join(p.read_text() for p in PKG.rglob("*.py"))))
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"code cites docs that do not exist: {missing}"

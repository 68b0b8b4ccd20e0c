"""Config: valid files load, recipes compose (as DVC composes them), and every kind of error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from srvau.cli import app
from srvau.config import PROJECT_ROOT, ConfigError, load_params


def _write(tmp_path: Path, data: dict, name: str = "params.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def test_project_params_load_and_every_section_is_set():
    raw = _project_params()
    p = load_params()
    assert p.seed == raw["seed"]
    assert p.synth.n_train == raw["synth"]["n_train"]
    assert p.sft.output_dir == raw["sft"]["output_dir"]
    # params.yaml is the single source of demo defaults: each section of the model appears in it
    assert set(p.dump()) == set(raw)


def test_default_keys_are_all_commented():
    """Every key line in configs/defaults.yaml (where the demo defaults are documented; params.yaml is
    composed from it) carries a comment, except section headers and list items."""
    lines = (PROJECT_ROOT / "configs" / "defaults.yaml").read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("- "):
            continue
        key, _, value = s.partition(":")
        if value.strip() and "#" not in value:
            # a key under a commented mapping header (e.g. reward weights) is fine
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            indent = len(line) - len(line.lstrip())
            header = next(
                (lines[j] for j in range(i - 1, -1, -1) if len(lines[j]) - len(lines[j].lstrip()) < indent and lines[j].strip()),
                "",
            )
            if "#" not in header and "#" not in prev:
                bare.append(line)
    assert not bare, f"uncommented keys in configs/defaults.yaml: {bare}"


def test_unknown_key_is_named(tmp_path):
    data = _project_params()
    data["sft"]["learning_rat"] = 0.1
    with pytest.raises(ConfigError, match=r"sft\.learning_rat: unknown key"):
        load_params(_write(tmp_path, data))


def test_unknown_section_is_named(tmp_path):
    data = _project_params()
    data["traning"] = {}
    with pytest.raises(ConfigError, match=r"traning: unknown key"):
        load_params(_write(tmp_path, data))


def test_wrong_type_is_named(tmp_path):
    data = _project_params()
    data["synth"]["n_train"] = "many"
    with pytest.raises(ConfigError, match=r"synth\.n_train: .*integer"):
        load_params(_write(tmp_path, data))


def test_out_of_range_and_cross_field_errors_are_named(tmp_path):
    data = _project_params()
    data["video"]["min_frames"] = 32
    data["video"]["max_frames"] = 8
    data["synth"]["normal_share"] = 1.5
    with pytest.raises(ConfigError) as e:
        load_params(_write(tmp_path, data))
    msg = str(e.value)
    assert "synth.normal_share" in msg and "video" in msg and "min_frames must be <= max_frames" in msg


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def _recipe(tmp_path: Path, data: dict, name: str = "r") -> Path:
    """A recipe outside the project: Hydra finds it in a ``recipe/`` folder of an extra search path."""
    path = tmp_path / "recipe" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\n" + yaml.safe_dump(data))
    return path


def test_recipe_applies_over_the_defaults_deeply(tmp_path):
    p = load_params(recipe=str(_recipe(tmp_path, {"sft": {"max_steps": 7}, "model": {"torch_dtype": "bfloat16"}})))
    assert p.sft.max_steps == 7 and p.model.torch_dtype == "bfloat16"
    # untouched keys of the same sections keep the default
    assert p.sft.learning_rate == _project_params()["sft"]["learning_rate"]


def test_recipe_errors_name_the_recipe_key(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.num_generations"):
        load_params(recipe=str(_recipe(tmp_path, {"grpo": {"num_generations": "eight"}})))
    with pytest.raises(ConfigError, match="Could not find 'recipe/nope'"):
        load_params(recipe="nope")
    stray = tmp_path / "stray.yaml"
    stray.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="must sit in a 'recipe/' folder"):
        load_params(recipe=str(stray))


def test_composition_is_what_dvc_exp_run_writes_and_overrides_win(tmp_path):
    """``srvau config compose`` writes params.yaml with DVC's own Hydra writer: an explicit override
    beats the recipe's value (regression: ``-S sft.max_steps=5`` lost to the recipe's 1500)."""
    from dvc.utils.hydra import compose_and_dump

    from srvau.config import write_composed

    ours, dvcs = tmp_path / "ours.yaml", tmp_path / "dvc.yaml"
    write_composed(ours, "paper-3b", ["sft.max_steps=5"])
    compose_and_dump(str(dvcs), str(PROJECT_ROOT / "configs"), None, "defaults", str(PROJECT_ROOT),
                     ["recipe=paper-3b", "sft.max_steps=5"])  # what `dvc exp run -S recipe=paper-3b -S sft.max_steps=5` calls
    assert ours.read_text() == dvcs.read_text()
    p = load_params(ours)
    assert p.sft.max_steps == 5 and p.recipe == "paper-3b" and p.grpo.max_steps == load_params(recipe="paper-3b").grpo.max_steps


def test_params_yaml_is_the_composition_of_configs(tmp_path):
    """params.yaml is generated: edit configs/ and run `srvau config compose` (or `dvc exp run`)."""
    from srvau.config import write_composed

    write_composed(tmp_path / "params.yaml")
    assert (PROJECT_ROOT / "params.yaml").read_text() == (tmp_path / "params.yaml").read_text(), \
        "params.yaml is stale: run `srvau config compose`"


def test_dvc_composes_from_the_same_folder_and_file():
    import configparser

    from srvau.config import CONFIG_DIR, DEFAULTS_NAME

    cfg = configparser.ConfigParser()
    cfg.read(PROJECT_ROOT / ".dvc" / "config")
    assert cfg["hydra"]["enabled"] == "true"
    assert (cfg["hydra"]["config_dir"], cfg["hydra"]["config_name"]) == (CONFIG_DIR, DEFAULTS_NAME)


def test_recipes_all_validate_and_name_the_sections_they_set():
    """Each recipe names itself and, in ``set_by``, every section it sets (dvc.yaml tracks those
    sections at that file); the defaults name themselves for every section."""
    from srvau.config import Params

    recipes = sorted((PROJECT_ROOT / "configs" / "recipe").glob("*.yaml"))
    assert {r.stem for r in recipes} >= {"paper-3b", "rehearsal", "vau-r1"}
    for r in recipes:
        p = load_params(recipe=r.stem)  # raises ConfigError naming the key if a recipe drifts
        raw = yaml.safe_load(r.read_text())
        assert raw["recipe"] == r.stem == p.recipe
        sections = set(raw) - {"recipe", "set_by", "defaults"}
        assert raw["set_by"] == {k: f"configs/recipe/{r.name}" for k in sections}, r.name
    defaults = yaml.safe_load((PROJECT_ROOT / "configs" / "defaults.yaml").read_text())
    fields = {(f.alias or n) for n, f in Params.model_fields.items()} - {"recipe", "set_by"}
    assert defaults["set_by"] == {k: "configs/defaults.yaml" for k in fields}


def test_a_recipe_layers_on_another():
    """rehearsal names paper-3b in its defaults list: it changes only what a CPU needs."""
    paper, rehearsal = load_params(recipe="paper-3b"), load_params(recipe="rehearsal")
    assert rehearsal.model.base == "models/tiny-base" and rehearsal.sft.max_steps == 6
    assert rehearsal.cot.flaws == paper.cot.flaws == "random"  # the paper's, not set again
    assert rehearsal.grpo.difficulty_filter is paper.grpo.difficulty_filter is True
    assert rehearsal.set_by["cot"] == "configs/recipe/rehearsal.yaml"
    assert rehearsal.set_by["grpo"] == "configs/recipe/rehearsal.yaml"
    assert paper.set_by["register"] == "configs/defaults.yaml"


def test_a_composed_params_yaml_keeps_annotations_in_the_folder_dvc_tracks(tmp_path):
    from srvau.config import write_composed

    out = tmp_path / "params.yaml"
    with pytest.raises(ConfigError, match="ingest.annotations must lie under ingest.annotations_dir"):
        write_composed(out, None, ["ingest.annotations=[data/elsewhere/x.csv]"])
    assert not out.exists()  # nothing written
    # a one-off override for one command may point anywhere
    assert load_params(overrides={"ingest.annotations": ["/tmp/x.csv"]}).ingest.annotations == ["/tmp/x.csv"]


def test_cli_config_show_and_errors():
    runner = CliRunner()
    ok = runner.invoke(app, ["--set", "sft.max_steps=3", "config", "show", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"max_steps": 3' in ok.stdout
    bad = runner.invoke(app, ["--set", "sft.max_stepz=3", "config", "show"])
    assert bad.exit_code == 2
    assert "sft.max_stepz: unknown key" in bad.output


def test_cli_help_lists_the_stages():
    out = CliRunner().invoke(app, ["--help"]).stdout
    for cmd in ("config", "data", "model"):
        assert cmd in out


def test_safe_params_drop_secrets_but_keep_look_alikes():
    from srvau.tracking.runs import safe_params

    p = load_params()
    flat = safe_params(p)
    assert "evaluate.max_new_tokens" in flat and "model.tiny.num_key_value_heads" in flat
    leaked = load_params(overrides={"cot.openai.api_key_env": "MY_KEY_VAR"})
    assert safe_params(leaked)["cot.openai.api_key_env"] == "MY_KEY_VAR"  # a variable's name, not a key


def test_hub_ids_and_local_paths_are_told_apart(tmp_path, monkeypatch):
    from srvau.modeling.loading import _source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert _source("Qwen/Qwen2.5-VL-3B-Instruct") == ("Qwen/Qwen2.5-VL-3B-Instruct", False)
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        _source(str(tmp_path / "missing-model"))
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        _source("models/sft/merged")  # two levels: never a Hub id
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        _source("models/sft")  # org/name shape, but ./models is a local folder


def test_outputs_record_project_paths_relative_to_the_project(tmp_path):
    """What DVC versions (the manifest's CSVs, the RoCoT stats' manifest) must not name the checkout."""
    from srvau.config import PROJECT_ROOT, project_relative

    assert project_relative(PROJECT_ROOT / "data" / "ingest" / "manifest.parquet") == "data/ingest/manifest.parquet"
    outside = tmp_path / "elsewhere.csv"
    assert project_relative(outside) == str(outside)
    # a link (DVC's symlink cache) is named where it is, not where it points
    target = tmp_path / "cache" / "ab12"
    target.parent.mkdir()
    target.write_text("x")
    outside.symlink_to(target)
    assert project_relative(outside) == str(outside)

"""Config: valid files load, recipes overlay, and every kind of error names its key."""

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


def test_params_yaml_keys_are_all_commented():
    """Every key line in params.yaml carries a comment, except section headers and list items."""
    lines = (PROJECT_ROOT / "params.yaml").read_text().splitlines()
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
    assert not bare, f"uncommented keys in params.yaml: {bare}"


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


def test_recipe_overlay_merges_deeply(tmp_path):
    overlay = _write(tmp_path, {"sft": {"max_steps": 7}, "model": {"torch_dtype": "bfloat16"}}, "r.yaml")
    p = load_params(recipe=str(overlay))
    assert p.sft.max_steps == 7 and p.model.torch_dtype == "bfloat16"
    # untouched keys of the same sections keep the params.yaml value
    assert p.sft.learning_rate == _project_params()["sft"]["learning_rate"]
    assert p.recipe == str(overlay)


def test_recipe_errors_name_the_recipe_key(tmp_path):
    overlay = _write(tmp_path, {"grpo": {"num_generations": "eight"}}, "r.yaml")
    with pytest.raises(ConfigError, match=r"grpo\.num_generations"):
        load_params(recipe=str(overlay))


def test_recipe_selected_by_the_recipe_key_like_dvc_exp_run_S(tmp_path):
    overlay = _write(tmp_path, {"seed": 99}, "r.yaml")
    data = _project_params()
    data["recipe"] = str(overlay)  # what `dvc exp run -S recipe=...` writes into params.yaml
    assert load_params(_write(tmp_path, data)).seed == 99


def test_recipes_in_configs_all_validate():
    recipes = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
    for r in recipes:
        load_params(recipe=str(r))  # raises ConfigError naming the key if a recipe drifts


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

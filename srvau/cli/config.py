"""``srvau config show`` (the resolved configuration) and ``srvau config compose`` (write params.yaml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from srvau.cli.context import fail, get_params

config_app = typer.Typer(help="Inspect the resolved configuration; compose params.yaml.", no_args_is_help=True)


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML")) -> None:
    """Print the resolved configuration (params.yaml, or --recipe composed fresh, then --set overrides)."""
    import yaml

    p = get_params(ctx)
    typer.echo(json.dumps(p.dump(), indent=2) if as_json else yaml.safe_dump(p.dump(), sort_keys=False))


@config_app.command("compose")
def config_compose(
    ctx: typer.Context,
    overrides: list[str] = typer.Argument(None, help="Hydra overrides applied last, e.g. sft.max_steps=5"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write (default: the project's params.yaml)"),
) -> None:
    """Write params.yaml from configs/defaults.yaml + the --recipe + overrides, exactly as
    ``dvc exp run -S recipe=NAME -S key=value`` composes it (DVC's Hydra composition)."""
    from srvau.config import PROJECT_ROOT, ConfigError, write_composed

    opts = ctx.find_root().obj
    if opts is not None and opts.overrides:
        raise fail("config compose takes overrides as arguments (key=value, Hydra syntax), not --set")
    target = out or PROJECT_ROOT / "params.yaml"
    try:
        p = write_composed(target, opts.recipe if opts else None, overrides or [])
    except ConfigError as e:
        raise fail(str(e)) from None
    typer.echo(f"{target}: composed (recipe {p.recipe or 'none: the demo defaults'})")

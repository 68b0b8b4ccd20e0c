"""``srvau config show``: the resolved configuration."""

from __future__ import annotations

import json

import typer

from srvau.cli.context import get_params

config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML")) -> None:
    """Print the resolved configuration (params.yaml + recipe + overrides)."""
    import yaml

    p = get_params(ctx)
    typer.echo(json.dumps(p.dump(), indent=2) if as_json else yaml.safe_dump(p.dump(), sort_keys=False))

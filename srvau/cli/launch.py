"""``srvau launch sft|grpo|evaluate``: a stage started as params' ``launch`` section says (srvau.launch).

Each subcommand takes exactly the options of its stage command (``srvau launch evaluate --out X``).
One process runs the stage command right here; more replace this process by ``accelerate launch``,
which starts every rank on ``srvau <the same global options> <stage> <the options given here>``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer

from srvau.cli import evaluate, train
from srvau.cli.context import fail, get_params
from srvau.config import ConfigError

launch_app = typer.Typer(
    help="Run sft, grpo or evaluate as params' launch section says: in this process, or as accelerate ranks.",
    no_args_is_help=True,
)


def given_options(ctx: typer.Context) -> list[str]:
    """The options given on this command line (or by env), back as arguments for the ranks. Duck-typed:
    typer ships its own copy of click, whose classes are not ``click``'s."""
    out: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.param_type_name != "option" or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[param.name]
        for v in (value if param.multiple else [value]):
            if param.is_flag:
                out.append(param.opts[0] if v else param.secondary_opts[0])
            else:
                out += [param.opts[0], str(v)]
    return out


def _launched(stage: str, command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` behind the launcher; ``functools.wraps`` gives it the stage's options and help (and
    tests/code/test_architecture.py follows ``__wrapped__`` to the stage's code)."""

    @functools.wraps(command)
    def launched(ctx: typer.Context, **options: Any) -> Any:
        from srvau.launch import exec_ranks, global_options, plan

        p = get_params(ctx)
        try:
            launch = plan(p, stage)
        except ConfigError as e:
            raise fail(str(e)) from None
        if launch.in_process:
            return command(ctx, **options)
        root = ctx.find_root()
        opts = root.obj
        cli_args = [*global_options(opts.params, opts.recipe, opts.overrides, bool(root.params.get("verbose"))),
                    stage, *given_options(ctx)]
        exec_ranks(launch, cli_args)

    return launched


launch_app.command("sft")(_launched("sft", train.sft_cmd))
launch_app.command("grpo")(_launched("grpo", train.grpo_cmd))
launch_app.command("evaluate")(_launched("evaluate", evaluate.evaluate_cmd))

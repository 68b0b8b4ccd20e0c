"""What a pipeline run tells its reader at the end: the Markdown the Prefect flow publishes as the flow
run's artifact (key ``srvau-pipeline``), so the answer is on the flow run's page without opening a file.

After a success: the headline table (srvau.evaluation.headline, from ``metrics.json``), the registry
decision (``reports/registry.json``: which version was registered, whether ``@champion`` moved and why),
where the report is (relative to the project) and the MLflow run, each stage's status, and the warnings.
After a failed stage: which stage failed, the tail of its error, and what had run before it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from srvau.config import Params, project_relative

ARTIFACT_KEY = "srvau-pipeline"  # Prefect artifact keys: lowercase letters, digits, dashes
ERROR_TAIL = 3000


def mlflow_run_line(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """The MLflow run as a link on a server, else its id and how to open the local store."""
    if not run_id:
        return "no MLflow run"
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        url = f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return f"[{run_id}]({url})"
    return f"`{run_id}` (`mlflow ui --backend-store-uri {tracking_uri}`)"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def registry_decision(record: dict[str, Any] | None) -> str:
    """One paragraph from ``registry.json``: the version registered and whether ``@champion`` moved, and why."""
    if not record:
        return "_Nothing registered: no `registry.json`._"
    lines = [f"Registered **{record.get('name')}** version **{record.get('version')}** as "
             f"`@{record.get('alias')}` (logged model `{record.get('model_id', 'n/a')}`, "
             f"{record.get('model_origin', 'origin not recorded')})."]
    promotion = record.get("promotion")
    if promotion is None:
        lines.append("Promotion not attempted (`register.auto_promote` is off): `@champion` did not move.")
    elif promotion.get("promoted", True):
        previous = promotion.get("previous")
        moved = "stays on" if previous == promotion.get("version") else "moved to"
        lines.append(f"`@{promotion.get('alias', 'champion')}` {moved} version {promotion.get('version')}"
                     f"{'' if not previous or previous == promotion.get('version') else f' (was {previous})'}: "
                     f"{promotion.get('reason', 'no reason recorded')}.")
    else:
        lines.append(f"`@champion` did **not** move: {promotion.get('reason', 'no reason recorded')}")
    return "\n\n".join(lines)


def _stage_table(statuses: dict[str, str]) -> str:
    return "\n".join(["| stage | status |", "|---|---|", *[f"| {s} | {v} |" for s, v in statuses.items()]])


def pipeline_markdown(params: Params, *, run_line: str, statuses: dict[str, str], warnings: list[str],
                      push: str) -> str:
    """The artifact of a finished pipeline run."""
    from srvau.evaluation.headline import headline_markdown

    metrics_file = params.resolve(params.evaluate.out_dir) / "metrics.json"
    report = params.resolve(params.evaluate.report)
    metrics = _read_json(metrics_file)
    parts = [
        "# srvau pipeline: finished",
        f"MLflow run: {run_line}  \nRecipe: `{params.recipe or 'demo'}`  \nDVC push: {push}",
        "## Headline",
        headline_markdown(metrics, params.evaluate.primary_style) if isinstance(metrics, dict)
        else f"_No evaluation results (`{project_relative(metrics_file)}` is missing)._",
        "## Registry",
        registry_decision(_read_json(params.resolve(params.paths.reports) / "registry.json")),
        "## Report",
        f"`{project_relative(report)}`" if report.exists() else f"_No report (`{project_relative(report)}` is missing)._",
        "## Stages",
        _stage_table(statuses),
    ]
    if warnings:
        parts += ["## Warnings", "\n".join(f"- {w}" for w in warnings)]
    return "\n\n".join(parts) + "\n"


def failure_markdown(*, stage: str, error: str, run_line: str, statuses: dict[str, str]) -> str:
    """The artifact of a pipeline run stopped by a failed stage: which one, its error's tail, what ran."""
    tail = error[-ERROR_TAIL:].replace("```", "'''")
    parts = [
        f"# srvau pipeline: FAILED at stage `{stage}`",
        f"MLflow run: {run_line}",
        "## Error (tail)",
        f"```\n{tail}\n```",
        "## Stages before it",
        _stage_table(statuses) if statuses else "_none_",
    ]
    return "\n\n".join(parts) + "\n"

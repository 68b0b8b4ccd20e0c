"""What the demo claims, checked on one run: its ``metrics.json`` and its GRPO stage's logged reward.

The claims (docs/demo-results.md reads every seed through them):
- the test split holds at least ``MIN_VIDEOS`` videos;
- the trained model's QA accuracy and 20-way classification accuracy each have a 95% interval whose
  lower bound is above chance (a quarter for four options; one over the demo's classes, Normal included);
- its grounding mIoU is at least ``MIN_MIOU``;
- pooled over QA and classification, its final answers are right at least as often as the baseline's
  on the same prompts (answers right only after >= right only before);
- its mean GRPO reward over the last quarter of steps exceeds the first quarter's;
- pooled over QA and classification, reflection fixes more answers than it breaks, and final accuracy
  exceeds first-answer accuracy (reflective outputs only).

Pure: :func:`demo_criteria` reads a parsed ``metrics.json`` and a reward history. Fetching the history
from MLflow is :func:`trained_model_reward_history`'s job (the run that logged the evaluated weights),
or :func:`grpo_reward_history`'s (the recipe's newest GRPO run) when the evaluation recorded no digest.
"""

from __future__ import annotations

from typing import Any, Sequence

from srvau.evaluation.headline import fmt_gain, fmt_value

MIN_VIDEOS = 40
MIN_MIOU = 40.0
QA_CHANCE = 25.0
POOLED = (("qa", "accuracy"), ("classification", "multi_acc"))


def quarter_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of ``values`` (a quarter of at least one value)."""
    if not values:
        raise ValueError("no reward was logged")
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def _reflective_count(reflection: dict[str, Any], task: str, key: str) -> float:
    r = reflection[task]
    return (r[key] or 0.0) * r["reflective"] / 100  # a rate is None when no output was reflective


def demo_criteria(
    metrics: dict[str, Any],
    rewards: Sequence[float],
    n_classes: int,
    model: str = "grpo",
    baseline: str = "sft",
    style: str = "reflect",
) -> list[dict[str, Any]]:
    """One row per claim: ``name``, ``value`` (what was read, as text) and ``holds``."""
    m = metrics[model]
    qa, cls, gr = (m[t][style] for t in ("qa", "classification", "grounding"))
    cls_chance = 100.0 / n_classes
    paired = m["paired"][baseline]["pooled"]
    refl = m["reflection"]
    count = lambda key: sum(_reflective_count(refl, t, key) for t, _ in POOLED)  # noqa: E731
    w2r, r2w = count("wrong_to_right"), count("right_to_wrong")
    first, final = count("first_accuracy"), count("final_accuracy")
    r_first, r_last = quarter_means(rewards)
    return [
        {"name": f"test split >= {MIN_VIDEOS} videos", "value": f"{cls['n']}", "holds": cls["n"] >= MIN_VIDEOS},
        {"name": f"QA above chance ({QA_CHANCE:.0f}%)", "value": fmt_value(qa["accuracy"], qa["accuracy_ci95"]),
         "holds": qa["accuracy_ci95"][0] > QA_CHANCE},
        {"name": f"classification above chance ({cls_chance:.1f}%)",
         "value": fmt_value(cls["multi_acc"], cls["multi_acc_ci95"]), "holds": cls["multi_acc_ci95"][0] > cls_chance},
        {"name": f"grounding mIoU >= {MIN_MIOU:.0f}", "value": fmt_value(gr["miou"], None), "holds": gr["miou"] >= MIN_MIOU},
        {"name": f"{model} >= {baseline}, pooled", "value": f"{paired['this_only']} right only after, "
         f"{paired['other_only']} only before ({fmt_gain(paired['difference'])} points "
         f"{fmt_value(paired['difference'], paired['difference_ci95']).split(' ', 1)[1]})",
         "holds": paired["this_only"] >= paired["other_only"]},
        {"name": "reward rises (last quarter > first)", "value": f"{r_first:.3f} -> {r_last:.3f} over {len(rewards)} steps",
         "holds": r_last > r_first},
        {"name": "reflection fixes more than it breaks", "value": f"{w2r:.0f} wrong->right, {r2w:.0f} right->wrong",
         "holds": w2r > r2w},
        {"name": "final accuracy > first", "value": f"{first:.0f} -> {final:.0f} right", "holds": final > first},
    ]


def grpo_reward_history(tracking_uri: str, experiment: str, recipe: str, metric: str = "grpo.reward") -> list[float]:
    """The logged reward of the newest run of the ``grpo`` stage of ``recipe`` (its ``srvau.recipe`` tag)
    in ``experiment``, step by step: ``make compare`` trains other recipes into the same experiment."""
    from mlflow.tracking import MlflowClient

    from srvau.tracking.runs import TAG_RECIPE, TAG_STAGE

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = 'grpo' and tags.`{TAG_RECIPE}` = '{recipe}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, metric)
        if history:
            return [h.value for h in sorted(history, key=lambda h: h.step)]
    raise LookupError(f"no grpo run of recipe {recipe!r} with {metric!r} in experiment {experiment!r} at {tracking_uri}")


def trained_model_reward_history(params: Any, digest: str, metric: str = "grpo.reward") -> list[float]:
    """The logged reward of the GRPO run that logged the checkpoint whose weights' digest is ``digest``
    (found as every stage finds a model, :func:`srvau.tracking.models.find_logged_model`; the evaluation
    records the digest in ``inference.json``): the run that trained the evaluated model, even when a
    newer one exists."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from srvau.tracking.models import find_logged_model
    from srvau.tracking.runs import TAG_STAGE, tracking_uri

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    model = find_logged_model(digest, params, stage="grpo")
    if model is not None and model.tags.get(TAG_STAGE) == "grpo" and model.source_run_id:
        history = MlflowClient(uri).get_metric_history(model.source_run_id, metric)
        if history:
            return [h.value for h in sorted(history, key=lambda h: h.step)]
    raise LookupError(f"no grpo run in experiment {params.tracking.experiment!r} at {uri} logged the evaluated "
                      f"model (weights sha256 {digest[:12]}...) with {metric!r}: was it trained with tracking off, "
                      "or into another store?")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| claim | value | holds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['value']} | {'yes' if r['holds'] else 'NO'} |" for r in rows]
    held = sum(r["holds"] for r in rows)
    return "\n".join(lines) + f"\n\n{held} of {len(rows)} claims hold."

"""The shared vocabulary: tasks, prompt styles, the 20 VAU-Bench classes, interval kinds, and the one rule
for "this value is missing" (docs/contracts.md)."""

from __future__ import annotations

import math
import re
from typing import Any

TASKS: tuple[str, ...] = ("qa", "grounding", "classification", "description")
# Tasks whose answers can be checked mechanically (GRPO prompts, reflection transitions).
VERIFIABLE_TASKS: tuple[str, ...] = ("qa", "grounding", "classification")
# VAU-R1's names for the evaluated tasks (its prediction files and metrics.json use them).
METRIC_TASK: dict[str, str] = {"qa": "qa", "grounding": "tag", "classification": "cls"}
STYLES: tuple[str, ...] = ("reflect", "think", "direct")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")

# ``start_s, end_s`` of a manifest row: an anomaly interval, ``0,0`` normal, ``-1,-1`` unavailable.
INTERVAL_KINDS: tuple[str, ...] = ("anomaly", "normal", "unavailable")
NORMAL_INTERVAL: tuple[float, float] = (-1.0, -1.0)

CLASSES: tuple[str, ...] = (
    "Abuse",
    "Agriculture",
    "Arrest",
    "Arson",
    "Assault",
    "Explosion",
    "Fighting",
    "Fire",
    "Food Safety",
    "Medical Abnormality",
    "Natural Hazard",
    "Normal",
    "Object_falling",
    "People_falling",
    "Robbery",
    "Shooting",
    "Stealing",
    "Traffic_accident",
    "Vandalism",
    "Water_incident",
)
NORMAL = "Normal"


def class_key(name: str) -> str:
    """Comparison key: case-insensitive, space == underscore, surrounding blanks ignored."""
    return re.sub(r"[\s_]+", "_", str(name).strip()).lower()


_BY_KEY = {class_key(c): c for c in CLASSES}


def canonical_class(name: str) -> str | None:
    """The canonical spelling of a class name, or None when it is not one of the 20."""
    return _BY_KEY.get(class_key(name))


def is_anomaly(name: str) -> bool:
    return class_key(name) != class_key(NORMAL)


def is_missing(value: Any) -> bool:
    """The one missing-value rule for annotation/manifest/RoCoT cells: None, NaN, a blank string, or
    VAU-Bench's text sentinel ``"-1"`` (e.g. a QA field of a video without a question). A *number* -1 is a
    value: interval ends use it, and ``interval_kind`` says what it means."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in MISSING_TEXT


MISSING_TEXT = frozenset({"", "-1", "-1.0"})


def optional_text(value: Any) -> str | None:
    """``value`` as stripped text, or None when it is missing."""
    return None if is_missing(value) else str(value).strip()


def optional_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, NaN or not a number (``"-1"`` reads as -1.0)."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f

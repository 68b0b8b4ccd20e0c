"""The 20 VAU-Bench class names (19 anomaly types + Normal) and their spelling rules."""

from __future__ import annotations

import re

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

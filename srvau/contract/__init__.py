"""The contract layer: the rules every stage shares, each written once (docs/architecture.md).

``vocab`` (tasks, prompt styles, the 20 classes, the missing-value rule), ``trace`` (the reflection trace
format: render, parse, extract), ``prompts``, ``truth`` (ground truth of a manifest row) and ``scoring``
(answer correctness, interval score, well-formedness, description check; strict and VAU-R1-lenient
readings). It imports nothing from the rest of srvau, so ingest, CoT, the gate, training and the
evaluation can all build on it without import cycles.
"""

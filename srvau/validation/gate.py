"""The data gate: GX suites on the manifest, RoCoT, the splits (with ingest's quarantine) and the
annotation CSVs; one checkpoint per suite, a readable verdict.

    reports_dir/gate.json          verdict, summary, every failed check, and GX's full results
    reports_dir/data_docs/         GX Data Docs (index.html + one page per validation)

Both outputs are rewritten on every run, so the folder holds exactly this run's verdict (DVC-friendly).
The context is GX's *ephemeral* one (nothing under ``gx/`` to keep in git); creating it and importing
GX costs a few seconds, so callers that run the gate many times (tests) share one :class:`Gate`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from srvau.config import Params
from srvau.io import read_jsonl, write_text
from srvau.validation.suites import (
    annotation_expectations,
    manifest_expectations,
    prepare_annotations,
    prepare_manifest,
    prepare_rocot,
    rocot_expectations,
    split_expectations,
    split_summary,
)

log = logging.getLogger(__name__)

GATE_JSON = "gate.json"
DOCS_DIR = "data_docs"
SITE = "srvau_gate"
INDEX_COLUMNS = {"manifest": ["video_id"], "rocot": ["sample_id"], "splits": ["split"], "annotations": ["video_id", "split"]}


class GateInputError(ValueError):
    """An input of the gate is missing or unreadable (not a data defect: nothing to validate)."""


@dataclass
class Failure:
    suite: str  # manifest | rocot | splits | annotations
    check: str  # the defect in words (the expectation's meta["check"])
    expectation: str
    column: str | None
    detail: str  # counts, examples or the observed value
    fix: str = ""  # what to change (the expectation's meta["fix"]), when the check says more than the defect

    def line(self) -> str:
        return f"{self.suite}: {self.check} ({self.detail})" + (f"; fix: {self.fix}" if self.fix else "")


@dataclass
class GateResult:
    success: bool
    failures: list[Failure]
    evaluated: dict[str, int]  # suite -> expectations evaluated
    json_path: Path
    docs_index: Path | None  # None when run without Data Docs
    docs_dir: Path
    hidden: list[Failure] = field(default_factory=list)  # consequences of a missing column

    def summary(self) -> str:
        n = sum(self.evaluated.values())
        if self.success:
            return f"data gate passed: {n} checks on {', '.join(self.evaluated)}"
        lines = [f"data gate FAILED: {len(self.failures)} of {n} checks broke"]
        lines += [f"  - {f.line()}" for f in self.failures]
        if self.hidden:
            lines.append(f"  ({len(self.hidden)} more check(s) could not run on the missing column(s))")
        return "\n".join(lines)

    @property
    def failed_checks(self) -> list[str]:
        return [f"{f.suite}: {f.check}" for f in self.failures]


def make_context():
    """An ephemeral GX context with progress bars off (they would flood CI logs)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX pins some module loggers to INFO itself (e.g. data_context.types.base): quiet them by name.
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context",
                 "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def _plain(v: Any) -> Any:
    import numpy as np

    return v.item() if isinstance(v, np.generic) else v


def _short(v: Any, limit: int = 60) -> str:
    v = _plain(v)
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _example(row: dict[str, Any], id_columns: list[str]) -> str:
    """'<id>: <offending value(s)>' from one entry of GX's partial_unexpected_index_list."""
    ids = [_short(row.get(c)) for c in id_columns if c in row]
    vals = [f"{k}={_short(v, 40)}" for k, v in row.items() if k not in id_columns]
    return ", ".join(ids) + (f" ({'; '.join(vals)})" if vals else "")


def _detail(result: Any, max_examples: int, id_columns: list[str]) -> str:
    exc = result.exception_info or {}
    if isinstance(exc, dict) and not exc.get("raised_exception", False):
        # GX keys exception info by metric when an expectation has several metrics.
        exc = next((v for v in exc.values() if isinstance(v, dict) and v.get("raised_exception")), {})
    if exc.get("raised_exception"):
        msg = str(exc.get("exception_message") or "error").splitlines()[0]
        return f"could not be evaluated: {_short(msg, 120)}"
    if result.expectation_config.type == "expect_column_to_exist":
        return "not in the table"
    r = result.result or {}
    if "unexpected_count" in r:
        parts = [f"{r['unexpected_count']} of {r.get('element_count', '?')} rows"]
        rows = r.get("partial_unexpected_index_list") or []
        if rows and isinstance(rows[0], dict):
            parts.append("e.g. " + ", ".join(_example(d, id_columns) for d in rows[:max_examples]))
        elif r.get("partial_unexpected_list"):
            parts.append("e.g. " + ", ".join(_short(x, 40) for x in r["partial_unexpected_list"][:max_examples]))
        return "; ".join(parts)
    if "observed_value" in r:
        ov = _plain(r["observed_value"])
        return f"observed {ov:.3g}" if isinstance(ov, float) else f"observed {_short(ov)}"
    return "failed"


def _column(cfg: Any) -> str | None:
    kw = cfg.kwargs
    if kw.get("column"):
        return kw["column"]
    if kw.get("column_A"):
        return f"{kw['column_A']}, {kw['column_B']}"
    if kw.get("column_list"):
        return ", ".join(kw["column_list"])
    return None


class Gate:
    """Suites, validation definitions, a checkpoint and a Data Docs site on one GX context."""

    def __init__(self, params: Params, reports_dir: Path, context=None):
        import great_expectations as gx

        self.params = params
        self.reports_dir = Path(reports_dir).resolve()
        self.docs_dir = self.reports_dir / DOCS_DIR
        self.context = context or make_context()
        ctx = self.context
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        if SITE in ctx.get_config().data_docs_sites:
            ctx.update_data_docs_site(SITE, site)
        else:
            ctx.add_data_docs_site(SITE, site)
        source = ctx.data_sources.add_or_update_pandas("srvau")
        self._defs = {}
        self._checkpoints: dict[tuple[str, bool, bool], Any] = {}
        suites = {"manifest": manifest_expectations(params), "rocot": rocot_expectations(params),
                  "splits": split_expectations(params), "annotations": annotation_expectations(params)}
        for name, expectations in suites.items():
            try:
                asset = source.get_asset(name)
            except LookupError:
                asset = source.add_dataframe_asset(name)
            try:
                batch = asset.get_batch_definition("whole")
            except (KeyError, LookupError):
                batch = asset.add_batch_definition_whole_dataframe("whole")
            suite = gx.ExpectationSuite(name=f"srvau_{name}", expectations=expectations)
            suite = ctx.suites.add_or_update(suite)
            self._defs[name] = ctx.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=f"srvau_{name}", data=batch, suite=suite)
            )

    def _checkpoint(self, name: str, with_ids: bool, docs: bool):
        """One checkpoint per (suite, id columns present, docs), made once: GX's add_or_update
        compares every expectation and costs more than the validation itself."""
        import great_expectations as gx

        key = (name, with_ids, docs)
        if key not in self._checkpoints:
            fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": self.params.validate_.max_examples}
            if with_ids:
                fmt["unexpected_index_column_names"] = INDEX_COLUMNS[name]  # examples name the offending rows
            actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE])] if docs else []
            cp = gx.Checkpoint(
                name=f"srvau_gate_{name}{'_ids' if with_ids else ''}{'_docs' if docs else ''}",
                validation_definitions=[self._defs[name]],
                actions=actions,
                result_format=fmt,
            )
            self._checkpoints[key] = self.context.checkpoints.add_or_update(cp)
        return self._checkpoints[key]

    def run(
        self,
        manifest: pd.DataFrame,
        rocot: pd.DataFrame | None = None,
        manifest_dir: Path | None = None,
        docs: bool = True,
        quarantine: list[dict[str, Any]] | None = None,
        annotations: pd.DataFrame | None = None,
    ) -> GateResult:
        """Validate ``manifest`` (and ``rocot``, the imported ``annotations``); write gate.json and
        (``docs``) the Data Docs.

        Bad data never raises: it is the verdict. ``manifest_dir`` (the ingest folder) enables the
        frame-cache check and supplies ingest's quarantine file unless ``quarantine`` is given
        (GateInputError when it is missing: the quarantined share cannot be judged without it)."""
        if quarantine is None:
            quarantine = read_quarantine(Path(manifest_dir)) if manifest_dir is not None else []
        frames = {"manifest": prepare_manifest(manifest, manifest_dir)}
        if manifest_dir is None:
            frames["manifest"]["gate_frames_cached"] = True  # no folder to check against
        if rocot is not None:
            frames["rocot"] = prepare_rocot(rocot)
        frames["splits"] = split_summary(manifest, quarantine)
        if annotations is not None:
            frames["annotations"] = prepare_annotations(annotations)
        if self.docs_dir.exists():
            shutil.rmtree(self.docs_dir)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {}
        for name, df in frames.items():
            # One checkpoint per suite: each validates its own dataframe.
            with_ids = all(c in df.columns for c in INDEX_COLUMNS[name])
            res = self._checkpoint(name, with_ids, docs).run(batch_parameters={"dataframe": df})
            results[name] = next(iter(res.run_results.values()))
        return self._verdict(results, docs)

    def _verdict(self, results: dict[str, Any], docs: bool) -> GateResult:
        failures, hidden = [], []
        evaluated = {}
        for suite, vr in results.items():
            evaluated[suite] = len(vr.results)
            missing = {
                r.expectation_config.kwargs.get("column")
                for r in vr.results
                if not r.success and r.expectation_config.type == "expect_column_to_exist"
            }
            for r in vr.results:
                if r.success:
                    continue
                cfg = r.expectation_config
                f = Failure(suite, (cfg.meta or {}).get("check", cfg.type), cfg.type, _column(cfg),
                            _detail(r, self.params.validate_.max_examples, INDEX_COLUMNS[suite]),
                            (cfg.meta or {}).get("fix", ""))
                cols = set((f.column or "").split(", "))
                if cfg.type != "expect_column_to_exist" and cols & missing:
                    hidden.append(f)
                else:
                    failures.append(f)
        success = not failures and not hidden
        docs_index = self.docs_dir / "index.html" if docs else None
        json_path = self.reports_dir / GATE_JSON
        result = GateResult(success, failures, evaluated, json_path, docs_index, self.docs_dir, hidden)
        payload = {
            "success": success,
            "summary": result.summary(),
            "failures": [asdict(f) for f in failures + hidden],
            "evaluated": evaluated,
            "data_docs": str(docs_index) if docs_index else None,
            "results": {k: v.to_json_dict() for k, v in results.items()},
        }
        write_text(json_path, json.dumps(payload, indent=2, default=str) + "\n")
        (log.info if success else log.error)("%s", result.summary())
        return result


def read_quarantine(ingest_dir: Path) -> list[dict[str, Any]]:
    """Ingest's quarantine records (one JSON object per line) from the folder holding the manifest."""
    from srvau.data.manifest import QUARANTINE_NAME

    path = Path(ingest_dir) / QUARANTINE_NAME
    try:
        return read_jsonl(path)
    except FileNotFoundError:
        raise GateInputError(f"{path} not found: the gate needs ingest's quarantine file next to the manifest "
                             "(re-run `srvau ingest`)") from None
    except ValueError as e:
        raise GateInputError(str(e)) from None


def read_annotations(params: Params) -> pd.DataFrame:
    """Every row of ``ingest.annotations`` as the importer reads it, video present or not (the split
    leak check must see rows that ingest quarantined for a missing video)."""
    from srvau.data.vau_bench import VauBenchFormatError, read_vau_bench

    frames = []
    for name in params.ingest.annotations:
        try:
            frames.append(read_vau_bench(params.resolve(name), params.ingest.dataset).rows)
        except (FileNotFoundError, VauBenchFormatError) as e:
            raise GateInputError(f"ingest.annotations: {e}") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["video_id", "split"])


def run_gate(manifest: Path, rocot: Path | None, reports_dir: Path, params: Params, context=None) -> GateResult:
    """Load the manifest parquet, ingest's quarantine file next to it, the annotation CSVs
    (``ingest.annotations``) and the RoCoT splits, and run the gate (see :class:`Gate`)."""
    from srvau.cot.dataset import load_all

    from srvau.data.manifest import ManifestError, read_manifest

    manifest = Path(manifest)
    try:
        mdf = read_manifest(manifest)  # columns are the suite's business: it names each one missing
    except ManifestError as e:
        raise GateInputError(str(e)) from None
    rdf = None
    if rocot is not None:
        try:
            rdf = load_all(rocot)
        except FileNotFoundError as e:
            raise GateInputError(str(e)) from None
    quarantine = read_quarantine(manifest.parent)
    annotations = read_annotations(params)
    return Gate(params, reports_dir, context).run(mdf, rdf, manifest.parent, quarantine=quarantine, annotations=annotations)

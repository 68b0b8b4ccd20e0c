"""The ingest stage: VAU-Bench CSVs + a video folder -> manifest, quarantine and frame cache.

    out_dir/manifest.parquet   one row per (video, split): the importer's annotation columns plus
                               path (relative to video_root), sha256, size_bytes, duration_s, fps,
                               num_frames, width, height, codec, vfr, frames_path (relative to
                               out_dir), sampled_frames, frame_height, frame_width, decoder,
                               policy_fingerprint
    out_dir/quarantine.jsonl   one JSON line per rejected input: {what, why, detail, source, line,
                               video_name, video_id, split}; nothing read is dropped silently
    out_dir/frames/*.npz       the frame cache (``srvau.video.cache``), one file per video

Per row: the importer (``srvau.data.vau_bench``) normalises or rejects it; a later duplicate of a
(video_id, split) already seen in another CSV is quarantined (``duplicate_video_id``); the video is
looked up as ``video_root/<Video Name>``, then ``video_root/<dataset>/<Video Name>`` (test CSVs
carry no dataset prefix) and must stay inside ``video_root`` after resolving symlinks
(``unsafe_path``; absolute names and ``..`` are refused before touching the disk); a row without a
file is ``missing``. Per video (each file once, however many rows use it): streamed sha256; when
``frames/<key>.npz`` holds the same sha256 and policy fingerprint the video is *reused* (no probe, no
decode); otherwise one killable child process probes, samples, decodes and writes the cache entry
(``srvau.video.probe.probe_and_sample``); its failure reason (``zero_byte``, ``unreadable``,
``truncated``, ``image_not_video``, ``timeout``...) quarantines every row of that video, and so does a
degenerate video (``too_small``, ``too_few_frames``, ``too_short``: below ``ingest.min_width``,
``min_height``, ``min_num_frames``, ``min_duration_s``). Last, an anomaly interval
ending more than ``ingest.interval_slack_s`` past the video's duration is ``interval_past_duration``.

Cache entries not referenced by the new manifest are deleted, so ``out_dir`` is exactly this run's
output. DVC keeps the frame cache between runs (``persist``) without storing or pushing it, so
entries from an older layout or policy are re-made here (docs/frame-cache.md). The run fails
(``IngestResult.failed``, CLI exit 1) only when no valid row remains, or with ``strict`` when
anything was quarantined.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pandas as pd

from srvau.config import IngestConfig, Params, project_relative
from srvau.data.manifest import MANIFEST_NAME, QUARANTINE_NAME
from srvau.io import write_jsonl, write_parquet
from srvau.data.vau_bench import ANNOTATION_COLUMNS, VauBenchFormatError, read_vau_bench
from srvau.video.cache import cache_filename, is_fresh, read_header
from srvau.io import sha256_file
from srvau.progress import progress
from srvau.video.probe import ProbeError, VideoInfo, precheck, probe_and_sample
from srvau.video.sampling import policy_fingerprint

log = logging.getLogger(__name__)

MANIFEST, QUARANTINE = MANIFEST_NAME, QUARANTINE_NAME
FRAMES_DIR = "frames"
VIDEO_COLUMNS = (
    "path",
    "sha256",
    "size_bytes",
    "duration_s",
    "fps",
    "num_frames",
    "width",
    "height",
    "codec",
    "vfr",
    "frames_path",
    "sampled_frames",
    "frame_height",
    "frame_width",
    "decoder",
    "policy_fingerprint",
)
MANIFEST_COLUMNS = (*ANNOTATION_COLUMNS, *VIDEO_COLUMNS)
_QUARANTINE_KEYS = ("what", "why", "detail", "source", "line", "video_name", "video_id", "split")


class UnsafePath(ValueError):
    """A video name that would read outside the video root."""


@dataclass
class VideoRecord:
    """One ingested video: probe facts plus where its sampled frames are cached."""

    info: VideoInfo
    frames_path: str  # relative to out_dir
    sampled_frames: int
    frame_height: int
    frame_width: int
    decoder: str
    decoded: bool  # False: reused a fresh cache entry


@dataclass
class IngestResult:
    manifest_path: Path
    quarantine_path: Path
    manifest: pd.DataFrame
    quarantine: list[dict[str, Any]]
    counts: dict[str, int]
    failed: bool
    failure: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def resolve_video(video_root: Path, name: str, dataset: str | None = None) -> tuple[Path, str]:
    """``(real path, path relative to video_root)`` of a video name; UnsafePath or FileNotFoundError.

    Absolute names and ``..`` are refused without touching the disk; a name that resolves (through
    symlinks, in the name or in a folder on the way) outside ``video_root`` is refused too.
    """
    if not name or "\x00" in name:
        raise UnsafePath(f"invalid video name {name!r}")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive:
        raise UnsafePath(f"absolute path {name!r}")
    if ".." in posix.parts:
        raise UnsafePath(f"'..' in {name!r}")
    root = video_root.resolve()
    candidates = [posix]
    if dataset and dataset != "unknown":
        candidates.append(PurePosixPath(dataset) / posix)
    for rel in candidates:
        full = root.joinpath(*rel.parts)
        if full.is_symlink() or full.exists():
            real = full.resolve()
            if not real.is_relative_to(root):
                raise UnsafePath(f"{rel.as_posix()} resolves outside the video root (to {real})")
            return real, rel.as_posix()
    raise FileNotFoundError(f"not found under {video_root}: {' or '.join(c.as_posix() for c in candidates)}")


def _qrecord(what: str, why: str, detail: str = "", **ctx: Any) -> dict[str, Any]:
    rec = {k: None for k in _QUARANTINE_KEYS}
    rec.update(what=what, why=why, detail=detail)
    rec.update({k: (int(v) if k == "line" and v is not None else v) for k, v in ctx.items() if k in rec})
    return rec


def _row_ctx(row: pd.Series) -> dict[str, Any]:
    return {"source": row["source_csv"], "line": row["source_line"], "video_name": row["video_name"],
            "video_id": row["video_id"], "split": row["split"]}


def _read_annotations(annotations: list[Path], dataset: str, quarantine: list[dict]) -> tuple[pd.DataFrame, int]:
    frames, n_read = [], 0
    for csv_path in annotations:
        shown = project_relative(csv_path)  # the manifest and quarantine are DVC outputs: no checkout path
        try:
            res = read_vau_bench(csv_path, dataset=dataset)
        except VauBenchFormatError as e:
            quarantine.append(_qrecord(shown, "bad_annotation_file", str(e), source=shown))
            continue
        n_read += len(res.rows) + len(res.rejected)
        res.rows["source_csv"] = shown
        for r in res.rejected:
            r["source"] = shown
            quarantine.append(_qrecord(f"{r['source']}:{r['line']}", r["reason"], r.get("detail", ""),
                                       source=r["source"], line=r["line"], video_name=r.get("video_name")))
        if len(res.rows):
            frames.append(res.rows)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ANNOTATION_COLUMNS))
    return rows, n_read


def _drop_cross_file_duplicates(rows: pd.DataFrame, quarantine: list[dict]) -> pd.DataFrame:
    """The importer rejects repeats within one CSV; a (video_id, split) repeated across CSVs is caught here."""
    dup = rows.duplicated(subset=["video_id", "split"], keep="first")
    if dup.any():
        first = rows[~dup].set_index(["video_id", "split"])
        for _, row in rows[dup].iterrows():
            f = first.loc[(row["video_id"], row["split"])]
            quarantine.append(_qrecord(
                f"{row['source_csv']}:{row['source_line']}", "duplicate_video_id",
                f"{row['video_id']} ({row['split']}) first seen in {f['source_csv']} line {f['source_line']}",
                **_row_ctx(row)))
    return rows[~dup].reset_index(drop=True)


def _process_video(real: Path, rel: str, out_dir: Path, params: Params, fingerprint: str) -> VideoRecord:
    """Probe + sample + cache one video, or reuse its fresh cache entry. Raises ProbeError."""
    precheck(real)  # zero_byte / not_a_file before hashing
    try:
        sha = sha256_file(real)
    except OSError as e:  # permissions, I/O errors: this file is unusable, the run goes on
        raise ProbeError("unreadable", f"{type(e).__name__}: {e}") from None
    frames_rel = f"{FRAMES_DIR}/{cache_filename(rel)}"
    cache_path = out_dir / frames_rel
    if is_fresh(cache_path, sha, fingerprint):
        h = read_header(cache_path)
        _, fh, fw, _ = h["frame_shape"]
        rec = VideoRecord(VideoInfo(**h["info"]), frames_rel, h["n_frames"], fh, fw, h["backend"], decoded=False)
    else:
        res = probe_and_sample(real, params.video, cache_path, sha256=sha)
        if res.fallback_reason:
            log.warning("%s: decoded with PyAV (%s)", rel, res.fallback_reason)
        rec = VideoRecord(res.info, frames_rel, res.frames, res.height, res.width, res.backend, decoded=True)
    check_not_degenerate(rec.info, params.ingest)  # on reuse too: the thresholds may have changed
    return rec


def check_not_degenerate(info: VideoInfo, cfg: IngestConfig) -> None:
    """ProbeError (too_small, too_few_frames, too_short) for a video the thresholds in ``ingest`` refuse."""
    if info.width < cfg.min_width or info.height < cfg.min_height:
        raise ProbeError("too_small", f"{info.width}x{info.height} px, below ingest.min_width x min_height "
                                      f"= {cfg.min_width}x{cfg.min_height}")
    if info.num_frames < cfg.min_num_frames:
        raise ProbeError("too_few_frames",
                         f"{info.num_frames} frame(s), below ingest.min_num_frames = {cfg.min_num_frames}")
    if info.duration_s < cfg.min_duration_s:
        raise ProbeError("too_short", f"{info.duration_s:.3f} s, below ingest.min_duration_s = {cfg.min_duration_s:g}")


def ingest(
    annotations: list[Path],
    video_root: Path,
    out_dir: Path,
    params: Params,
    strict: bool = False,
) -> IngestResult:
    """Run the ingest stage; see the module docstring. Writes outputs even when the run fails.

    Raises FileNotFoundError for a missing annotation file (a configuration error); a file that is
    not a VAU-Bench CSV is quarantined as ``bad_annotation_file``."""
    annotations = [Path(a) for a in annotations]
    missing = [str(a) for a in annotations if not a.is_file()]
    if missing:  # a configuration error, not bad data: fail before doing any work
        raise FileNotFoundError(f"annotation file(s) not found: {', '.join(missing)}")
    video_root, out_dir = Path(video_root), Path(out_dir)
    (out_dir / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    fingerprint = policy_fingerprint(params.video)
    quarantine: list[dict[str, Any]] = []

    rows, n_read = _read_annotations(annotations, params.ingest.dataset, quarantine)
    rows = _drop_cross_file_duplicates(rows, quarantine)

    # where is each row's video?
    located: dict[int, tuple[Path, str]] = {}
    for i, row in rows.iterrows():
        try:
            located[i] = resolve_video(video_root, str(row["video_name"]), row["dataset"])
        except UnsafePath as e:
            quarantine.append(_qrecord(str(row["video_name"]), "unsafe_path", str(e), **_row_ctx(row)))
        except FileNotFoundError as e:
            quarantine.append(_qrecord(str(row["video_name"]), "missing", str(e), **_row_ctx(row)))

    # each file once
    videos = sorted({v for v in located.values()}, key=lambda v: v[1])
    done: dict[str, VideoRecord | ProbeError] = {}
    with ThreadPoolExecutor(max_workers=params.ingest.workers) as pool:
        futures = {pool.submit(_process_video, real, rel, out_dir, params, fingerprint): rel for real, rel in videos}
        for fut in progress(as_completed(futures), total=len(futures), desc="ingest videos", unit="video"):
            rel = futures[fut]
            try:
                done[rel] = fut.result()
            except ProbeError as e:
                done[rel] = e

    kept: list[dict[str, Any]] = []
    slack = params.ingest.interval_slack_s
    for i, (real, rel) in sorted(located.items()):
        row = rows.loc[i]
        rec = done[rel]
        if isinstance(rec, ProbeError):
            quarantine.append(_qrecord(rel, rec.reason, rec.detail, **_row_ctx(row)))
            continue
        dur = rec.info.duration_s
        if row["interval_kind"] == "anomaly" and row["end_s"] > dur + slack:
            quarantine.append(_qrecord(
                rel, "interval_past_duration",
                f"interval [{row['start_s']:g}, {row['end_s']:g}] s ends past the video's {dur:.3f} s",
                **_row_ctx(row)))
            continue
        kept.append({**row.to_dict(), **_video_columns(rel, rec, fingerprint)})

    manifest = pd.DataFrame(kept, columns=list(MANIFEST_COLUMNS))
    order = {str(a): i for i, a in enumerate(annotations)}
    quarantine.sort(key=lambda q: (order.get(q["source"], len(order)), q["line"] or 0))  # input order
    manifest_path, quarantine_path = out_dir / MANIFEST, out_dir / QUARANTINE
    write_parquet(manifest, manifest_path)
    write_jsonl(quarantine_path, quarantine)
    _prune_cache(out_dir, set(manifest["frames_path"]))

    reasons = dict(sorted(Counter(q["why"] for q in quarantine).items()))
    used = {rel: r for rel, r in done.items() if isinstance(r, VideoRecord) and rel in set(manifest["path"])}
    counts = {
        "rows_read": n_read,
        "rows": len(manifest),
        "videos_ingested": len(used),
        "videos_decoded": sum(r.decoded for r in done.values() if isinstance(r, VideoRecord)),
        "videos_reused": sum(not r.decoded for r in done.values() if isinstance(r, VideoRecord)),
        "frames_cached": sum(r.sampled_frames for r in used.values()),
        "quarantined": len(quarantine),
        **{f"quarantined_{why}": n for why, n in reasons.items()},
    }
    failure = ""
    if manifest.empty:
        failure = "no valid row remains"
    elif strict and quarantine:
        failure = f"strict: {len(quarantine)} input(s) quarantined"
    _log_summary(counts, reasons, quarantine, failure)
    return IngestResult(manifest_path, quarantine_path, manifest, quarantine, counts, bool(failure), failure, reasons)


def _video_columns(rel: str, rec: VideoRecord, fingerprint: str) -> dict[str, Any]:
    i = rec.info
    return {
        "path": rel, "sha256": i.sha256, "size_bytes": i.size_bytes, "duration_s": i.duration_s, "fps": i.fps,
        "num_frames": i.num_frames, "width": i.width, "height": i.height, "codec": i.codec, "vfr": i.vfr,
        "frames_path": rec.frames_path, "sampled_frames": rec.sampled_frames, "frame_height": rec.frame_height,
        "frame_width": rec.frame_width, "decoder": rec.decoder, "policy_fingerprint": fingerprint,
    }


def _prune_cache(out_dir: Path, keep: set[str]) -> None:
    removed = 0
    for p in (out_dir / FRAMES_DIR).iterdir():
        rel = f"{FRAMES_DIR}/{p.name}"
        if p.is_file() and rel not in keep and (p.suffix == ".npz" or p.name.endswith(".tmp")):
            p.unlink()
            removed += 1
    if removed:
        log.info("removed %d cache entr%s not in the manifest", removed, "y" if removed == 1 else "ies")


def _log_summary(counts: dict[str, int], reasons: dict[str, int], quarantine: list[dict], failure: str) -> None:
    log.info("ingest: %d rows, %d videos (%d decoded, %d reused), %d frames cached, %d quarantined",
             counts["rows"], counts["videos_ingested"], counts["videos_decoded"], counts["videos_reused"],
             counts["frames_cached"], counts["quarantined"])
    for why, n in reasons.items():
        example = next(q for q in quarantine if q["why"] == why)
        log.warning("quarantined %d x %s, e.g. %s: %s", n, why, example["what"], example["detail"])
    if failure:
        log.error("ingest failed: %s", failure)

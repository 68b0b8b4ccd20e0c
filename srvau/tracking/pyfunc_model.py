"""The logged (and registered) model: an MLflow pyfunc logged as *models-from-code* (this file, not a pickle).

``srvau.tracking.models.log_checkpoint`` logs this file with ``python_model=<path>``, the checkpoint as the
``checkpoint`` artifact, the ``srvau`` package as ``code_paths`` (so a loader needs no checkout) and
the settings it was evaluated with as ``model_config``. Loading executes this file, which declares the
model with ``set_model``.

Input: a DataFrame, one row per question:

    prompt       the user text (e.g. ``srvau.contract.prompts.task_prompt``)          required
    video_path   a video file; sampled with the evaluation's policy (srvau.video)  one of the two
    frames_path  a frame-cache entry (``.npz`` from ``srvau ingest``)              one of the two
    task         qa | grounding | classification | description (adds the grounding hint to the
                 system prompt, as the evaluation does)                            optional
    system       a system prompt replacing the style's                             optional

Params: ``max_new_tokens`` (default: the evaluation's) and ``style`` (reflect | think | direct, default
reflect: the system prompt of that style). Output: the generated texts, one per row. Decoding is
``srvau.modeling.generation`` with the evaluation's settings, so the model answers as it was evaluated.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

INPUT_COLUMNS = ("prompt", "video_path", "frames_path", "task", "system")


def _given(v: Any) -> str | None:
    """A cell's text, or None for a missing cell (None, NaN, blank)."""
    from srvau.contract.vocab import optional_text

    return optional_text(v)


class VideoAnomalyModel(PythonModel):
    def load_context(self, context) -> None:
        from srvau.config import ModelConfig, VideoConfig
        from srvau.modeling import load_model, load_processor
        from srvau.modeling.generation import inference_device_map

        cfg = context.model_config
        self.video_policy = VideoConfig(**cfg["video"])
        self.generation = cfg["generation"]
        self.batch_size = int(cfg["batch_size"])
        ckpt = context.artifacts["checkpoint"]
        model_cfg = ModelConfig(**cfg["model"])
        self.model = load_model(ckpt, model_cfg, device_map=inference_device_map()).eval()
        self.processor = load_processor(ckpt, model_cfg)

    # -- input checks (before any frame is decoded)

    def _rows(self, model_input) -> list[dict[str, Any]]:
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else [dict(r) for r in model_input]
        for n, row in enumerate(rows):
            unknown = set(row) - set(INPUT_COLUMNS)
            if unknown:
                raise ValueError(f"row {n}: unknown column(s) {sorted(unknown)}; expected {list(INPUT_COLUMNS)}")
            if _given(row.get("prompt")) is None:
                raise ValueError(f"row {n}: 'prompt' is empty")
            sources = [k for k in ("video_path", "frames_path") if _given(row.get(k)) is not None]
            if len(sources) != 1:
                raise ValueError(f"row {n}: give exactly one of 'video_path' (a video file) or 'frames_path' (a frame-cache .npz), got {sources or 'neither'}")
        return rows

    @staticmethod
    def _style(params: dict[str, Any]) -> str:
        from srvau.contract.prompts import SYSTEM

        style = params.get("style") or "reflect"
        if style not in SYSTEM:
            raise ValueError(f"unknown style {style!r}; expected one of {sorted(SYSTEM)}")
        return style

    # -- frames

    def _clip(self, row: dict[str, Any], scratch: Path, n: int):
        from srvau.video.cache import load_frames
        from srvau.video.probe import ProbeError, probe_and_sample

        video = _given(row.get("video_path"))
        if video is not None:
            if not Path(video).is_file():
                raise FileNotFoundError(f"row {n}: video_path {video} not found")
            out = scratch / f"{n}.npz"
            try:
                probe_and_sample(video, self.video_policy, out)
            except ProbeError as e:
                raise ValueError(f"row {n}: video_path {video} is not a usable video ({e})") from None
            return load_frames(out)
        frames = _given(row["frames_path"])
        if not Path(frames).is_file():
            raise FileNotFoundError(f"row {n}: frames_path {frames} not found")
        with open(frames, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":  # np.savez archives are zip files; anything else (an mp4) is not a cache entry
            raise ValueError(f"row {n}: frames_path {frames} is not a frame-cache entry (.npz); pass a video file as 'video_path'")
        return load_frames(frames)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        from srvau.contract.prompts import system_prompt
        from srvau.contract.vocab import TASKS
        from srvau.modeling.generation import GenerationSettings, chat_text, generate

        params = params or {}
        style = self._style(params)
        settings = GenerationSettings(
            max_new_tokens=int(params.get("max_new_tokens") or self.generation["max_new_tokens"]),
            temperature=float(self.generation["temperature"]),
            seed=int(self.generation["seed"]),
        )
        rows = self._rows(model_input)
        texts = []
        for n, row in enumerate(rows):
            task = _given(row.get("task"))
            if task is not None and task not in TASKS:
                raise ValueError(f"row {n}: unknown task {task!r}; expected one of {list(TASKS)}")
            system = _given(row.get("system")) or system_prompt(style, task)
            texts.append(chat_text(self.processor, row["prompt"], system))
        with tempfile.TemporaryDirectory(prefix="srvau-pyfunc-") as tmp:
            seen: dict[tuple, Any] = {}  # several questions about one video: sampled once
            clips = []
            for n, row in enumerate(rows):
                key = (_given(row.get("video_path")), _given(row.get("frames_path")))
                if key not in seen:
                    seen[key] = self._clip(row, Path(tmp), n)
                clips.append(seen[key])
            gens = generate(self.model, self.processor, texts, clips, settings, self.batch_size)
        return [g.text for g in gens]


set_model(VideoAnomalyModel())

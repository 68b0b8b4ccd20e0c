"""Video SFT on the tiny Qwen2.5-VL: real videos (synth -> ingest frame cache), real TRL SFTTrainer.

RoCoT samples are built here from the ingest manifest with ``render_trace`` and the task prompts
(the RoCoT builder is another stage's concern; this keeps the SFT tests independent of its teachers).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from srvau.contract.trace import parse_trace, render_trace
from srvau.contract.prompts import system_prompt, task_prompt
from srvau.contract.vocab import CLASSES

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("qa", "grounding", "classification", "description")

# Small and fast: a few steps, frequent checkpoints.
FAST = {
    "sft.max_steps": 6,
    "sft.per_device_train_batch_size": 2,
    "sft.logging_steps": 1,
    "sft.save_steps": 3,
    "sft.learning_rate": 0.01,
}


# ----------------------------------------------------------------------------- RoCoT rows from the manifest


def _first_pass(task: str, row: dict, correct: bool, rng: np.random.Generator):
    """(think, answer, glue) of the first pass, right or deliberately wrong."""
    cls = row["anomaly_class"]
    normal = row["interval_kind"] == "normal"
    if task == "qa":
        letter = row["correct_option"] if correct else rng.choice([x for x in "ABCD" if x != row["correct_option"]])
        return f"I look for the {row['key_object']}.", str(letter), None
    if task == "grounding":
        if correct:
            glue = (-1.0, -1.0) if normal else (row["start_s"], row["end_s"])
            return "I check every second of the clip.", "Normal" if normal else "Anomaly", glue
        if normal:
            return "Something may happen at the start.", "Anomaly", (0.0, 2.0)
        shift = min(row["duration_s"] - row["end_s"], 2.0)
        return "The event looks late.", "Anomaly", (row["start_s"] + shift, row["end_s"] + shift)
    if task == "classification":
        other = [c for c in CLASSES if c != cls]
        return f"I look for the {row['key_object']}.", cls if correct else str(rng.choice(other)), None
    return "I watch the whole clip.", row["description"] if correct else "Nothing happens.", None


def rocot_sample(task: str, row: dict, first_correct: bool, rng: np.random.Generator) -> dict:
    normal = row["interval_kind"] == "normal"
    think1, ans1, glue1 = _first_pass(task, row, first_correct, rng)
    final = {
        "qa": row["correct_option"],
        "grounding": "Normal" if normal else "Anomaly",
        "classification": row["anomaly_class"],
        "description": row["description"],
    }[task]
    glue2 = ((-1.0, -1.0) if normal else (row["start_s"], row["end_s"])) if task == "grounding" else None
    reflection = (
        "The first answer agrees with the evidence." if first_correct else "The first answer does not match the video."
    )
    completion = render_trace(think1, ans1, reflection, f"The video shows the {row['key_object']}.", final, glue1, glue2)
    return {
        "sample_id": f"{row['video_id']}:{task}",
        "video_id": row["video_id"],
        "split": row["split"],
        "task": task,
        "style": "reflect",
        "system": system_prompt("reflect", task),
        "prompt": task_prompt(task, row),
        "completion": completion,
        "first_answer": ans1,
        "final_answer": final,
        "first_correct": first_correct,
        "answer": final,
        "gt_start": -1.0 if normal else float(row["start_s"]),
        "gt_end": -1.0 if normal else float(row["end_s"]),
        "interval_kind": row["interval_kind"],
        "anomaly_class": row["anomaly_class"],
        "teacher": "test",
        "frames_path": row["frames_path"],
    }


def build_rocot(manifest: pd.DataFrame, ingest_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """train/val/test.parquet with the RoCoT contract columns; frames_path absolute."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in manifest.to_dict("records"):
        rec["frames_path"] = str((ingest_dir / rec["frames_path"]).resolve())
        for task in TASKS:
            if task == "qa" and not rec["has_qa"]:
                continue
            rows.append(rocot_sample(task, rec, bool(rng.random() < 0.5), rng))
    df = pd.DataFrame(rows)
    for split in ("train", "val", "test"):
        df[df["split"] == split].reset_index(drop=True).to_parquet(out_dir / f"{split}.parquet", index=False)
    return out_dir


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process oversubscribe the cores
    (measured here: 5 s vs 0.25 s per tiny-model step under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def _ingest(demo: Path, out: Path, params):
    from srvau.data.ingest import ingest

    res = ingest(sorted(demo.glob("*.csv")), demo / "videos", out, params)
    assert not res.failed, res.failure
    return res.manifest


@pytest.fixture(scope="module")
def rocot_dir(tmp_path_factory, params, demo_dir) -> Path:
    ingest_dir = tmp_path_factory.mktemp("ingest")
    manifest = _ingest(demo_dir, ingest_dir, params)
    return build_rocot(manifest, ingest_dir, tmp_path_factory.mktemp("rocot"))


def _params(base, **overrides):
    from srvau.config import load_params

    over = {"synth.n_train": base.synth.n_train, "synth.n_val": base.synth.n_val, "synth.n_test": base.synth.n_test}
    over.update(FAST)
    over.update(overrides)
    return load_params(overrides=over)


def _train_rows(rocot_dir: Path, n: int | None = None):
    from srvau.training.sft import load_split

    ds = load_split(rocot_dir, "train")
    return ds.select(range(n)) if n else ds


# ----------------------------------------------------------------------------- collator


def test_collator_masks_prompt_and_keeps_mm_token_types(rocot_dir, tiny_model_dir, params):
    import functools

    from srvau.modeling import load_processor
    from srvau.training.common import load_video
    from srvau.training.sft import VideoSFTCollator, training_chat_template

    proc = load_processor(tiny_model_dir)
    ds = _train_rows(rocot_dir)
    examples = [ds[i] for i in range(3)]
    collate = VideoSFTCollator(proc, functools.partial(load_video, params=params), None, training_chat_template(proc))
    batch = collate(examples)

    assert {"input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw"} <= set(batch)
    video_id = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for i, ex in enumerate(examples):
        labels = batch["labels"][i]
        kept = labels[labels != -100]
        # exactly the assistant turn is trained: the completion and its end-of-turn token
        assert proc.tokenizer.decode(kept) == ex["completion"] + "<|im_end|>"
        # the prompt (system, user text, video tokens) is masked and the video tokens are typed
        ids = batch["input_ids"][i]
        is_video = ids == video_id
        assert is_video.sum() > 0
        assert (labels[is_video] == -100).all()
        assert (batch["mm_token_type_ids"][i][is_video] != 0).all()
        assert (batch["mm_token_type_ids"][i][~is_video] == 0).all()
        # padding is masked
        assert (labels[batch["attention_mask"][i] == 0] == -100).all()
    # right padding: labels are contiguous at the end of each row's real tokens
    first = (batch["labels"][0] != -100).nonzero().flatten()
    assert (first.diff() == 1).all()


def _whole_batch(proc, loader, examples, template):
    """The batch as the processor makes it for all rows at once (the collator's reference)."""
    import torch

    from srvau.modeling.inputs import even_frames, video_metadata
    from srvau.training.sft import _video_conversation

    convs, metas = [], []
    for ex in examples:
        frames, meta = even_frames(*loader(ex["frames_path"]))
        convs.append(_video_conversation(ex.get("system"), ex["prompt"], ex["completion"], frames))
        metas.append(video_metadata(meta, len(frames)))
    batch = proc.apply_chat_template(
        convs, chat_template=template, tokenize=True, return_dict=True, return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"video_metadata": metas, "do_sample_frames": False, "padding": True, "padding_side": "right"})
    assistant = torch.as_tensor(batch.pop("assistant_masks")).bool()
    batch["labels"] = batch["input_ids"].masked_fill((batch["attention_mask"] == 0) | ~assistant, -100)
    return dict(batch)


def test_collator_kept_samples_give_the_processors_batches_and_read_each_video_once(rocot_dir, tiny_model_dir, params):
    """Rows processed one by one and padded, or kept from an earlier epoch, make the very tensors the
    processor makes for the whole batch; with room to keep them, a second epoch reads no frames."""
    import functools

    import torch

    from srvau.modeling import load_processor
    from srvau.training.common import load_video
    from srvau.training.sft import VideoSFTCollator, training_chat_template

    proc = load_processor(tiny_model_dir)
    template = training_chat_template(proc)
    rows = _train_rows(rocot_dir)
    reads = []

    def loader(path):
        reads.append(path)
        return load_video(path, params)

    examples = [rows[i] for i in range(len(rows))]
    batches = [examples[i : i + 3] for i in range(0, len(examples), 3)]
    keep = VideoSFTCollator(proc, loader, None, template, keep_mb=512)
    none = VideoSFTCollator(proc, functools.partial(load_video, params=params), None, template)
    for epoch in range(2):
        for batch in (batches if epoch == 0 else batches[::-1]):
            want = _whole_batch(proc, functools.partial(load_video, params=params), batch, template)
            for got in (keep(batch), none(batch)):
                assert set(got) == set(want)
                for key in want:
                    assert torch.equal(got[key], want[key]), key
        if epoch == 0:
            first = len(reads)
            assert first == len(examples) and keep.kept_bytes > 0
    assert len(reads) == first  # the second epoch came from memory
    assert len(keep._videos) == len({ex["frames_path"] for ex in examples})

    four = examples[:4]
    whole = VideoSFTCollator(proc, loader, None, template, keep_mb=512)
    whole(four)
    reads.clear()
    tight = VideoSFTCollator(proc, loader, None, template, keep_mb=(whole.kept_bytes - 1) / 2**20)
    for _ in range(2):
        tight(four)
    assert 0 < tight.kept_bytes < whole.kept_bytes
    assert 4 < len(reads) < 8  # past the budget rows are read again, within it they are not


def test_collator_truncates_answer_tail_never_video(rocot_dir, tiny_model_dir, params):
    import functools

    from srvau.modeling import load_processor
    from srvau.training.common import load_video
    from srvau.training.sft import VideoSFTCollator

    proc = load_processor(tiny_model_dir)
    ex = [_train_rows(rocot_dir)[0]]
    loader = functools.partial(load_video, params=params)
    full = VideoSFTCollator(proc, loader)(ex)
    n_video_end = int((full["mm_token_type_ids"][0] != 0).nonzero().max()) + 1
    cut = VideoSFTCollator(proc, loader, max_length=n_video_end + 5)(ex)
    assert cut["input_ids"].shape[1] == n_video_end + 5
    assert (cut["input_ids"][0] == full["input_ids"][0][: n_video_end + 5]).all()
    with pytest.raises(ValueError, match="video tokens"):
        VideoSFTCollator(proc, loader, max_length=n_video_end - 3)(ex)


def test_lora_targets_language_model_only(tiny_model_dir):
    from srvau.modeling import load_model
    from srvau.training.common import freeze_vision, language_lora_targets

    model = load_model(tiny_model_dir)
    targets = language_lora_targets(model)
    assert targets and all(".language_model." in t for t in targets)
    assert not any("visual" in t for t in targets)
    # the vision blocks do have gate/up/down projections: a plain suffix list would have caught them
    assert any(n.endswith("mlp.gate_proj") and "visual" in n for n, _ in model.named_modules())
    frozen = freeze_vision(model)
    assert frozen > 0
    for name, p in model.named_parameters():
        if "visual" in name and ".merger." not in name:
            assert not p.requires_grad, name
        elif ".merger." in name:
            assert p.requires_grad, name


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_training_changes_every_trainable_parameter(rocot_dir, tiny_model_dir, params, tmp_path, lora):
    import torch

    from srvau.training.sft import build_trainer

    p = _params(params, **{"sft.lora": lora, "sft.max_steps": 3, "sft.save_steps": 100})
    trainer = build_trainer(_train_rows(rocot_dir, 8), str(tiny_model_dir), tmp_path / "ckpt", p)
    before = {n: t.detach().clone() for n, t in trainer.model.named_parameters() if t.requires_grad}
    assert before
    if lora:
        assert all("lora_" in n or "modules_to_save" in n for n in before)
        assert not any("visual" in n for n in before)
    else:
        assert not any("visual" in n and ".merger." not in n for n in before)  # ViT frozen
    trainer.train()
    unchanged = [n for n, t in trainer.model.named_parameters() if n in before and torch.equal(t, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)


def test_drill_replay_adds_the_loss_of_drills_made_from_the_training_qa_prompts(rocot_dir, tiny_model_dir, params,
                                                                                  tmp_path):
    """With ``sft.drill_replay`` each training loss is the video batch's plus that of a batch of reading
    drills, whose option lists are the training QA prompts' and whose loss is on two letters each."""
    import torch
    from trl import SFTTrainer

    from srvau.contract.prompts import qa_prompt_parts
    from srvau.training.sft import build_trainer

    rows = _train_rows(rocot_dir)
    p = _params(params, **{"sft.drill_replay": 3, "sft.max_steps": 2, "sft.save_steps": 100})
    trainer = build_trainer(rows, str(tiny_model_dir), tmp_path / "ckpt", p)
    replay = trainer.drill_replay
    qa = [qa_prompt_parts(r["prompt"]) for r in rows if r["task"] == "qa"]
    assert replay.lists and all(parts in qa for parts in replay.lists)
    assert all(qa_prompt_parts(r["prompt"]) is None for r in rows if r["task"] != "qa")

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model.train()
    drawn = replay.rng.bit_generator.state
    with torch.no_grad():
        total = trainer.compute_loss(model, batch)
        replay.rng.bit_generator.state = drawn  # the same drills again
        drills = replay()
        video = SFTTrainer.compute_loss(trainer, model, batch)
        drill = model(**drills).loss
    assert ((drills["labels"] != -100).sum(dim=1) == 2).all()  # the look-up and the copy
    tokens = (batch["labels"][..., 1:] != -100).sum()
    assert drill > 0 and torch.allclose(total, video + drill * 3 * 2 / tokens)  # a letter weighs what a token weighs
    assert not hasattr(build_trainer(rows, str(tiny_model_dir), tmp_path / "off", _params(params, **{"sft.drill_replay": 0})),
                       "drill_replay")


def test_drill_replay_trains_on_two_gloo_ranks(rocot_dir, tiny_model_dir, params, tmp_path):
    """Regression: the drills' forward through the DDP wrapper, a second one before the backward, failed
    ("Expected to mark a variable ready only once")."""
    sets = {"sft.drill_replay": 2, "sft.max_steps": 2, "sft.save_steps": 100, "sft.per_device_train_batch_size": 1,
            "sft.max_length": 1024, **{f"synth.{k}": v for k, v in params.synth.model_dump().items()}}
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
           "--num_processes", "2", "-m", "srvau.cli", *args, "sft", "--rocot", str(rocot_dir),
           "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "sft")]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert log.count("SFT replays 2 reading drills per step") == 2  # on both ranks
    assert json.loads((tmp_path / "sft/summary.json").read_text())["world_size"] == 2


def test_sft_stage_outputs_merge_and_mlflow(rocot_dir, tiny_model_dir, params, tmp_path):
    import mlflow
    import torch
    from peft import PeftModel

    from srvau.modeling import load_model, load_processor
    from srvau.modeling.inputs import processor_inputs, user_message
    from srvau.tracking.runs import configure, stage_run
    from srvau.training.common import load_video
    from srvau.training.sft import sft

    p = _params(params, **{"tracking.experiment": "test-sft-stage", "sft.lora": True})
    out = tmp_path / "sft"
    with stage_run(p, "sft"):  # the CLI opens the stage's run; sft() logs into it
        metrics = sft(rocot_dir, str(tiny_model_dir), out, p)
    assert metrics["global_step"] == p.sft.max_steps and metrics["resumed_from_step"] == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "preprocessor_config.json").is_file() or (out / "merged" / "processor_config.json").is_file()
    assert not list((out / "merged").glob("*.bin"))
    assert len(list((out / "checkpoints").glob("checkpoint-*"))) <= p.sft.save_total_limit

    # per-step loss and learning rate reached the stage's MLflow run
    configure(p)
    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("test-sft-stage")
    (run,) = client.search_runs([exp.experiment_id], "tags.`srvau.stage` = 'sft'")
    hist = client.get_metric_history(run.info.run_id, "sft.loss")
    assert [m.step for m in hist] == list(range(1, p.sft.max_steps + 1))
    assert client.get_metric_history(run.info.run_id, "sft.learning_rate")
    assert run.data.metrics["sft.global_step"] == p.sft.max_steps

    # the merged model equals base + adapter
    proc = load_processor(out / "merged")
    row = _train_rows(rocot_dir)[0]
    frames, meta = load_video(row["frames_path"], p)
    text = proc.apply_chat_template(user_message(row["prompt"], row["system"]), add_generation_prompt=True, tokenize=False)
    inputs = processor_inputs(proc, [text + row["completion"]], [frames], [meta])
    merged = load_model(out / "merged").eval()
    adapted = PeftModel.from_pretrained(load_model(tiny_model_dir), out / "adapter").eval()
    base = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        a = adapted(**inputs).logits
        m = merged(**inputs).logits
        b = base(**inputs).logits
    assert torch.allclose(a, m, atol=1e-4), float((a - m).abs().max())
    assert not torch.allclose(a, b, atol=1e-3)  # training moved the model


_CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from pathlib import Path
from srvau.config import load_params
from srvau.training.sft import sft
over = json.loads(sys.argv[1])
m = sft(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), load_params(overrides=over))
print("METRICS " + json.dumps(m))
"""


def _run_child(over: dict, rocot: Path, base: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(over), str(rocot), str(base), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_resume_after_kill(rocot_dir, tiny_model_dir, params, tmp_path):
    steps = 16
    over = {**FAST, "sft.max_steps": steps, "sft.save_steps": 4, "sft.logging_steps": 1, "sft.save_total_limit": 3}
    out = tmp_path / "sft"
    ckpts = out / "checkpoints"

    child = _run_child(over, rocot_dir, tiny_model_dir, out)
    deadline = time.time() + 240
    first = None
    while time.time() < deadline and child.poll() is None:
        done = [d for d in ckpts.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
        if done:
            first = done
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    child.wait(timeout=60)
    _, err = child.communicate()
    assert first, f"no checkpoint appeared before the run ended (rc={child.returncode}):\n{err[-3000:]}"
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "merged").exists()
    from srvau.training.checkpoints import last_complete, step_of

    killed_at = step_of(last_complete(ckpts))
    assert 0 < killed_at < steps

    again = _run_child(over, rocot_dir, tiny_model_dir, out)
    stdout, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    metrics = json.loads(stdout.split("METRICS ", 1)[1])
    assert metrics["resumed_from_step"] >= killed_at  # a later checkpoint may have landed before the kill
    assert metrics["global_step"] == steps
    assert metrics["steps_this_run"] == steps - metrics["resumed_from_step"]
    state = json.loads((ckpts / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == list(range(1, steps + 1))  # one continuous history across the kill
    assert (out / "merged" / "model.safetensors").is_file()


def test_changed_settings_do_not_resume(params, tmp_path):
    from test_checkpoints import complete_checkpoint

    from srvau.training.checkpoints import prepare, run_fingerprint

    ckpts = tmp_path / "checkpoints"
    complete_checkpoint(ckpts / "checkpoint-3")
    p1, p2 = _params(params), _params(params, **{"sft.learning_rate": 0.5})
    f1 = run_fingerprint(p1, "sft", "m", "d")
    assert prepare(ckpts, f1, resume=True) is None  # no record of what made it: start over
    complete_checkpoint(ckpts / "checkpoint-3")
    assert prepare(ckpts, f1, resume=True).name == "checkpoint-3"
    assert run_fingerprint(_params(params, **{"sft.save_steps": 7}), "sft", "m", "d") == f1  # bookkeeping only
    assert run_fingerprint(p1, "sft", "m", "other data") != f1
    assert prepare(ckpts, run_fingerprint(p2, "sft", "m", "d"), resume=True) is None
    assert not list(ckpts.glob("checkpoint-*"))


def test_missing_columns_and_split_are_clear_errors(tmp_path):
    from srvau.training.sft import load_split

    with pytest.raises(FileNotFoundError, match="train"):
        load_split(tmp_path, "train")
    pd.DataFrame({"prompt": ["p"], "completion": ["c"]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(ValueError, match="frames_path"):
        load_split(tmp_path, "train")


# ----------------------------------------------------------------------------- the demo learns


def generate_traces(model_dir: Path, rows: list[dict], params, batch_size: int = 8, max_new_tokens: int = 160) -> list[str]:
    import torch

    from srvau.modeling import load_model, load_processor, vision_token_ids
    from srvau.modeling.inputs import processor_inputs, user_message
    from srvau.training.common import load_video

    proc = load_processor(model_dir)
    model = load_model(model_dir).eval()
    suppress = vision_token_ids(proc.tokenizer)
    outs: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        vids = [load_video(r["frames_path"], params) for r in chunk]
        texts = [
            proc.apply_chat_template(user_message(r["prompt"], r["system"]), add_generation_prompt=True, tokenize=False)
            for r in chunk
        ]
        inputs = processor_inputs(proc, texts, [v[0] for v in vids], [v[1] for v in vids], padding_side="left")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppress)
        new = gen[:, inputs["input_ids"].shape[1] :]
        outs += proc.batch_decode(new, skip_special_tokens=True)
    return outs


def reflective_share(traces: list[str]) -> float:
    return sum(parse_trace(t).reflective for t in traces) / len(traces)


@pytest.mark.slow
def test_demo_learns_reflection_format(tmp_path_factory):
    """Full demo data, default SFT settings from params.yaml: >= 90% well-formed traces on held-out prompts."""
    from srvau.config import load_params
    from srvau.data.synth import synthesize
    from srvau.modeling.tiny import build_tiny
    from srvau.training.sft import load_split, sft

    p = load_params()
    demo = tmp_path_factory.mktemp("demo-full")
    synthesize(demo, p.synth, p.seed)
    base = build_tiny(tmp_path_factory.mktemp("tiny-full"), p, sorted(demo.glob("*.csv")))
    ingest_dir = tmp_path_factory.mktemp("ingest-full")
    rocot = build_rocot(_ingest(demo, ingest_dir, p), ingest_dir, tmp_path_factory.mktemp("rocot-full"))
    held_out = [dict(r) for r in load_split(rocot, "test")]

    untrained = reflective_share(generate_traces(base, held_out, p))
    t0 = time.perf_counter()
    out = tmp_path_factory.mktemp("sft-full")
    metrics = sft(rocot, str(base), out, p)
    wall = time.perf_counter() - t0
    traces = generate_traces(out / "merged", held_out, p)
    share = reflective_share(traces)
    print(
        f"\nDEMO-LEARNS untrained={untrained:.3f} trained={share:.3f} n={len(held_out)} "
        f"steps={metrics['global_step']} sft_wall_s={wall:.1f} final_loss={metrics['final_loss']:.4f}"
    )
    assert untrained < 0.1
    assert share >= 0.9, traces[:3]


def test_cli_runs_the_stage_and_rejects_missing_data(rocot_dir, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from srvau.cli import app

    sets = [x for k, v in {**FAST, "sft.max_steps": 2}.items() for x in ("--set", f"{k}={v}")]
    out, metrics = tmp_path / "sft", tmp_path / "reports" / "sft.json"
    res = CliRunner().invoke(
        app,
        [*sets, "sft", "--rocot", str(rocot_dir), "--base-model", str(tiny_model_dir), "--out", str(out), "--metrics", str(metrics)],
    )
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)  # stdout carries the summary alone: the Trainer logs to stderr
    assert printed["global_step"] == 2 and json.loads(metrics.read_text()) == printed
    assert (out / "merged" / "model.safetensors").is_file()

    bad = CliRunner().invoke(app, ["sft", "--rocot", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "train.parquet" in bad.output


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_restores_the_weights(rocot_dir, tiny_model_dir, params, tmp_path, lora):
    """An interrupted run resumed from its checkpoint ends with the weights of an uninterrupted run.

    Regression: transformers 5.23 saves full checkpoints under the legacy key names but its Trainer
    resumes them without converting and non-strictly, so nothing was loaded and a resumed run
    silently restarted from the base weights (then merged garbage)."""
    import shutil

    from safetensors.torch import load_file

    from srvau.training.sft import sft

    p = _params(params, **{"sft.lora": lora, "sft.max_steps": 4, "sft.save_steps": 2, "sft.save_total_limit": None,
                           "sft.lr_scheduler_type": "constant", "sft.warmup_steps": 0})
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    sft(rocot_dir, str(tiny_model_dir), whole, p)
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")  # as if killed between step 2 and step 4
    m = sft(rocot_dir, str(tiny_model_dir), cut, p)
    assert m["resumed_from_step"] == 2 and m["global_step"] == 4
    a, b = load_file(str(whole / "merged" / "model.safetensors")), load_file(str(cut / "merged" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"resumed weights differ from the uninterrupted run by {worst}"


def test_rerunning_a_finished_run_exports_it_unchanged(rocot_dir, tiny_model_dir, params, tmp_path):
    """`dvc repro` re-runs the stage when an unrelated dependency changes: no extra training step."""
    from safetensors.torch import load_file

    from srvau.training.sft import sft

    p = _params(params, **{"sft.max_steps": 2, "sft.save_steps": 2})
    out = tmp_path / "sft"
    sft(rocot_dir, str(tiny_model_dir), out, p)
    before = load_file(str(out / "merged" / "model.safetensors"))
    m = sft(rocot_dir, str(tiny_model_dir), out, p)
    assert m["steps_this_run"] == 0 and m["global_step"] == 2
    after = load_file(str(out / "merged" / "model.safetensors"))
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-6

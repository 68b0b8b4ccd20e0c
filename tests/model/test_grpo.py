"""Video GRPO on the tiny Qwen2.5-VL: real mp4s (synth -> ingest frame cache -> RoCoT builder), the real
TRL GRPOTrainer subclass, real MLflow store (sqlite in the session temp folder, see conftest).

The prompts come from the real RoCoT builder (``srvau.cot.builder.build_rocot``, annotation teacher),
so the GRPO stage reads exactly the columns the pipeline writes.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Small and fast: 2 prompts x 2 generations per step, short completions.
FAST = {
    "grpo.per_device_train_batch_size": 4,
    "grpo.num_generations": 2,
    "grpo.max_completion_length": 12,
    "grpo.max_steps": 2,
    "grpo.save_steps": 1,
    "grpo.log_completions_every": 1,
    "grpo.learning_rate": 0.01,
}


@pytest.fixture(scope="module")
def gparams(params):
    from srvau.config import load_params

    return load_params(overrides={**{f"synth.{k}": v for k, v in params.synth.model_dump().items()}, **FAST})


@pytest.fixture(scope="module")
def rocot_dir(train_rocot, gparams) -> Path:
    return train_rocot(gparams)


@pytest.fixture(scope="module")
def grpo_rows(rocot_dir, gparams):
    from srvau.training.grpo import grpo_rows
    from srvau.training.sft import load_split

    return grpo_rows(load_split(rocot_dir, "train").to_list(), gparams.grpo, gparams)


def length_reward(completions, **_):
    """A reward with spread on random text, so every group has a non-zero advantage."""
    from srvau.training.grpo import completion_text

    return [len(completion_text(c)) / 50.0 for c in completions]


def make_trainer(model_dir, rows, gparams, tmp_path, model=None, peft_config=None, reward=length_reward,
                 paired_sampling=False, **overrides):
    from datasets import Dataset
    from trl import GRPOConfig

    from srvau.modeling import load_model, load_processor
    from srvau.training.common import load_video
    from srvau.training.grpo import VideoGRPOTrainer

    kw = dict(
        output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
        max_steps=2, learning_rate=1e-2, beta=0.04, loss_type="grpo", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=0, disable_tqdm=True, remove_unused_columns=False,
    )
    kw.update(overrides)
    return VideoGRPOTrainer(
        model=model if model is not None else load_model(model_dir, gparams.model),
        reward_funcs=[reward],
        args=GRPOConfig(**kw),
        train_dataset=Dataset.from_list(rows),
        processing_class=load_processor(model_dir, gparams.model),
        peft_config=peft_config,
        video_loader=functools.partial(load_video, params=gparams),
        paired_sampling=paired_sampling,
    )


def two_groups(rows):
    """A QA and a grounding prompt (different lengths: left padding is exercised), 2 generations each."""
    qa = next(r for r in rows if r["task"] == "qa")
    gr = next(r for r in rows if r["task"] == "grounding")
    return [qa, qa, gr, gr]


def plain_forward_logps(model, processor, row, completion_ids, params, temperature=1.0, with_mm=True, with_video=True):
    """Log-probs of ``completion_ids`` after ``row``'s prompt: one processor call, one model forward."""
    import torch

    from srvau.modeling.inputs import conversation, processor_inputs
    from srvau.training.common import load_video

    system = next(m["content"] for m in row["prompt"] if m["role"] == "system")
    user = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    text = processor.apply_chat_template(conversation(user, None, system), tokenize=False, add_generation_prompt=True)
    frames, meta = load_video(row["video"], params)
    enc = processor_inputs(processor, [text], [frames], [meta])
    prompt = enc["input_ids"][0]
    ids = torch.cat([prompt, completion_ids])[None]
    kwargs = {}
    if with_video:
        kwargs = {k: enc[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    if with_mm:
        kwargs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"][0], torch.zeros_like(completion_ids)])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits[0].float()
    p = prompt.numel()
    logps = torch.log_softmax(logits[p - 1 : -1] / temperature, dim=-1)
    return prompt, logps.gather(-1, completion_ids[:, None])[:, 0]


# ----------------------------------------------------------------------------- tests


def test_rows_are_prompts_with_video_and_ground_truth(grpo_rows, gparams):
    tasks = {r["task"] for r in grpo_rows}
    assert tasks == {"qa", "grounding", "classification"}  # description has no verifiable reward
    for r in grpo_rows:
        assert Path(r["video"]).is_file() and Path(r["video"]).is_absolute()
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert "completion" not in r and "first_answer" not in r  # the teacher's trace never reaches rewards
        assert r["answer"]


def test_grpo_asks_each_question_once_in_its_annotated_order(rocot_dir, grpo_rows, gparams):
    """SFT reads train QA in every option order (cot.qa_option_orders); GRPO samples each question once."""
    from srvau.training.sft import load_split

    train = load_split(rocot_dir, "train").to_list()
    assert gparams.cot.qa_option_orders > 1 and any("@" in r["sample_id"] for r in train)
    qa = [r for r in grpo_rows if r["task"] == "qa"]
    assert sorted(r["sample_id"] for r in qa) == sorted(r["sample_id"] for r in train if r["task"] == "qa" and "@" not in r["sample_id"])


def test_video_logprobs_match_a_plain_forward(tiny_model_dir, grpo_rows, gparams, tmp_path):
    """Rollout -> reference log-probs equal a plain processor->model forward; the loss forward sees the
    same inputs (KL against the identical reference is 0); and dropping the video or mm_token_type_ids
    changes the log-probs by far more than the tolerance (what stock GRPOTrainer does)."""
    import torch

    trainer = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, temperature=0.7)
    trainer.model.train()
    inputs = two_groups(grpo_rows)
    out = trainer._generate_and_score_completions(inputs)
    assert out["prompt_mask"].min() == 0, "prompts of different lengths must be left padded"
    assert len(out["pixel_values_videos"]) == len(inputs)

    worst, drop_video, drop_mm = 0.0, 0.0, 0.0
    for i, row in enumerate(inputs):
        comp = out["completion_ids"][i][out["completion_mask"][i].bool()]
        prompt, ref = plain_forward_logps(trainer.model, trainer.processing_class, row, comp, gparams, 0.7)
        assert prompt.tolist() == out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
        got = out["ref_per_token_logps"][i, : comp.numel()]
        worst = max(worst, (got - ref).abs().max().item())
        _, no_video = plain_forward_logps(trainer.model, trainer.processing_class, row, comp, gparams, 0.7, with_video=False)
        _, no_mm = plain_forward_logps(trainer.model, trainer.processing_class, row, comp, gparams, 0.7, with_mm=False)
        drop_video = max(drop_video, (no_video - ref).abs().max().item())
        drop_mm = max(drop_mm, (no_mm - ref).abs().max().item())
    tol = 1e-4
    assert worst < tol
    # The tolerance separates right from wrong inputs: without the video (stock GRPOTrainer) or without
    # mm_token_type_ids (1-D positions) the log-probs move by far more than it.
    assert drop_video > 10 * tol and drop_mm > 10 * tol, (drop_video, drop_mm)

    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() before each step
    loss = trainer.compute_loss(trainer.model, out)
    assert torch.isfinite(loss)
    assert trainer._metrics["train"]["kl"][-1] < 1e-8  # policy forward == reference forward


def test_generation_never_emits_vision_placeholders(tiny_model_dir, grpo_rows, gparams, tmp_path):
    """A model rigged to prefer the vision placeholders: TRL's own suppression (image pad only) lets
    them through; the trainer's rollouts never contain one."""
    import torch

    from srvau.modeling import load_model, vision_token_ids
    from srvau.modeling.inputs import conversation, processor_inputs
    from srvau.training.common import load_video

    model = load_model(tiny_model_dir, gparams.model)
    trainer_probe = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, model=model, beta=0.0)
    vision = vision_token_ids(trainer_probe._tokenizer)
    with torch.no_grad():
        w = model.lm_head.weight
        g = torch.Generator().manual_seed(0)
        big = 30.0 * torch.randn(len(vision), w.shape[1], generator=g)
        w.zero_()
        w[vision] = big

    row = grpo_rows[0]
    proc = trainer_probe.processing_class
    system = row["prompt"][0]["content"]
    text = proc.apply_chat_template(conversation(row["prompt"][1]["content"], None, system), tokenize=False, add_generation_prompt=True)
    frames, meta = load_video(row["video"], gparams)
    enc = processor_inputs(proc, [text], [frames], [meta])
    torch.manual_seed(0)
    with torch.no_grad():
        stock = model.generate(**enc, do_sample=True, max_new_tokens=12, suppress_tokens=[model.config.image_token_id])
    assert set(stock[0, enc["input_ids"].shape[1] :].tolist()) & set(vision), "control: the rigged model must emit placeholders"

    out = trainer_probe._generate_and_score_completions(two_groups(grpo_rows))
    emitted = set(out["completion_ids"][out["completion_mask"].bool()].tolist())
    assert emitted and not emitted & set(vision)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_changes_every_trainable_parameter(mode, tiny_model_dir, grpo_rows, gparams, tmp_path):
    """Two real steps. Full fine-tuning keeps the vision tower trainable: the ViT moves only when the
    video reaches the loss forward. LoRA (language model only, lm_head fully trained): every adapter
    matrix moves (lora_A needs the second step, once lora_B is non-zero)."""
    import torch

    from srvau.modeling import load_model
    from srvau.training.common import lora_config

    peft = None
    if mode == "lora":
        peft = lora_config(load_model(tiny_model_dir, gparams.model), r=4, alpha=8, dropout=0.0, train_lm_head=True)
    trainer = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, max_steps=2, peft_config=peft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    if mode == "full":
        assert any(".visual." in f".{n}" for n in before)
    else:
        assert any("lora_A" in n for n in before) and not any("visual" in n for n in before)
    trainer.train()
    stuck = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(before[n], p.detach())]
    assert not stuck, f"{len(stuck)} of {len(before)} trainable parameters did not change: {stuck[:5]}"
    assert all(h.get("kl") is not None for h in trainer.state.log_history if "loss" in h)


def interleaving_input():
    """Unbalanced tasks, as a dataset whose grounding is only annotated on some videos would have."""
    counts = {"qa": 30, "grounding": 12, "classification": 18}
    return [{"task": t, "sample_id": f"{t}{i}"} for t, n in counts.items() for i in range(n)]


def test_interleaved_prompts_carry_the_tasks_in_proportion_in_every_stretch():
    from collections import Counter

    from srvau.training.grpo import interleave_tasks

    rows = interleaving_input()
    order = interleave_tasks(rows, seed=0)
    assert sorted(r["sample_id"] for r in order) == sorted(r["sample_id"] for r in rows)  # a permutation
    share = {t: n / len(rows) for t, n in Counter(r["task"] for r in rows).items()}
    for width in (5, 10, 15):  # every window of consecutive prompts, e.g. a quarter of a short run
        for start in range(len(order) - width + 1):
            seen = Counter(r["task"] for r in order[start : start + width])
            for task, p in share.items():
                assert abs(seen[task] - p * width) <= 2, (width, start, task, seen)


def test_interleaving_is_seeded_and_shuffles_within_each_task():
    from srvau.training.grpo import interleave_tasks

    rows = interleaving_input()
    ids = lambda seed: [r["sample_id"] for r in interleave_tasks(rows, seed)]  # noqa: E731
    assert ids(3) == ids(3) and ids(3) != ids(4)
    qa = [i for i in ids(3) if i.startswith("qa")]
    assert qa != sorted(qa, key=lambda i: int(i[2:]))  # not the input's order


def test_stratified_prompts_carry_each_tasks_answers_in_proportion_in_every_stretch():
    """``task_order: stratified``: still interleaved by task, and within a task every stretch sees the
    letters (QA) and the classes (classification, grounding by its video's class) in proportion, where a
    plain shuffle can bunch them (the same rows, interleaved only, miss by more)."""
    from collections import Counter

    from srvau.training.grpo import answer_stratum, interleave_tasks

    classes = ["Fire", "Fire", "Fire", "Normal", "Fighting", "Explosion"]  # unequal, as real splits are
    rows = [{"task": t, "sample_id": f"{t}{i}", "answer": ("ABCD"[i % 4] if t == "qa" else "Anomaly" if t == "grounding"
                                                           else classes[i % 6]), "anomaly_class": classes[i % 6]}
            for t, n in {"qa": 48, "grounding": 24, "classification": 36}.items() for i in range(n)]
    assert answer_stratum(rows[1]) == "B" and answer_stratum(rows[-1]) == "Explosion"
    assert answer_stratum(next(r for r in rows if r["task"] == "grounding")) == "Fire"

    def worst_miss(order) -> float:
        miss = 0.0
        for task in ("qa", "grounding", "classification"):
            seq = [answer_stratum(r) for r in order if r["task"] == task]
            share = {k: n / len(seq) for k, n in Counter(seq).items()}
            for width in (6, 12):
                for start in range(len(seq) - width + 1):
                    seen = Counter(seq[start: start + width])
                    miss = max(miss, *(abs(seen[k] - p * width) for k, p in share.items()))
        return miss

    order = interleave_tasks(rows, seed=0, by_answer=True)
    assert sorted(r["sample_id"] for r in order) == sorted(r["sample_id"] for r in rows)  # a permutation
    assert [r["task"] for r in order] == [r["task"] for r in interleave_tasks(rows, seed=0)]  # same task pattern
    assert worst_miss(order) <= 1.5
    assert max(worst_miss(interleave_tasks(rows, seed=s)) for s in range(5)) > 2
    ids = lambda seed: [r["sample_id"] for r in interleave_tasks(rows, seed, by_answer=True)]  # noqa: E731
    assert ids(3) == ids(3) and ids(3) != ids(4)


def test_mirrored_prompts_give_the_first_and_last_quarter_the_same_prompts(rocot_dir, gparams):
    """``grpo.mirror_prompts``: the run's prompts are the order's first half of steps, forwards then back,
    so every last stretch of steps is the first stretch reversed (row by row; step by step under
    ``paired_sampling``, each step's prompts in their own order); the prompts per step follow the launch's
    world size."""
    from srvau.training.grpo import mirror, prompts_per_run, training_rows

    cfg = gparams.grpo.model_copy(update={"task_order": "stratified", "mirror_prompts": True,
                                          "max_steps": 3, "per_device_train_batch_size": 4, "num_generations": 2})
    params = gparams.model_copy(update={"grpo": cfg})
    assert prompts_per_run(cfg, 1) == 6 and prompts_per_run(cfg, 2) == 12
    assert prompts_per_run(cfg.model_copy(update={"gradient_accumulation_steps": 2}), 1) == 12
    plain = [r["sample_id"] for r in training_rows(rocot_dir, gparams.model_copy(
        update={"grpo": cfg.model_copy(update={"mirror_prompts": False})}))]
    for world, paired in ((1, False), (2, False), (1, True), (2, True)):
        run = params.model_copy(update={"grpo": cfg.model_copy(update={"paired_sampling": paired})})
        ids = [r["sample_id"] for r in training_rows(rocot_dir, run, world_size=world)]
        assert len(ids) == prompts_per_run(cfg, world)
        per_step = len(ids) // cfg.max_steps
        steps = [ids[i:i + per_step] for i in range(0, len(ids), per_step)]
        assert ids[: 2 * per_step] == plain[: 2 * per_step]
        back = (lambda first: first[::-1]) if paired else (lambda first: [s[::-1] for s in first[::-1]])
        assert all(steps[-k:] == back(steps[:k]) for k in range(1, cfg.max_steps // 2 + 1))  # odd: a middle step
    assert mirror(list("abcd"), 4, 2) == list("abcddcba") and mirror(list("abcd"), 4, 2, keep_step_order=True) == list("abcdcdab")
    assert mirror(list("abcdef"), 3, 2) == list("abcdba") and mirror(list("abc"), 5, 1) == list("abcba")
    with pytest.raises(ValueError, match="needs 4 distinct prompts"):
        mirror(list("abc"), 4, 2)
    with pytest.raises(ValueError, match="fixed prompt order"):
        cfg.model_validate({**cfg.model_dump(), "task_order": "shuffled"})


@pytest.mark.parametrize("paired", [True, False])
def test_paired_sampling_gives_mirrored_steps_the_same_draw(paired, tiny_model_dir, grpo_rows, gparams, tmp_path):
    """``grpo.paired_sampling``: steps k and max_steps - 1 - k, which mirrored prompts give the same
    prompts, sample from the same random numbers, so a policy held still (learning rate 1e-30: no output
    moves, tests/code/test_bench.py) samples the same completions there and the reward's trend is zero;
    unpaired, the same prompts get another draw."""
    from srvau.contract.trace import completion_text
    from srvau.training.grpo import mirror

    drawn = []

    def recording(completions, **_):
        drawn.append([completion_text(c) for c in completions])
        return [len(t) / 50.0 for t in drawn[-1]]

    rows = mirror(grpo_rows, 4, 2, keep_step_order=True)  # 4 steps of 2 prompts x 2 generations
    trainer = make_trainer(tiny_model_dir, rows, gparams, tmp_path, reward=recording, paired_sampling=paired,
                           max_steps=4, learning_rate=1e-30, shuffle_dataset=False, temperature=1.0)
    trainer.train()
    assert len(drawn) == 4 and drawn[0] != drawn[1]
    assert (drawn[0] == drawn[3] and drawn[1] == drawn[2]) is paired
    seeds = []
    for step in range(4):
        trainer.state.global_step = step
        seeds.append(trainer.sampling_seed())
    if paired:  # steps 0 and 3, 1 and 2
        assert seeds == [seeds[0], seeds[1], seeds[1], seeds[0]] and seeds[0] != seeds[1]
    else:
        assert seeds == [None] * 4
    with pytest.raises(ValueError, match="paired_sampling pairs"):
        gparams.grpo.model_validate({**gparams.grpo.model_dump(), "paired_sampling": True, "mirror_prompts": False})


def test_task_order_decides_whether_trl_shuffles(gparams, tmp_path):
    """"shuffled" is TRL's own shuffle; interleaved and stratified prompts (the demo's default) are fed
    in their order (TRL's shuffle would undo it)."""
    from srvau.training.grpo import grpo_config

    assert gparams.grpo.task_order == "stratified"
    assert grpo_config(gparams.grpo, gparams, tmp_path, [1.0]).shuffle_dataset is False
    cfg = gparams.grpo.model_copy(update={"task_order": "shuffled"})
    assert grpo_config(cfg, gparams, tmp_path, [1.0]).shuffle_dataset is True
    cfg = gparams.grpo.model_copy(update={"task_order": "stratified"})
    assert grpo_config(cfg, gparams, tmp_path, [1.0]).shuffle_dataset is False


def test_stage_lora_saves_adapter_merged_model_and_tracks_to_mlflow(tiny_model_dir, rocot_dir, gparams, tmp_path):
    import mlflow

    from srvau.modeling import load_model
    from srvau.tracking.runs import stage_run
    from srvau.training.grpo import grpo

    out = tmp_path / "grpo"
    # stratified, the demo's default, named here because the last assertion reads that order
    gparams = gparams.model_copy(update={"grpo": gparams.grpo.model_copy(update={"task_order": "stratified"})})
    with stage_run(gparams, "grpo"):  # the CLI opens the stage's run; grpo() logs into it
        summary = grpo(rocot_dir, str(tiny_model_dir), out, gparams)
    assert summary["global_step"] == 2 and summary["resumed_from"] is None
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = out / "merged"
    assert any(merged.glob("*.safetensors")) and (merged / "processor_config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["merged"] == str(merged)
    tuned = load_model(merged, gparams.model)  # a plain Qwen2.5-VL again (adapter folded in)
    assert type(tuned).__name__ == "Qwen2_5_VLForConditionalGeneration"

    client = mlflow.tracking.MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name(gparams.tracking.experiment).experiment_id],
        "tags.`srvau.stage` = 'grpo'", order_by=["attributes.start_time DESC"], max_results=1,
    )[0]
    keys = set(run.data.metrics)
    for key in ("grpo.loss", "grpo.kl", "grpo.learning_rate", "grpo.completions/mean_length",
                "grpo.rewards/format/mean", "grpo.rewards/length/mean", "grpo.global_step"):
        assert key in keys, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "grpo.loss")]
    assert steps == [1, 2]
    tables = [a.path for a in client.list_artifacts(run.info.run_id, "grpo/completions")]
    assert tables == ["grpo/completions/step_000001.json", "grpo/completions/step_000002.json"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, tables[0], str(tmp_path))).read_text())
    cols = table["columns"]
    assert {"prompt", "completion", "sample_id", "task", "reward/format", "advantage"} <= set(cols)
    assert len(table["data"]) == 4
    # the steps train on the stratified order (two prompts per step), which on these rows starts otherwise
    # than the tasks-only interleave, there and back (grpo.mirror_prompts, the demo's default): the
    # second step revisits the first step's two prompts
    from srvau.training.grpo import grpo_rows, interleave_tasks
    from srvau.training.sft import load_split

    assert gparams.grpo.mirror_prompts
    rows = grpo_rows(load_split(rocot_dir, "train").to_list(), gparams.grpo, gparams)
    order = [r["sample_id"] for r in interleave_tasks(rows, gparams.seed, by_answer=True)]
    assert order[:2] != [r["sample_id"] for r in interleave_tasks(rows, gparams.seed)][:2]
    for path in tables:
        t = json.loads(Path(client.download_artifacts(run.info.run_id, path, str(tmp_path))).read_text())
        assert {row[t["columns"].index("sample_id")] for row in t["data"]} == set(order[:2])
    assert summary["prompts"] == 4


def test_difficulty_filter_zeroes_advantages_of_trivial_groups(tiny_model_dir, grpo_rows, gparams, tmp_path):
    """SRPO's filter: a group whose accuracy is outside [low, high] keeps no policy-gradient signal."""
    from srvau.training.grpo import DifficultyFilter

    trainer = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, beta=0.0)
    inputs = two_groups(grpo_rows)
    # Mark the QA group all-correct (trivial) and the grounding group half-correct (kept).
    trainer.difficulty = DifficultyFilter(lambda texts, cols: [t == "qa" or i % 2 == 0 for i, t in enumerate(cols["task"])])
    out = trainer._generate_and_score_completions(inputs)
    adv = out["advantages"]
    assert adv[:2].abs().max() == 0
    assert adv[2:].abs().max() > 0
    assert trainer._metrics["train" if trainer.model.training else "eval"]["difficulty/kept_groups"][-1] == 0.5


def test_difficulty_filter_leaves_the_kept_groups_loss_unchanged(tiny_model_dir, grpo_rows, gparams, tmp_path):
    """Filtered groups leave the loss: with the filter, the loss equals the loss of the kept rows alone
    (KL on, so a filtered row left in the average would show). Zeroing their advantages only (the first
    version) kept them in the denominator and kept their KL term: the kept groups' gradient shrank."""
    import torch

    from srvau.training.grpo import DifficultyFilter

    trainer = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, beta=0.5)
    trainer.difficulty = DifficultyFilter(lambda texts, cols: [t == "qa" or i % 2 == 0 for i, t in enumerate(cols["task"])])
    out = trainer._generate_and_score_completions(two_groups(grpo_rows))
    assert out["difficulty_keep"].tolist() == [0.0, 0.0, 1.0, 1.0]
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy off the reference, so the KL term and the ratios are not trivial
        for w in trainer.model.parameters():
            w.add_(0.05 * torch.randn_like(w))
    filtered = trainer.compute_loss(trainer.model, dict(out))

    def rows(v):  # per-row tensors and per-row lists (the video fields) of the batch
        return v[2:] if (torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == 4) or (isinstance(v, list) and len(v) == 4) else v

    kept_alone = trainer.compute_loss(trainer.model, {k: rows(v) for k, v in out.items() if k != "difficulty_keep"})
    assert abs(kept_alone.item()) > 1e-3  # a real loss, not a zero that any scaling preserves
    assert torch.isclose(filtered, kept_alone, rtol=1e-5, atol=1e-7), (filtered.item(), kept_alone.item())


def test_difficulty_filter_never_filters_grounding():
    """Grounding's reward is dense (IoU): a group with every answer below the IoU threshold still ranks its
    completions, so the filter has no say over it."""
    texts = ["<think>a</think><answer>Anomaly</answer><glue>[9.0, 9.5]</glue>"] * 2 + ["<answer>B</answer>"] * 2
    cols = {"task": ["grounding", "grounding", "qa", "qa"], "answer": ["Anomaly", "Anomaly", "A", "A"],
            "gt_start": [1.0, 1.0, None, None], "gt_end": [3.0, 3.0, None, None], "interval_kind": ["anomaly", "anomaly", None, None]}
    from srvau.training.grpo import difficulty_correctness

    assert difficulty_correctness(texts, cols) == [None, None, False, False]


def test_overlong_video_prompt_is_a_clear_error(tiny_model_dir, grpo_rows, gparams, tmp_path):
    trainer = make_trainer(tiny_model_dir, grpo_rows, gparams, tmp_path, beta=0.0)
    trainer.max_prompt_length = 32
    with pytest.raises(ValueError, match="max_prompt_length"):
        trainer._generate_and_score_completions(two_groups(grpo_rows))


def test_cli_missing_rocot_is_a_clear_error(tmp_path):
    import typer
    from typer.testing import CliRunner

    from srvau.cli.train import grpo_cmd

    app = typer.Typer()
    app.command()(grpo_cmd)
    result = CliRunner().invoke(app, ["--rocot", str(tmp_path)])
    assert result.exit_code == 2
    assert "train.parquet" in result.output


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_reward_scaling_reaches_trl(scale, gparams, tmp_path):
    """``grpo.scale_rewards`` is TRL's option under its own name: per-group std (GRPO's, the default), the
    batch's std, or none (Dr. GRPO)."""
    from srvau.training.grpo import grpo_config

    cfg = gparams.grpo.model_copy(update={"scale_rewards": scale})
    assert grpo_config(cfg, gparams, tmp_path, [1.0]).scale_rewards == scale
    assert gparams.grpo.scale_rewards == "group"


def test_paper_recipe_loads():
    from srvau.config import load_params

    p = load_params(recipe="paper-3b")
    assert p.model.base == "models/Qwen2.5-VL-3B-Instruct"
    assert p.model.torch_dtype == "bfloat16" and p.model.attn_implementation == "flash_attention_2"
    assert p.grpo.lora is False and p.grpo.train_lm_head is False  # pretrained model: full FT as VAU-R1
    assert p.grpo.max_prompt_length is None or p.grpo.max_prompt_length >= 4096
    assert (p.grpo.per_device_train_batch_size * p.grpo.gradient_accumulation_steps) % p.grpo.num_generations == 0
    names = {Path(a).name for a in p.ingest.annotations}
    assert names <= {"train.csv", "ucf_subset_train.csv", "ucf_subset_val.csv", "val.csv", "test_msad.csv",
                     "test_ucf_crime.csv", "test_ecva.csv"}
    assert all(a.startswith("data/vau-bench/") for a in p.ingest.annotations)
    assert p.tracking.uri.startswith("http")



@pytest.mark.parametrize("name,kind,stage", [("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_accelerate_configs_parse(name, kind, stage):
    """accelerate's own loader reads the launch configs (what `accelerate launch --config_file` does)."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind and cfg.mixed_precision == "bf16"
    if stage:
        assert cfg.deepspeed_config["zero_stage"] == stage


# ----------------------------------------------------------------------------- resume after a kill

RUN = """
import json, sys
from pathlib import Path
from srvau.config import load_params
from srvau.training.grpo import grpo
summary = grpo(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), load_params(sys.argv[1]))
print("SUMMARY " + json.dumps(summary), flush=True)
"""


@pytest.mark.slow
def test_resume_after_kill(tiny_model_dir, rocot_dir, gparams, tmp_path):
    """A real GRPO run in a subprocess, SIGKILLed after its first checkpoint, then started again:
    it resumes from the newest checkpoint and finishes."""
    import yaml

    from srvau.config import load_params

    steps = 12
    p = load_params(overrides={**{f"synth.{k}": v for k, v in gparams.synth.model_dump().items()}, **FAST,
                               "grpo.max_steps": steps, "grpo.save_steps": 2, "grpo.tasks": ["qa"]})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(p.dump()))
    out = tmp_path / "grpo"
    cmd = [sys.executable, "-c", RUN, str(params_file), str(rocot_dir), str(tiny_model_dir), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.1)
    assert first.poll() is None, "the first run ended before it could be killed:\n" + first.stdout.read()[-3000:]
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads(next(line for line in second.stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    assert summary["resumed_from"] and Path(summary["resumed_from"]).name.startswith("checkpoint-")
    assert summary["resumed_from_step"] >= 2
    assert summary["global_step"] == steps
    assert summary["steps_this_run"] == steps - summary["resumed_from_step"]
    assert any((out / "merged").glob("*.safetensors"))


def test_resume_restores_full_weights(tiny_model_dir, rocot_dir, gparams, tmp_path):
    """Full fine-tuning (the paper recipe's GRPO) resumed mid-run ends where an uninterrupted run ends.

    Guards the path that broke SFT resume under transformers 5.23 (see
    srvau.training.checkpoints.restore_full_weights); GRPO's own checkpoints resumed correctly already."""
    import shutil

    from safetensors.torch import load_file

    from srvau.config import load_params
    from srvau.training.grpo import grpo

    over = {f"synth.{k}": v for k, v in gparams.synth.model_dump().items()}
    over.update({**FAST, "grpo.lora": False, "grpo.max_steps": 2, "grpo.save_steps": 1, "grpo.save_total_limit": None})
    p = load_params(overrides=over)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    grpo(rocot_dir, str(tiny_model_dir), whole, p)
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    shutil.rmtree(cut / "checkpoints" / "checkpoint-2")
    summary = grpo(rocot_dir, str(tiny_model_dir), cut, p)
    assert summary["resumed_from_step"] == 1 and summary["global_step"] == 2
    a, b = load_file(str(whole / "merged" / "model.safetensors")), load_file(str(cut / "merged" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    resumed_gap = max((a[k] - b[k]).abs().max().item() for k in a)
    trained_gap = max((a[k] - base[k]).abs().max().item() for k in a if k in base)
    assert resumed_gap < 1e-4 * max(1.0, trained_gap), (resumed_gap, trained_gap)

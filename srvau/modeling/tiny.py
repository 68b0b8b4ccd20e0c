"""The offline demo model: a tiny Qwen2.5-VL built from arguments, its language model drilled to read options.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on the demo texts with the
Qwen2 pre-tokeniser, wrapped in the real ``Qwen2Tokenizer``; the processor is the real
``Qwen2_5_VLProcessor``; the model is the real ``Qwen2_5_VLForConditionalGeneration``. It is saved like
any Hugging Face checkpoint, so every later stage loads it through the same code as Qwen2.5-VL-3B.

Departures from a Hub checkpoint:
- the reflection tags are added as single tokens. A 1M-parameter model learns the trace structure far
  faster when ``<reflection>`` is one token instead of five; for the Hub models we leave the vocabulary
  alone (see ``srvau.modeling.loading``), where the tags tokenise fine.
- before it is saved, the language model's attention and output layer practise reading option lists
  (``reading_drills``), text only.
  A pretrained base can find the option that names something and read its letter; a random 2-layer
  model learns that only after a few hundred steps of practice, far more QA samples than the demo has
  (docs/demo-results.md). The drills never see a video, a correct option or a label.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

from srvau.compat import ensure_torchvision
from srvau.config import Params, TinyModelConfig, VideoConfig
from srvau.modeling.drills import DrillTokens, drill_batch, drill_words, drillable
from srvau.progress import progress

log = logging.getLogger(__name__)

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REFLECTION_TAGS = [f"<{t}>" for t in ("think", "answer", "glue", "reflection")] + [
    f"</{t}>" for t in ("think", "answer", "glue", "reflection")
]

# Qwen2.5-VL's chat template, reduced to what we use, with {% generation %} markers around the
# assistant turn so `return_assistant_tokens_mask=True` masks the prompt out of the SFT loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{{ content['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE over ``texts`` with the Qwen2 pre-tokeniser, as a ``Qwen2Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Start from the real Qwen2 tokenizer's pre-tokeniser so words split exactly as in Qwen2.5-VL.
    reference = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    bpe.decoder = decoders.ByteLevel()
    specials = CHAT_TOKENS + VISION_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REFLECTION_TAGS),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    state = json.loads(bpe.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["model"]["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        extra_special_tokens=specials,
    )
    tok.add_tokens(REFLECTION_TAGS, special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tokenizer, video: VideoConfig):
    """The real Qwen2.5-VL processor; pixel bounds follow our sampling policy (srvau.video.sampling)."""
    ensure_torchvision()
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    bounds = {"shortest_edge": 28 * 28, "longest_edge": video.max_pixels_per_frame}
    image_processor = Qwen2VLImageProcessor(size=bounds, patch_size=14, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(
        size=bounds,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        do_sample_frames=False,  # frames are sampled once, by srvau.video.sampling
        cap_pixels_per_frame=True,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, cfg: TinyModelConfig, seed: int):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = cfg.hidden_size // cfg.num_attention_heads
    half = head_dim // 2
    # M-RoPE splits head_dim/2 rotary pairs over (time, height, width); Qwen uses 1:1.5:1.5.
    t = half // 4
    hw = (half - t) // 2
    mrope = [t, hw, half - t - hw]
    ids = {t_: tokenizer.convert_tokens_to_ids(t_) for t_ in CHAT_TOKENS + VISION_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_hidden_size * 2,
            num_heads=cfg.vision_num_heads,
            out_hidden_size=cfg.hidden_size,
            fullatt_block_indexes=[cfg.vision_depth - 1],
            window_size=112,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model


def corpus_from_csvs(csvs: Iterable[Path]) -> list[str]:
    """Every text field of VAU-Bench-format CSVs: what the tokenizer must cover."""
    import pandas as pd

    from srvau.contract.prompts import qa_row, task_prompt
    from srvau.contract.vocab import CLASSES

    texts: list[str] = list(CLASSES)
    for path in csvs:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for col in df.columns:
            if col not in ("Start Time", "End Time"):
                texts.extend(df[col].tolist())
        # the QA prompt as the model reads it, so an option's words split there as they do in a trace
        texts += [task_prompt("qa", qa_row(q, options))
                  for q, options in option_lists_from_csvs([path])]
    # Times, letters and the task vocabulary appear in prompts/answers even if absent from CSVs.
    texts += [f"[{a}.{b}, {a + 1}.{b}]" for a in range(100) for b in range(10)]
    texts += ["A B C D", "Anomaly Normal", "The anomaly happens between seconds", "Options: (A) (B) (C) (D)"]
    return texts


def option_lists_from_csvs(csvs: Iterable[Path]) -> list[tuple[str, list[str]]]:
    """(question, its four options) of every row with a QA block, read by the VAU-Bench importer (so
    ``-1`` QA fields and rejected rows are left out): the drills' reading material. Which option is
    correct is never used."""
    from srvau.contract.prompts import OPTION_FIELDS
    from srvau.data.vau_bench import read_vau_bench

    lists = []
    for path in csvs:
        rows = read_vau_bench(path, split="train").rows  # the split only labels rows; nothing reads it
        if len(rows):
            for r in rows[rows["has_qa"]].to_dict("records"):
                lists.append((r["question"], [r[k] for k in OPTION_FIELDS]))
    return lists


def is_drilled(name: str) -> bool:
    """The parameters the drills train: the language model's attention and its output layer. The look-up
    is attention's work; training the embeddings and MLPs too left the model slower to learn from video
    afterwards (val classification 62.5 vs 87.5, docs/demo-results.md)."""
    return ".visual." not in f".{name}" and (".self_attn." in name or name.startswith("lm_head."))


@contextlib.contextmanager
def _gradients_only_for(model, trains: Callable[[str], bool]) -> Iterator[None]:
    """Only the parameters ``trains`` names require a gradient inside the block; the flags come back after,
    on error too. Backward then skips the other weights' gradients: the same updates bit for bit, ~14 %
    less time per drill step (bench/drills.py)."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(trains(name))
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def reading_drills(model, tokenizer, lists: list[tuple[str, list[str]]], words: list[str], steps: int, seed: int,
                   target: float = 1.0, check_every: int = 200, batch_size: int = 32, learning_rate: float = 1e-3,
                   weight_decay: float = 0.1, warmup_steps: int = 120) -> dict:
    """Train the language model's attention and output layer (``is_drilled``) to find the option a key word
    names and answer with its letter, for at most ``steps`` steps: every ``check_every`` steps the
    accuracy on 256 held-out drills (two letters each; chance is 25%) is measured, and the drills stop
    once it reaches ``target``. The look-up forms at a seed-dependent step (400-2000, docs/demo-results.md),
    so a fixed step count leaves some bases short of it. The accuracy reported after is measured on
    another 256 drills than the ones the stopping rule reads."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    tokens = DrillTokens(tokenizer)  # prompts rendered and tokenised once

    def batch(gen, n):
        return drill_batch(tokenizer, lists, words, gen, n, tokens)

    def accuracy(data) -> float:
        model.eval()
        ok = n = 0
        with torch.no_grad():
            for b in data:
                pred = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
                tgt = b["labels"][:, 1:]
                sel = tgt != -100
                ok += int((pred[sel] == tgt[sel]).sum())
                n += int(sel.sum())
        model.train()
        return ok / max(n, 1)

    if steps <= 0:
        return {"steps": 0}
    if not drillable(tokenizer, lists, words, seed):
        log.warning("reading drills skipped: no option list with four distinct key words")
        return {"steps": 0}
    stop_rng, report_rng = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    stopping = [batch(stop_rng, 64) for _ in range(4)]
    reporting = [batch(report_rng, 64) for _ in range(4)]
    before = accuracy(reporting)
    params = [p for name, p in model.named_parameters() if is_drilled(name)]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    # A fixed warm-up, not a share of ``steps``: the step count is only a cap now.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps))
    curve: list[list[float]] = []
    done = 0
    model.train()
    with _gradients_only_for(model, is_drilled):
        for step in progress(range(steps), desc="reading drills", total=steps):
            model(**batch(rng, batch_size)).loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if done % check_every == 0 or done == steps:
                curve.append([done, accuracy(stopping)])
                log.info("reading drills: held-out look-up %.3f after %d steps (stops at %.2f)", curve[-1][1], done, target)
                if curve[-1][1] >= target:
                    break
    model.eval()
    after = accuracy(reporting)
    if curve[-1][1] < target:
        log.warning("reading drills: the held-out look-up is %.3f after all %d steps, short of %.2f: QA may stay "
                    "near chance (raise model.tiny.reading_drill_steps)", curve[-1][1], steps, target)
    log.info("reading drills: %d of at most %d steps, look-up accuracy %.2f -> %.2f (chance 0.25, target %.2f)",
             done, steps, before, after, target)
    return {"steps": done, "max_steps": steps, "target": target, "reached_target": curve[-1][1] >= target,
            "curve": curve, "warmup_steps": warmup_steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "weight_decay": weight_decay, "held_out_accuracy_before": before, "held_out_accuracy_after": after}


def build_tiny(out_dir: Path, params: Params, corpus_csvs: Iterable[Path]) -> Path:
    """Build tokenizer + processor + model, let the model practise reading option lists, and save them
    (safetensors) to ``out_dir``."""
    corpus_csvs = list(corpus_csvs)
    corpus = corpus_from_csvs(corpus_csvs)
    tokenizer = train_tokenizer(corpus, params.model.tiny.vocab_size)
    processor = build_processor(tokenizer, params.video)
    model = build_model(tokenizer, params.model.tiny, params.seed)
    drills = reading_drills(model, tokenizer, option_lists_from_csvs(corpus_csvs), drill_words(corpus),
                            params.model.tiny.reading_drill_steps, params.seed,
                            target=params.model.tiny.reading_drill_target)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reading_drills.json").write_text(json.dumps(drills, indent=2) + "\n")
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny Qwen2.5-VL: %.2f M parameters, vocab %d -> %s", n / 1e6, len(tokenizer), out_dir)
    return out_dir

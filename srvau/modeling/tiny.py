"""The offline demo model: a tiny, randomly initialised Qwen2.5-VL built from arguments.

Nothing is downloaded. The tokenizer is a byte-level BPE trained here on the demo texts with the
Qwen2 pre-tokeniser, wrapped in the real ``Qwen2Tokenizer``; the processor is the real
``Qwen2_5_VLProcessor``; the model is the real ``Qwen2_5_VLForConditionalGeneration``. It is saved like
any Hugging Face checkpoint, so every later stage loads it through the same code as Qwen2.5-VL-3B.

Departure from a Hub checkpoint: the reflection tags are added as single tokens. A 1M-parameter model
learns the trace structure far faster when ``<reflection>`` is one token instead of five; for the Hub
models we leave the vocabulary alone (see ``srvau.modeling.loading``), where the tags tokenise fine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from srvau.compat import ensure_torchvision
from srvau.config import Params, TinyModelConfig, VideoConfig

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

    from srvau.contract.vocab import CLASSES

    texts: list[str] = list(CLASSES)
    for path in csvs:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        for col in df.columns:
            if col not in ("Start Time", "End Time"):
                texts.extend(df[col].tolist())
    # Times, letters and the task vocabulary appear in prompts/answers even if absent from CSVs.
    texts += [f"[{a}.{b}, {a + 1}.{b}]" for a in range(100) for b in range(10)]
    texts += ["A B C D", "Anomaly Normal", "The anomaly happens between seconds", "Options: (A) (B) (C) (D)"]
    return texts


def build_tiny(out_dir: Path, params: Params, corpus_csvs: Iterable[Path]) -> Path:
    """Build tokenizer + processor + model and save them (safetensors) to ``out_dir``."""
    tokenizer = train_tokenizer(corpus_from_csvs(corpus_csvs), params.model.tiny.vocab_size)
    processor = build_processor(tokenizer, params.video)
    model = build_model(tokenizer, params.model.tiny, params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny Qwen2.5-VL: %.2f M parameters, vocab %d -> %s", n / 1e6, len(tokenizer), out_dir)
    return out_dir

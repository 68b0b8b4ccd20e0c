"""Reading drills for the tiny demo model: text-only, before it ever sees a video.

A real base model (Qwen2.5-VL-3B) arrives able to copy from its context: to repeat what follows a
token it has seen, to read a list of options in order. A randomly initialised 2-layer model cannot, and
the demo's few hundred traces do not teach it: after 1200 SFT steps it described the video correctly
and then wrote option letters at their prior (docs/demo-results.md). ``warm_up`` gives the tiny model
that ability the way pretraining gives it to a real one, on generic text:

- ``repeat``: a random run of words, then the same run again (the loss is on the repeat);
- ``walk``: four options of random words, a word to find, and the options read in order up to the one
  that holds it ("A. w1 w2: no; B. w3 w4: yes.").

The words are drawn at random from the tokenizer's own whole-word tokens. Nothing here sees a video, a
class, a question or an answer of the demo set; which option a demo video calls for is still learned
only from its frames, in SFT. Departure from the paper: its base model needs no such step.
"""

from __future__ import annotations

import logging
import random
import time

from srvau.progress import progress

log = logging.getLogger(__name__)

LETTERS = "ABCD"
IGNORE = -100


def drill_words(tokenizer) -> list[str]:
    """Whole words the tokenizer holds as one token after a space ("Ġflames"), alphabetic, 3+ letters."""
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and t[1:].isalpha() and len(t) > 3)
    if len(words) < 16:
        raise ValueError(f"the tokenizer has {len(words)} whole-word tokens; the reading drills need 16")
    return words


def repeat_drill(rng: random.Random, words: list[str], tokenizer) -> tuple[list[int], list[int]]:
    run = tokenizer(" " + " ".join(rng.sample(words, 12)), add_special_tokens=False)["input_ids"]
    return run + run, [IGNORE] * len(run) + run


def walk_drill(rng: random.Random, words: list[str], tokenizer) -> tuple[list[int], list[int]]:
    ws = rng.sample(words, 12)
    options = "\n".join(f"{x}. {' '.join(ws[3 * i : 3 * i + 3])}" for i, x in enumerate(LETTERS))
    k = rng.randrange(len(LETTERS))
    prompt = tokenizer(f"{options}\nFind: {ws[3 * k]}\n", add_special_tokens=False)["input_ids"]
    steps = "; ".join(f"{x}. {ws[3 * i]} {ws[3 * i + 1]}: {'yes' if i == k else 'no'}" for i, x in enumerate(LETTERS[: k + 1]))
    walk = tokenizer(steps + ".", add_special_tokens=False)["input_ids"]
    return prompt + walk, [IGNORE] * len(prompt) + walk


DRILLS = {"repeat": repeat_drill, "walk": walk_drill}


def drill_batch(rng: random.Random, words: list[str], tokenizer, size: int, drills=tuple(DRILLS.values())):
    """``size`` drills, the kinds alternating, right-padded: (input_ids, attention_mask, labels)."""
    import torch

    rows = [drills[i % len(drills)](rng, words, tokenizer) for i in range(size)]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return (
        torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows]),
        torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows]),
        torch.tensor([y + [IGNORE] * (width - len(y)) for _, y in rows]),
    )


def walk_exact_share(model, tokenizer, words: list[str], seed: int, n: int = 64) -> float:
    """Share of held-out walks the model writes exactly (greedy, teacher-forced): 0 before the drills."""
    import torch

    ids, mask, labels = drill_batch(random.Random(seed + 1), words, tokenizer, n, drills=(walk_drill,))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    model.train(was_training)
    target = labels[:, 1:]
    return float(((pred == target) | (target == IGNORE)).all(1).float().mean())


def warm_up(model, tokenizer, steps: int, seed: int, batch_size: int = 32, learning_rate: float = 1e-3) -> dict:
    """Train the language model (the vision tower untouched) on the drills for ``steps`` AdamW steps."""
    import torch

    if steps <= 0:
        return {"steps": 0}
    words = drill_words(tokenizer)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for name, p in model.named_parameters() if not name.startswith(("model.visual", "visual"))]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    before = walk_exact_share(model, tokenizer, words, seed)
    model.train()
    t0, loss = time.perf_counter(), float("nan")
    for _ in progress(range(steps), desc="reading drills", total=steps):
        ids, mask, labels = drill_batch(rng, words, tokenizer, batch_size)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
    model.eval()
    after = walk_exact_share(model, tokenizer, words, seed)
    summary = {"steps": steps, "final_loss": round(loss, 4), "walk_exact_before": before, "walk_exact_after": after,
               "wall_s": round(time.perf_counter() - t0, 1)}
    log.info("reading drills: %s", summary)
    return summary

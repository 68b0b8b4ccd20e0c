"""Reading drills: text-only practice at finding the option a key word names and answering with its letter.

A drill is a QA prompt with an option list in a random order, then a reasoning pass of random words that
names one option by its key word right before its letter ("...; Orange B fits."), and the letter again
in ``<answer>``. Its loss is on the two letters only; nothing in it says which option is correct, and
it has no video. The tiny base practises them before it is saved (``srvau.modeling.tiny``), and SFT can
replay them (``sft.drill_replay``, ``srvau.training.sft``).
"""

from __future__ import annotations

from typing import Iterable

from srvau.contract.vocab import LETTERS


def drill_words(texts: Iterable[str]) -> list[str]:
    """The words (case and punctuation kept) the drills write before a key word: any text of the corpus,
    so the look-up does not come to depend on what precedes it. Times and numbers are left out."""
    return sorted({w for t in texts for w in str(t).split() if not any(c.isdigit() for c in w)})


def _drill(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng) -> tuple[list[int], list[int]] | None:
    """One drill: a QA prompt with a list's options in a random order, then a pass that writes random
    words, names one option by its key word and answers with its letter. Returns the token ids and the
    positions of the two letters (the only tokens with a loss: the look-up, then the copy into the
    answer), or None when the drawn list's options do not have distinct key words. The random words come
    from any text, so only the key word tells which option is meant."""
    from srvau.contract.prompts import option_choice, option_key_word, qa_row, task_prompt
    from srvau.contract.trace import render_pass

    question, options = lists[int(rng.integers(len(lists)))]
    options = [options[i] for i in rng.permutation(4)]
    keys = [option_key_word(o) for o in options]
    if "" in keys or len(set(keys)) < 4:
        return None
    k = int(rng.integers(4))
    letter = LETTERS[k]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": task_prompt("qa", qa_row(question, options))}]}],
                                           tokenize=False, add_generation_prompt=True)
    filler = " ".join(words[i] for i in rng.integers(len(words), size=int(rng.integers(3, 16))))
    choice = option_choice(options[k], letter)
    text = render_pass(f"{filler}; {choice}.", letter)
    head = text[: text.rindex(choice) + len(keys[k])]  # up to the key word (the filler may hold letters too)
    before = tokenizer(prompt + head)["input_ids"]
    ids = tokenizer(prompt + text)["input_ids"]
    target = tokenizer.convert_tokens_to_ids([f"Ġ{letter}", letter])
    look_up = len(before)
    if ids[look_up] != target[0]:
        return None  # the tokenizer merged the letter with its neighbours: not a clean drill
    copies = [i for i, t in enumerate(ids) if t == target[1]]
    if not copies:
        return None  # the letter in <answer> merged with the tags: no clean copy to learn
    return ids, [look_up, copies[-1]]


def drill_batch(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng, n: int) -> dict:
    """``n`` drills (:func:`_drill`) as a padded batch: ``input_ids``, ``attention_mask`` and ``labels``
    that are -100 everywhere but the two letters."""
    import torch

    rows = []
    while len(rows) < n:
        d = _drill(tokenizer, lists, words, rng)
        if d is not None:
            rows.append(d)
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((n, width), tokenizer.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100)
    for i, (x, at) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, at] = torch.tensor([x[j] for j in at])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def drillable(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], seed: int) -> bool:
    """Whether ``lists`` yield drills at all: some option list with four distinct key words."""
    import numpy as np

    probe = np.random.default_rng(seed)
    return bool(lists) and any(_drill(tokenizer, lists, words, probe) is not None for _ in range(256))

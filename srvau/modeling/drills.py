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


def _draw(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng, prompts: dict | None = None):
    """The random part of one drill (every draw from ``rng`` a drill makes): the QA prompt with a list's
    options in a random order, and a pass that writes random words, names one option by its key word and
    answers with its letter. Returns ``(prompt, head, text, letter)``, where ``head`` is the start of
    the pass ``text`` up to the key word, or None when the drawn list's options do not have distinct key
    words. ``prompts`` caches rendered chat prompts by option order (a few hundred in the demo)."""
    from srvau.contract.prompts import option_choice, option_key_word, qa_row, task_prompt
    from srvau.contract.trace import render_pass

    question, options = lists[int(rng.integers(len(lists)))]
    options = [options[i] for i in rng.permutation(4)]
    keys = [option_key_word(o) for o in options]
    if "" in keys or len(set(keys)) < 4:
        return None
    k = int(rng.integers(4))
    letter = LETTERS[k]
    key = (question, *options)
    prompt = None if prompts is None else prompts.get(key)
    if prompt is None:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": task_prompt("qa", qa_row(question, options))}]}],
            tokenize=False, add_generation_prompt=True)
        if prompts is not None:
            prompts[key] = prompt
    filler = " ".join(words[i] for i in rng.integers(len(words), size=int(rng.integers(3, 16))))
    choice = option_choice(options[k], letter)
    text = render_pass(f"{filler}; {choice}.", letter)
    head = text[: text.rindex(choice) + len(keys[k])]  # up to the key word (the filler may hold letters too)
    return prompt, head, text, letter


def _clean(tokenizer, before: list[int], ids: list[int], letter: str) -> tuple[list[int], list[int]] | None:
    """A drawn drill's token ids and the positions of its two letters (the only tokens with a loss: the
    look-up, then the copy into the answer), or None when the tokenizer merged a letter with its
    neighbours."""
    target = tokenizer.convert_tokens_to_ids([f"Ġ{letter}", letter])
    look_up = len(before)
    if ids[look_up] != target[0]:
        return None  # the tokenizer merged the letter with its neighbours: not a clean drill
    copies = [i for i, t in enumerate(ids) if t == target[1]]
    if not copies:
        return None  # the letter in <answer> merged with the tags: no clean copy to learn
    return ids, [look_up, copies[-1]]


def _drill(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng) -> tuple[list[int], list[int]] | None:
    """One drill (:func:`_draw`, then :func:`_clean`): token ids and the positions of its two letters, or
    None. The random words come from any text, so only the key word tells which option is meant."""
    drawn = _draw(tokenizer, lists, words, rng)
    if drawn is None:
        return None
    prompt, head, text, letter = drawn
    before, ids = tokenizer([prompt + head, prompt + text])["input_ids"]
    return _clean(tokenizer, before, ids, letter)


class DrillTokens:
    """Token ids of drills, the prompt's ids reused. Tokenising ``prompt + pass`` costs most of a drill
    batch's Python; the prompt is ~2/3 of it and a few hundred prompts recur, so each prompt is tokenised
    once and a pass on its own. That is exact when the tokenizer splits at their boundary (the prompt ends
    with the assistant header's newline, the pass starts with a tag): checked once per prompt against
    the whole text, and a prompt that fails is always tokenised whole."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.rendered: dict = {}  # _draw's chat prompts by option order
        self.prefix: dict[str, list[int] | None] = {}  # prompt -> its ids, or None where it merges with a pass

    def rows(self, drawn: list[tuple[str, str, str, str]]) -> list[tuple[list[int], list[int]] | None]:
        """``_clean`` of every drawn drill, in order."""
        new = {}
        for prompt, _, text, _ in drawn:
            if prompt not in self.prefix and prompt not in new:
                new[prompt] = text
        if new:
            enc = self.tokenizer([t for p, text in new.items() for t in (p, text, p + text)])["input_ids"]
            for i, p in enumerate(new):
                ids, alone, whole = enc[3 * i: 3 * i + 3]
                self.prefix[p] = ids if ids + alone == whole else None
        strings = [t for p, head, text, _ in drawn
                   for t in ((head, text) if self.prefix[p] is not None else (p + head, p + text))]
        enc = self.tokenizer(strings)["input_ids"]
        out = []
        for i, (p, _, _, letter) in enumerate(drawn):
            before, ids = enc[2 * i], enc[2 * i + 1]
            if self.prefix[p] is not None:
                before, ids = self.prefix[p] + before, self.prefix[p] + ids
            out.append(_clean(self.tokenizer, before, ids, letter))
        return out


def drill_rows(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng, n: int,
               tokens: DrillTokens | None = None) -> list[tuple[list[int], list[int]]]:
    """The first ``n`` clean drills of ``rng``: the same rows as calling :func:`_drill` until ``n`` are
    clean, tokenised in one call per round (``tokens`` keeps prompts across calls). A round draws only
    as many drills as are still missing, and every draw happens before tokenising, so ``rng`` ends where
    the one-by-one loop leaves it."""
    tokens = tokens or DrillTokens(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    while len(rows) < n:
        drawn = [d for d in (_draw(tokenizer, lists, words, rng, tokens.rendered) for _ in range(n - len(rows)))
                 if d is not None]
        rows += [r for r in tokens.rows(drawn) if r is not None] if drawn else []
    return rows


def drill_batch(tokenizer, lists: list[tuple[str, list[str]]], words: list[str], rng, n: int,
                tokens: DrillTokens | None = None) -> dict:
    """``n`` drills (:func:`drill_rows`) as a padded batch (:func:`pad_drills`)."""
    return pad_drills(tokenizer, drill_rows(tokenizer, lists, words, rng, n, tokens))


def pad_drills(tokenizer, rows: list[tuple[list[int], list[int]]]) -> dict:
    """Drills as a padded batch: ``input_ids``, ``attention_mask`` and ``labels`` that are -100 everywhere
    but the two letters."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
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

"""Encode each video once while the vision trunk is frozen.

Training asks the vision tower for the same videos again and again: GRPO's rollout, reference and
policy passes each encode every row, and a step's rows are a few videos repeated ``num_generations``
times; SFT meets every video once per epoch. With the trunk frozen (the patch embedding and the
blocks; ``sft.freeze_vision``, or LoRA on the language model) its output for a video never changes,
so :class:`TrunkCache` keeps it, per video, and runs only the patch merger (the projector SFT still
trains) on every call.

A video's entry is found by a cheap signature of its patches (the grid and two sums) and then
confirmed by comparing the patches themselves, so a hit is the same input, not a likely one. A
video's trunk output does not depend on the other videos of its call (attention runs within a
video), which is why the cached path gives the uncached one's tensors bit for bit
(``tests/model/test_vision_cache.py``). The cache holds at most ``max_mb`` MiB (patches and
outputs, least recently used out first) and steps aside, computing as before, whenever a trunk
parameter requires a gradient.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

log = logging.getLogger(__name__)


def _trunk_parameters(visual) -> list:
    return [p for name, p in visual.named_parameters() if not name.startswith("merger.")]


class TrunkCache:
    """Wraps one Qwen2.5-VL vision tower (``model.model.visual``): see the module docstring."""

    def __init__(self, visual, max_mb: float):
        self.visual = visual
        self.forward_uncached = visual.forward  # the tower's own (decorated) forward, bound
        self.max_bytes = int(max_mb * 2**20)
        self.merge_unit = visual.spatial_merge_size**2
        self.group_width = visual.merger.hidden_size  # merge_unit x the trunk's width
        self.trunk = _trunk_parameters(visual)
        self.entries: collections.OrderedDict[tuple, list[tuple[Any, Any]]] = collections.OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.bypassed = 0

    # -- the tower's forward ----------------------------------------------------------------------

    def forward(self, hidden_states, grid_thw, **kwargs):
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if any(p.requires_grad for p in self.trunk) or (torch.is_grad_enabled() and hidden_states.requires_grad):
            self.bypassed += 1
            return self.forward_uncached(hidden_states, grid_thw=grid_thw, **kwargs)
        sizes = grid_thw.prod(-1).tolist()
        chunks = hidden_states.split(sizes)
        keys = [self._signature(c, g) for c, g in zip(chunks, grid_thw.tolist())]
        groups: list[Any] = [None] * len(chunks)
        missing: dict[int, list[int]] = {}  # first position of each unseen video -> all its positions
        for i, (chunk, key) in enumerate(zip(chunks, keys)):
            groups[i] = self._lookup(key, chunk)
            if groups[i] is not None:
                self.hits += 1
                continue
            twin = next((j for j in missing if keys[j] == key and torch.equal(chunks[j], chunk)), None)
            if twin is None:
                self.misses += 1
                missing[i] = [i]
            else:  # the same video again in this call: encoded once
                self.hits += 1
                missing[twin].append(i)
        if missing:
            first = list(missing)
            computed = self._trunk(torch.cat([chunks[i] for i in first]), grid_thw[first], **kwargs)
            for i, out in zip(first, computed.split([sizes[i] // self.merge_unit for i in first])):
                self._store(keys[i], chunks[i], out)
                for j in missing[i]:
                    groups[j] = out
        grouped = torch.cat(groups)
        merged = self.visual.merger(grouped.reshape(-1, self.group_width // self.merge_unit))
        # The trunk's last hidden states, unmerged, in the video's own patch order (the uncached tower
        # returns them in its window order); Qwen2.5-VL reads only the merged output.
        return BaseModelOutputWithPooling(last_hidden_state=grouped.reshape(-1, self.group_width // self.merge_unit),
                                          pooler_output=merged)

    def _trunk(self, hidden_states, grid_thw, **kwargs):
        """The tower without its merger: each merge unit's trunk states side by side, in patch order."""
        merger = self.visual.merger
        merger.forward = lambda x: x.reshape(-1, self.group_width)  # the tower reorders the groups after
        try:
            return self.forward_uncached(hidden_states, grid_thw=grid_thw, **kwargs).pooler_output
        finally:
            del merger.forward

    # -- entries ----------------------------------------------------------------------------------

    @staticmethod
    def _signature(chunk, grid: list[int]) -> tuple:
        return (tuple(grid), chunk.dtype, str(chunk.device), float(chunk.sum()), float(chunk[::7].abs().sum()))

    def _lookup(self, key: tuple, chunk):
        import torch

        for patches, out in self.entries.get(key, ()):
            if torch.equal(patches, chunk):
                self.entries.move_to_end(key)
                return out
        return None

    def _store(self, key: tuple, chunk, out) -> None:
        size = chunk.nbytes + out.nbytes
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes and self.entries:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= sum(p.nbytes + o.nbytes for p, o in dropped)
        self.entries.setdefault(key, []).append((chunk.clone(), out.detach().clone()))
        self.bytes += size

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "bypassed": self.bypassed, "entries": sum(map(len, self.entries.values())),
                "bytes": self.bytes}


def cache_vision_trunk(model, max_mb: float) -> TrunkCache | None:
    """Install a :class:`TrunkCache` on ``model``'s vision tower (a Qwen2.5-VL model, PEFT-wrapped or
    not); ``max_mb`` 0 leaves the tower as it is. Returns the cache, or None."""
    if max_mb <= 0:
        return None
    visual = _find_visual(model)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no Qwen2.5-VL vision tower to cache")
    if trunk_cache(model) is not None:
        return trunk_cache(model)
    cache = TrunkCache(visual, max_mb)
    visual.forward = cache.forward
    log.info("vision trunk cache: up to %.0f MiB of encoded videos, used while the trunk is frozen", max_mb)
    return cache


def _find_visual(model):
    for name, module in model.named_modules():
        if name.split(".")[-1] == "visual" and hasattr(module, "merger") and hasattr(module, "spatial_merge_size"):
            return module
    return None


def trunk_cache(model) -> TrunkCache | None:
    """The cache installed on ``model``'s vision tower, if any."""
    visual = _find_visual(model)
    owner = getattr(getattr(visual, "forward", None), "__self__", None)
    return owner if isinstance(owner, TrunkCache) else None

"""A key/value cache for the local oracle that appends in place instead of concatenating.

transformers' ``DynamicLayer`` appends a decoding step's keys and values with ``torch.cat``, which copies the
whole cache of every layer at every step: for a batch of 32 judge or teacher prompts of ~250 tokens that is
~370 MB written per generated token in SmolLM2-135M's 30 layers, about as long as the step's matrix
products on a 2-core CPU (bench/README.md, "The first run"). :class:`GrowingLayer` writes into a buffer
reserved for the prompt and every token ``generate`` may add, and hands attention a view of the filled part:
the same keys and values, the same shapes, the same sums, so the same answers (tests/test_local_oracle.py).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of a buffer with room for ``reserve`` more
    positions; a full buffer (or one replaced by a batch operation such as ``batch_repeat_interleave``) is
    reallocated with twice the room, so appending stays amortised O(new tokens)."""

    def __init__(self, reserve: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reserve = int(reserve)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.allocations = 0  # buffers allocated: 1 per generate() when the reserve holds (bench, tests)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        total = held + key_states.shape[-2]
        if not self._fits(key_states, held, total):
            room = max(total + self.reserve, 2 * held)
            keys = key_states.new_empty(*key_states.shape[:-2], room, key_states.shape[-1])
            values = value_states.new_empty(*value_states.shape[:-2], room, value_states.shape[-1])
            if held:
                keys[..., :held, :] = self.keys
                values[..., :held, :] = self.values
            self._buffers = (keys, values)
            self.allocations += 1
        keys, values = self._buffers
        keys[..., held:total, :] = key_states
        values[..., held:total, :] = value_states
        self.keys, self.values = keys[..., :total, :], values[..., :total, :]
        return self.keys, self.values

    def _fits(self, key_states: torch.Tensor, held: int, total: int) -> bool:
        """The buffer exists, has room, has this batch's shape and still backs ``self.keys`` (crop keeps it;
        batch_repeat_interleave, batch_select_indices and reorder_cache replace the keys with new tensors)."""
        if self._buffers is None:
            return False
        keys = self._buffers[0]
        return (keys.shape[-2] >= total and keys.shape[:-2] == key_states.shape[:-2]
                and (held == 0 or self.keys.data_ptr() == keys.data_ptr()))


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of :class:`GrowingLayer` s, each reserving ``reserve`` positions beyond the first
    update (give it ``max_new_tokens`` and decoding never reallocates)."""

    def __init__(self, reserve: int = 0) -> None:
        Cache.__init__(self, layer_class_to_replicate=lambda: GrowingLayer(reserve=reserve))

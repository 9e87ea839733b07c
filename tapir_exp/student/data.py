"""Turning conversations into training batches: chat-template tokenisation with the loss on the assistant's
answer only; packing of several examples into one row without attention between them; and length-grouped
batching that is deterministic, distributed-aware and resumable mid-epoch."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Any

IGNORE = -100
log = logging.getLogger("tapir")


def encode(tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int,
           counts: dict[str, int] | None = None) -> list[dict[str, list[int]]]:
    """Token ids + labels per conversation; every token before the last assistant turn is masked.

    Longer than ``max_length``: the example keeps its whole prompt and loses the tail of its answer
    (``answer_tail_cut``); one whose prompt alone leaves no room for an answer token is dropped
    (``dropped_prompt_too_long``), as is one with an empty answer (``dropped_empty_answer``). ``counts``
    receives these numbers; nothing is cut without being counted (and logged)."""
    c = {"examples": 0, "answer_tail_cut": 0, "dropped_prompt_too_long": 0, "dropped_empty_answer": 0}
    out = []
    for conv in conversations:
        if not conv or conv[-1]["role"] != "assistant":
            raise ValueError("each training conversation must end with an assistant message")
        prompt = tokenizer.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(conv, tokenize=False)
        if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to concatenation
            full = prompt + conv[-1]["content"] + (tokenizer.eos_token or "")
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None and (not f_ids or f_ids[-1] != tokenizer.eos_token_id):
            f_ids = f_ids + [tokenizer.eos_token_id]  # the student must learn to stop
        labels = [IGNORE] * min(len(p_ids), len(f_ids)) + f_ids[len(p_ids):]
        if not any(lab != IGNORE for lab in labels):
            c["dropped_empty_answer"] += 1
            continue
        if len(p_ids) >= max_length:  # no room for a single answer token: it would teach nothing
            c["dropped_prompt_too_long"] += 1
            continue
        if len(f_ids) > max_length:
            c["answer_tail_cut"] += 1
        out.append({"input_ids": f_ids[:max_length], "labels": labels[:max_length]})
    c["examples"] = len(out)
    if c["answer_tail_cut"] or c["dropped_prompt_too_long"]:
        log.warning("training data: %d answer(s) lost their tail and %d example(s) were dropped (prompt alone "
                    "longer than max_length=%d)", c["answer_tail_cut"], c["dropped_prompt_too_long"], max_length)
    if counts is not None:
        counts.update(c)
    return out


def pack(examples: list[dict[str, list[int]]], capacity: int, seed: int) -> list[dict[str, list[int]]]:
    """Rows of up to ``capacity`` tokens, each the concatenation of several examples (first-fit decreasing
    over a seeded order, so the result is deterministic).

    Every row carries ``position_ids`` that restart at 0 for each example. With no attention mask, transformers
    (>= 4.53; flash-attention and SDPA/eager alike) reads the restarts as sequence boundaries and gives each
    example a block-diagonal causal mask, so no token attends across examples. The token after a boundary is
    the next example's first prompt token, whose label is already masked, so no loss crosses a boundary either.
    """
    order = list(range(len(examples)))
    random.Random(f"pack/{seed}").shuffle(order)
    order.sort(key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = min(len(examples[i]["input_ids"]), capacity)
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    packed = []
    for members in rows:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            ids = examples[i]["input_ids"][:capacity]
            row["input_ids"] += ids
            row["labels"] += examples[i]["labels"][:capacity]
            row["position_ids"] += list(range(len(ids)))
        packed.append(row)
    return packed


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors. Packed rows (with ``position_ids``) get no attention mask — the position restarts
    delimit their examples, and the padding tail is one more "example" whose labels are all ignored."""
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    packed = "position_ids" in batch[0]
    pos = torch.zeros((len(batch), width), dtype=torch.long) if packed else None
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
        if packed:
            pos[i, :n] = torch.tensor(b["position_ids"])
            pos[i, n:] = torch.arange(width - n)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": None}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class LengthGroupedBatches:
    """Batches of similar length (``group=True``): sort within windows of 50 batches, shuffle batch order.

    Deterministic from (seed, epoch); each rank takes every world-th batch. ``resume(epoch, done)`` makes
    the next iteration of that epoch skip the batches already trained on (exact mid-epoch resume)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: bool = True):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, done: int) -> None:
        self._resume = (epoch, done)

    def _world(self) -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{epoch}")
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        if self.group:
            window = self.batch_size * 50
            idx = [i for s in range(0, len(idx), window)
                   for i in sorted(idx[s:s + window], key=lambda j: self.lengths[j])]
        out = [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self._world()
        mine = self.batches(self.epoch)
        mine = mine[: len(mine) // world * world or len(mine)][rank::world]
        skip = 0
        if self._resume and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        yield from mine[skip:]

    def __len__(self) -> int:
        _, world = self._world()
        n = math.ceil(len(self.lengths) / self.batch_size)
        return max(1, n // world)

    def padding_efficiency(self) -> float:
        """Real tokens / padded tokens over one epoch's batches."""
        real = padded = 0
        for b in self.batches(0):
            lens = [self.lengths[i] for i in b]
            real += sum(lens)
            padded += max(lens) * len(lens)
        return round(real / padded, 4) if padded else 1.0

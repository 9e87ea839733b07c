"""Fitting a chat prompt into a model's context without cutting the template or the prefill.

Truncating the token ids of a rendered prompt from the right cuts off what matters most: the assistant
header and a forced reply start such as ``[[`` (a judge then scores garbage). :func:`fit_chat` instead
shortens the *content* of the conversation — the middle of the longest turns, replaced by a visible
marker — until the rendered prompt (chat template + prefill) fits, and says how many tokens it removed.

Prompts rendered from a template file (:func:`tapir_exp.prompts.render`) remember where each filled-in
value sits (:class:`Rendered`); those values are shortened instead of the turn as a whole, longest first
and evenly (water-filling), so a judge prompt holding two long answers keeps its instructions, both
``[Assistant n]`` headers and the end of each answer. Every caller counts what it shortened (usage ledger,
step counts) and logs it: nothing is cut silently.

Used by the in-process oracle backend, HF generation and vLLM generation; training examples are handled
in :func:`tapir_exp.student.data.encode` (answer tail cut, or dropped when the prompt alone is too long).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MARK = "\n[... {n} tokens omitted ...]\n"
# Roles whose content may be shortened (a system prompt is the operator's instructions: kept whole).
SHORTENABLE = ("user", "assistant")
MIN_KEEP = 16  # tokens a shortened piece keeps at least (head + tail)


class PromptTooLong(ValueError):
    """Even with every shortenable piece cut to MIN_KEEP tokens the prompt does not fit."""


class Rendered(str):
    """A prompt string that remembers the character spans of the values filled into its template."""

    spans: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, spans: tuple[tuple[int, int], ...] = ()) -> Rendered:
        obj = super().__new__(cls, text)
        obj.spans = tuple(spans)
        return obj

    def __reduce__(self):  # keep the spans through pickling and deepcopy
        return (Rendered, (str(self), self.spans))


@dataclass
class Fitted:
    messages: list[dict[str, str]]
    text: str  # chat template applied (+ generation prompt) + prefill
    n_tokens: int
    removed: int = 0  # content tokens cut out (0: the prompt was left as it was)


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def shorten_middle(tokenizer: Any, text: str, keep: int) -> tuple[str, int]:
    """``text`` with its middle replaced by the marker so that about ``keep`` tokens remain (head and tail
    halves); returns the new text and the number of tokens removed (0: it was short enough)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep:
        return text, 0
    keep = max(2, keep)
    head, tail = ids[: keep - keep // 2], ids[len(ids) - keep // 2:]
    removed = len(ids) - len(head) - len(tail)
    # Decoding a cut through a multi-byte character gives U+FFFD at the edge: drop it.
    left = tokenizer.decode(head, skip_special_tokens=False).rstrip("\ufffd")
    right = tokenizer.decode(tail, skip_special_tokens=False).lstrip("\ufffd")
    return left + MARK.format(n=removed) + right, removed


def _pieces(messages: list[dict[str, str]]) -> list[tuple[int, int, int]]:
    """(message index, start, end) of every shortenable piece: template values, or whole turns."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] not in SHORTENABLE:
            continue
        content = m["content"]
        spans = getattr(content, "spans", ()) or ((0, len(content)),)
        out.extend((i, s, e) for s, e in spans if e > s)
    return out


def _caps(lengths: list[int], budget: int) -> int:
    """The largest cap c with sum(min(n, c)) <= budget (water-filling: short pieces stay whole)."""
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_chat(messages: list[dict[str, str]], tokenizer: Any, max_tokens: int, prefill: str = "",
             add_generation_prompt: bool = True) -> Fitted:
    """Render ``messages`` with the tokenizer's chat template (+ ``prefill``) in at most ``max_tokens``
    tokens, shortening the middle of the longest content pieces if needed. Raises :class:`PromptTooLong`
    when the template, system prompt and prefill alone leave no room."""
    def render(msgs: list[dict[str, str]]) -> tuple[str, int]:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False)
        text += prefill
        return text, count_tokens(tokenizer, text)

    text, n = render(messages)
    if n <= max_tokens:
        return Fitted(list(messages), text, n)
    pieces = _pieces(messages)
    if not pieces:
        raise PromptTooLong(f"prompt of {n} tokens exceeds {max_tokens} and has no user/assistant content to shorten")
    texts = [messages[i]["content"][s:e] for i, s, e in pieces]
    lengths = [count_tokens(tokenizer, t) for t in texts]
    mark = count_tokens(tokenizer, MARK.format(n=10 ** 6))
    excess = n - max_tokens
    for _ in range(6):  # token counts of pieces alone differ slightly from in context: re-check, tighten
        cap = _caps(lengths, sum(lengths) - excess)
        cut = [i for i, length in enumerate(lengths) if length > cap]
        keep = cap - mark
        if keep < MIN_KEEP:
            raise PromptTooLong(f"prompt of {n} tokens cannot fit {max_tokens}: the template, system prompt and "
                                f"prefill leave too little room for {len(pieces)} content piece(s)")
        new = list(texts)
        removed = 0
        for j in cut:
            new[j], r = shorten_middle(tokenizer, texts[j], keep)
            removed += r
        msgs = _rebuild(messages, pieces, new)
        text2, n2 = render(msgs)
        if n2 <= max_tokens:
            return Fitted(msgs, text2, n2, removed)
        excess += n2 - max_tokens + 4 * len(cut)
    raise PromptTooLong(f"prompt of {n} tokens could not be shortened to {max_tokens}")


def _rebuild(messages: list[dict[str, str]], pieces: list[tuple[int, int, int]], new: list[str]) -> list[dict]:
    out = [dict(m) for m in messages]
    by_msg: dict[int, list[tuple[int, int, str]]] = {}
    for (i, s, e), t in zip(pieces, new, strict=True):
        by_msg.setdefault(i, []).append((s, e, t))
    for i, parts in by_msg.items():
        content, pos, chunks, spans = messages[i]["content"], 0, [], []
        length = 0
        for s, e, t in sorted(parts):
            chunks.append(content[pos:s])
            length += s - pos
            chunks.append(t)
            spans.append((length, length + len(t)))
            length += len(t)
            pos = e
        chunks.append(content[pos:])
        out[i]["content"] = Rendered("".join(chunks), tuple(spans))
    return out

"""Near-duplicate detection for instructions: normalised exact match plus ROUGE-L (LCS F-measure over
words), with a word-bigram inverted index so that only plausible neighbours are compared (a 50K pool is
checked in seconds, not hours)."""

from __future__ import annotations

import re
from array import array
from collections import Counter, defaultdict

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(words(text))


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 between two token lists (longest common subsequence)."""
    if not a or not b:
        return 0.0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


class NearDuplicateIndex:
    """Texts added so far; :meth:`duplicate_of` says whether a new text is (nearly) one of them.

    Stored without per-item container objects (normalised texts as strings, bigrams as "a b" string keys,
    postings as ``array('i')``): none of them is tracked by Python's cyclic garbage collector, whose full
    passes over millions of small lists and tuples doubled the build time of a 500K index. A bigram's first
    text is kept as a plain int and only later ones go to an array: most bigrams of a pool occur once, and
    creating an array for each was half the build time (bench/data_scale.py)."""

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self._exact: dict[str, int] = {}
        self._texts: list[str] = []
        self._first: dict[str, int] = {}  # bigram -> the first text that has it
        self._more: defaultdict[str, array] = defaultdict(_new_posting)  # bigram -> the later ones

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> int:
        toks = words(text)
        key = " ".join(toks)
        idx = len(self._texts)
        self._texts.append(key)
        self._exact.setdefault(key, idx)
        first, more = self._first, self._more
        for bg in _bigrams(toks):  # the build's hot loop: C-level lookups only
            if first.setdefault(bg, idx) != idx:
                more[bg].append(idx)
        return idx

    def duplicate_of(self, text: str) -> tuple[int, float] | None:
        """(index, similarity) of the first near-duplicate, or None."""
        toks = words(text)
        key = " ".join(toks)
        if key in self._exact:
            return self._exact[key], 1.0
        bigrams = _bigrams(toks)
        if not bigrams:
            return None
        shared: Counter[int] = Counter()
        for bg in bigrams:
            f = self._first.get(bg)
            if f is not None:
                shared[f] += 1
                p = self._more.get(bg)  # .get: a lookup must not add empty postings
                if p is not None:
                    shared.update(p)
        # ROUGE-L >= t needs an LCS of at least t * min length; bigram overlap below a fraction of that
        # cannot reach it in practice, so only the best-overlapping candidates are compared exactly.
        for idx, _ in shared.most_common(50):
            sim = rouge_l(toks, self._texts[idx].split())
            if sim >= self.threshold:
                return idx, sim
        return None


def _bigrams(toks: list[str]) -> set[str]:
    return {f"{a} {b}" for a, b in zip(toks, toks[1:], strict=False)}


def _new_posting() -> array:
    return array("i")

"""Near-duplicate detection for instructions: normalised exact match plus ROUGE-L (LCS F-measure over
words), with a word-bigram inverted index so that only plausible neighbours are compared (a 50K pool is
checked in seconds, not hours)."""

from __future__ import annotations

import re
from array import array

import numpy as np

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

    The inverted index is two flat arrays sorted by bigram hash (bigram hash, text index), searched with
    ``np.searchsorted``; texts added after the last sort wait in two small unsorted arrays until there are
    many. A dict of bigram -> postings was 2-3x slower to build and grew worse than linearly from 52K to 500K
    texts (millions of small objects; bench/data_scale.py). Bigrams are keyed by Python's 64-bit hash of the
    word pair: a collision only adds a candidate, which ROUGE-L then rejects, and the index lives in one
    process, so the per-process hash seed does not matter."""

    CANDIDATES = 50  # texts with the most shared bigrams that are compared exactly
    _MERGE_AT = 1 << 16  # unsorted entries before they are merged into the sorted arrays

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self._exact: dict[str, int] = {}
        self._texts: list[str] = []
        self._keys = np.empty(0, dtype=np.int64)  # sorted bigram hashes
        self._ids = np.empty(0, dtype=np.int32)  # the text index of each
        self._new_keys, self._new_ids = array("q"), array("i")  # added since the last merge

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> int:
        toks = words(text)
        key = " ".join(toks)
        idx = len(self._texts)
        self._texts.append(key)
        self._exact.setdefault(key, idx)
        hashes = _bigram_hashes(toks)
        self._new_keys.extend(hashes)
        self._new_ids.extend([idx] * len(hashes))
        return idx

    def _merge(self) -> None:
        keys = np.concatenate([self._keys, np.frombuffer(self._new_keys, dtype=np.int64)])
        ids = np.concatenate([self._ids, np.frombuffer(self._new_ids, dtype=np.int32)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._ids = keys[order], ids[order]
        self._new_keys, self._new_ids = array("q"), array("i")

    def duplicate_of(self, text: str) -> tuple[int, float] | None:
        """(index, similarity) of the first near-duplicate, or None."""
        toks = words(text)
        key = " ".join(toks)
        if key in self._exact:
            return self._exact[key], 1.0
        hashes = _bigram_hashes(toks)
        if not hashes:
            return None
        if len(self._new_keys) >= self._MERGE_AT or (self._new_keys and not len(self._keys)):
            self._merge()
        query = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
        lo = np.searchsorted(self._keys, query, side="left")
        hi = np.searchsorted(self._keys, query, side="right")
        parts = [self._ids[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True) if b > a]
        if self._new_keys:
            pending = np.frombuffer(self._new_keys, dtype=np.int64)
            parts.append(np.frombuffer(self._new_ids, dtype=np.int32)[np.isin(pending, query)])
        if not parts:
            return None
        cands, shared = np.unique(np.concatenate(parts), return_counts=True)
        # ROUGE-L >= t needs an LCS of at least t * min length; bigram overlap below a fraction of that
        # cannot reach it in practice, so only the best-overlapping candidates (most shared bigrams, then
        # the earliest text) are compared exactly.
        best = cands[np.lexsort((cands, -shared))[: self.CANDIDATES]]
        for idx in best.tolist():
            sim = rouge_l(toks, self._texts[idx].split())
            if sim >= self.threshold:
                return idx, sim
        return None


def _bigram_hashes(toks: list[str]) -> set[int]:
    return {hash(pair) for pair in zip(toks, toks[1:], strict=False)}

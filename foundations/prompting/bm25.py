"""BM25 (Robertson et al.), written out: the lexical retriever of retrieval-augmented generation.

For a query Q and a passage d of |d| words (avgdl: the mean over the N passages),

    score(Q, d) = sum over distinct words t of Q of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))     (n(t): passages holding t)

tf saturates (k1) and long passages are discounted (b); this idf (Lucene's) is never negative.
Words: lower-cased runs of letters, digits and underscores (`\\w+`); no stemming, no stop list.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """BM25's tokenization: lower-cased \\w+ runs ("Paris's tower" -> paris, s, tower)."""
    return WORD.findall(text.lower())


class BM25Index:
    """Term counts of every passage, and the document frequencies, ready for `scores`."""

    def __init__(self, passages: list[str], k1: float = 1.5, b: float = 0.75):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and b in [0, 1] (got k1={k1}, b={b})")
        self.passages, self.k1, self.b = list(passages), k1, b
        self.counts = [Counter(words(p)) for p in self.passages]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.avgdl = sum(self.lengths) / max(len(self.lengths), 1) or 1.0
        self.document_frequency = Counter(t for c in self.counts for t in c)

    def idf(self, term: str) -> float:
        n, total = self.document_frequency[term], len(self.passages)
        return math.log(1 + (total - n + 0.5) / (n + 0.5))

    def scores(self, query: str) -> list[float]:
        """score(query, d) for every passage d, in the index's order."""
        terms = set(words(query))
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avgdl)
            out.append(sum(self.idf(t) * counts[t] * (self.k1 + 1) / (counts[t] + norm)
                           for t in terms if counts[t]))
        return out

    def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
        """(passage index, score) of the k best passages, best first (ties: the earlier)."""
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in order[:k]]

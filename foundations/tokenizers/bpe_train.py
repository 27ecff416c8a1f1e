"""The BPE merge loop: count adjacent pairs, merge the most frequent, repeat.

Done the way real trainers do it, so 8k merges over megabytes of text take seconds, not hours:
the corpus is reduced to unique words with counts (pre-tokenization keeps merges inside words),
pair counts are computed once, a pair -> words index says which words a merge touches, only those
words are rewritten, and the next merge comes off a heap: O(N log V) instead of O(N V).

Tie-breaking (deterministic): the pair with the highest count wins; among equal counts, the pair
whose (left token bytes, right token bytes) is smallest, comparing bytes lexicographically.
So "aaabdaaabac" merges aa -> Z, then ab (b"a" < b"aa" beats Za) -> Y, then ZY -> X.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

Pair = tuple[int, int]


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids` by `new_id`, scanning left to right (no overlaps)."""
    first, second = pair
    merged, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def learn_merges(word_counts: dict[tuple[int, ...], int], vocab: list[bytes],
                 num_merges: int) -> list[Pair]:
    """Learn up to `num_merges` merges over words (sequences of token ids) with their counts.

    `vocab[i]` is the bytes of token i; each merge appends its token to `vocab`, so the new id is
    len(vocab) at that moment. Returns the merged pairs in order (merge rank = list index).
    Stops early when no pair occurs any more.
    """
    words = [list(word) for word in word_counts]
    counts = list(word_counts.values())
    pair_counts: dict[Pair, int] = defaultdict(int)
    pair_words: dict[Pair, set[int]] = defaultdict(set)
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[index]
            pair_words[pair].add(index)

    # Heap entries are (-count, left bytes, right bytes, left id, right id). Counts of old pairs only
    # ever go down, so an entry may be stale (too high): it is checked when popped and re-pushed.
    heap = [(-count, vocab[a], vocab[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)
    spelled = set(vocab)
    merges: list[Pair] = []
    while heap and len(merges) < num_merges:
        negative_count, left, right, a, b = heapq.heappop(heap)
        pair = (a, b)
        count = pair_counts.get(pair, 0)
        if count <= 0:
            continue
        if count != -negative_count:
            heapq.heappush(heap, (-count, left, right, a, b))
            continue
        if left + right in spelled:
            # Another pair already made a token with these bytes; a second id for them would make
            # the vocabulary ambiguous (and tiktoken's rank table impossible), so never merge it.
            del pair_counts[pair]
            continue
        new_id = len(vocab)
        vocab.append(left + right)
        spelled.add(left + right)
        merges.append(pair)
        new_pairs = set()
        for index in pair_words.pop(pair):
            word = words[index]
            merged = merge_pair(word, pair, new_id)
            if len(merged) == len(word):
                continue  # the index is lazy: this word lost the pair in an earlier merge
            count = counts[index]
            for old in zip(word, word[1:]):
                pair_counts[old] -= count
            for new in zip(merged, merged[1:]):
                pair_counts[new] += count
                if new_id in new:
                    pair_words[new].add(index)
                    new_pairs.add(new)
            words[index] = merged
        del pair_counts[pair]
        for x, y in new_pairs:
            heapq.heappush(heap, (-pair_counts[x, y], vocab[x], vocab[y], x, y))
    return merges


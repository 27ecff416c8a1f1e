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
        new_pairs: set[Pair] = set()
        for index in pair_words.pop(pair):
            merged = _merge_and_recount(words[index], pair, new_id, counts[index], pair_counts,
                                        new_pairs)
            if merged is None:
                continue  # the index is lazy: this word lost the pair in an earlier merge
            words[index] = merged
            for new in zip(merged, merged[1:]):
                if new_id in new:
                    pair_words[new].add(index)
        del pair_counts[pair]
        for x, y in new_pairs:
            heapq.heappush(heap, (-pair_counts[x, y], vocab[x], vocab[y], x, y))
    return merges


def _merge_and_recount(word: list[int], pair: Pair, new_id: int, count: int,
                       pair_counts: dict[Pair, int], new_pairs: set[Pair]) -> list[int] | None:
    """`merge_pair` on one word that also moves its `count` from the neighbour pairs a merge
    destroys to the ones it creates (recorded in `new_pairs`). None if `pair` is not in the word.

    Only the merged pair's neighbours change, so this costs O(merges) dict updates, not O(len(word)).
    The merged pair's own count is left alone: the caller drops it after the last word.
    """
    first, second = pair
    merged, i, n = [], 0, len(word)
    while i < n:
        if word[i] != first or i + 1 == n or word[i + 1] != second:
            merged.append(word[i])
            i += 1
            continue
        if i > 0:  # (x, first) becomes (x, new); x may itself be new if merges are back to back
            pair_counts[word[i - 1], first] -= count
            pair_counts[merged[-1], new_id] += count
            new_pairs.add((merged[-1], new_id))
        after = i + 2
        next_is_merge = (after + 1 < n and word[after] == first and word[after + 1] == second)
        if after < n and not next_is_merge:  # (second, y) becomes (new, y)
            pair_counts[second, word[after]] -= count
            pair_counts[new_id, word[after]] += count
            new_pairs.add((new_id, word[after]))
        merged.append(new_id)
        i += 2
    return merged if len(merged) < n else None

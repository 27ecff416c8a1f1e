"""A small task scored on every model of a sweep: exact next-word prediction on held-out text.

Given the text before a word, the model greedily writes on; it scores when the letters it writes
first are exactly the next word. Small models get almost none right and larger ones start to,
which makes this a simple stand-in for "emergent" abilities across a grid.
"""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"(?<=\s)([A-Za-z]{2,})(?=[\s.,;:!?'\"-])")


def sample_word_positions(text: str, num_examples: int, min_context: int, seed: int):
    """(start offset, word) of up to num_examples words with at least min_context chars before."""
    matches = [(m.start(), m.group(1)) for m in WORD.finditer(text) if m.start() >= min_context]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(matches), size=min(num_examples, len(matches)), replace=False)
    return [matches[i] for i in sorted(picks)]


def next_word_accuracy(trainer, params, tokenizer, text: str, num_examples: int = 200,
                       max_new_tokens: int = 16, seed: int = 0) -> float:
    """Share of sampled words the model completes exactly from the preceding context."""
    window = trainer.seq_len
    context_tokens = window - max_new_tokens
    examples = sample_word_positions(text, num_examples, min_context=4 * window, seed=seed)
    contexts = [tokenizer.encode(text[start - 4 * window:start])[-context_tokens:]
                for start, _ in examples]
    buffer = np.zeros((len(contexts), window), np.int32)
    lengths = np.array([len(c) for c in contexts])
    for row, ids in enumerate(contexts):
        buffer[row, :len(ids)] = ids
    generated = [[] for _ in contexts]
    for _ in range(max_new_tokens):
        logits = trainer.next_token_logits(params, buffer, lengths - 1)
        next_ids = np.argmax(logits[:, :tokenizer.vocab_size], axis=-1)
        for row, token in enumerate(next_ids):
            generated[row].append(int(token))
        buffer[np.arange(len(contexts)), lengths] = next_ids
        lengths += 1
    correct = 0
    for (_, word), ids in zip(examples, generated):
        written = re.match(r"[A-Za-z]*", tokenizer.decode(ids)).group(0)
        correct += written == word
    return correct / max(len(examples), 1)

"""A small task scored on every model of a sweep: next-word prediction on held-out text.

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
    return next_word_probe(trainer, params, tokenizer, text, num_examples, max_new_tokens,
                           seed)["probe_acc"]


def next_word_probe(trainer, params, tokenizer, text: str, num_examples: int = 200,
                    max_new_tokens: int = 16, seed: int = 0) -> dict:
    """The exact-match score (probe_acc, with its 95% Wilson interval probe_acc_lo/hi) and a
    continuous one on the same words (probe_logprob: the mean log-probability per token of the
    right word, teacher-forced). Schaeffer et al. 2023: a discontinuous metric can make a smooth
    improvement look like an emergent ability, so the sweep records both."""
    window = trainer.seq_len
    examples = sample_word_positions(text, num_examples, min_context=4 * window, seed=seed)
    contexts = [tokenizer.encode(text[start - 4 * window:start])[-(window - max_new_tokens):]
                for start, _ in examples]
    targets = [tokenizer.encode(word)[:max_new_tokens] for _, word in examples]
    vocab = tokenizer.vocab_size

    def continue_from(next_ids_at, steps):
        """Step j (of steps) appends next_ids_at(j, logits) to every row."""
        buffer = np.zeros((len(contexts), window), np.int32)
        lengths = np.array([len(c) for c in contexts])
        for row, ids in enumerate(contexts):
            buffer[row, :len(ids)] = ids
        for step in range(steps):
            logits = np.asarray(trainer.next_token_logits(params, buffer, lengths - 1))[:, :vocab]
            buffer[np.arange(len(contexts)), lengths] = next_ids_at(step, logits)
            lengths += 1

    generated = [[] for _ in contexts]

    def greedy(step, logits):
        next_ids = np.argmax(logits, axis=-1)
        for row, token in enumerate(next_ids):
            generated[row].append(int(token))
        return next_ids

    target_logprob = np.zeros(len(contexts))

    def teacher_forced(step, logits):
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        in_word = np.array([step < len(t) for t in targets])
        forced = np.array([t[step] if step < len(t) else 0 for t in targets])
        target_logprob[:] += np.where(in_word, log_probs[np.arange(len(contexts)), forced], 0.0)
        return np.where(in_word, forced, np.argmax(logits, axis=-1))  # past its word: any text

    continue_from(greedy, max_new_tokens)
    continue_from(teacher_forced, max((len(t) for t in targets), default=0))
    correct = sum(re.match(r"[A-Za-z]*", tokenizer.decode(ids)).group(0) == word
                  for (_, word), ids in zip(examples, generated))
    n = max(len(examples), 1)
    lo, hi = wilson_interval(correct, len(examples))
    return {"probe_acc": correct / n, "probe_acc_lo": lo, "probe_acc_hi": hi,
            "probe_logprob": float(np.mean(target_logprob / [max(len(t), 1) for t in targets]))}


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (sound at 0 and 1, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))

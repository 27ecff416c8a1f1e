"""Self-consistency (Wang et al. 2022): sample k completions at temperature > 0, extract each
one's answer and return the most frequent; greedy decoding is the one-sample baseline.

inference/complete.py `complete` writes after a batch of prompts (left-padded into one
`generate` call); all k samples of a question are rows of one batch, so they cost one prefill
and one decode loop.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from foundations.config import ConfigError
from foundations.inference.complete import complete


def majority_vote(answers: list[str | None], prefer: str | None = None) -> str | None:
    """The most frequent answer (None, no answer, does not vote); a tie goes to `prefer` when
    it is one of the tied answers (the greedy answer: the vote then never loses a tie that
    greedy decoding would win), else to the answer that came first among the samples, so the
    vote is deterministic. None when nobody answered."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    if prefer is not None and counts.get(prefer) == best:
        return prefer
    return next(a for a in answers if a is not None and counts[a] == best)


def self_consistency(model, params, tokenizer, prompt: str, extract: Callable[[str], str | None],
                     k: int = 8, temperature: float = 0.7, max_new_tokens: int = 16,
                     seed: int = 0, **sampling) -> tuple[str | None, list[str | None]]:
    """(the majority answer, every sample's answer) of k samples of `prompt`."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"self-consistency samples k >= 1 answers at temperature > 0 "
                         f"(got k={k}, temperature={temperature})")
    votes, answers = answer_questions(model, params, tokenizer, [prompt], extract, k,
                                      temperature, max_new_tokens, seed, **sampling)
    return votes[0], answers[0]


def answer_questions(model, params, tokenizer, prompts: list[str],
                     extract: Callable[[str], str | None], samples: int = 1,
                     temperature: float = 0.0, max_new_tokens: int = 16, seed: int = 0,
                     batch_size: int = 256, prefer: list[str | None] | None = None,
                     **sampling) -> tuple[list[str | None], list[list[str | None]]]:
    """(each prompt's voted answer, each prompt's sampled answers): `samples` completions per
    prompt, batch_size rows at a time; samples=1 at temperature 0 is greedy decoding.
    `prefer`: an answer per prompt that wins its vote's ties (e.g. the greedy answers)."""
    rows = [p for p in prompts for _ in range(samples)]
    texts = []
    for i in range(0, len(rows), batch_size):
        texts += complete(model, params, tokenizer, rows[i:i + batch_size], max_new_tokens,
                          temperature, seed + i, **sampling)
    answers = [[extract(t) for t in texts[i:i + samples]]
               for i in range(0, len(texts), samples)]
    if prefer is not None and len(prefer) != len(prompts):
        raise ValueError(f"{len(prefer)} preferred answers for {len(prompts)} prompts")
    prefer = prefer if prefer is not None else [None] * len(answers)
    return [majority_vote(a, p) for a, p in zip(answers, prefer)], answers

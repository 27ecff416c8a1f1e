"""Few-shot prompts: k solved examples drawn (seeded) from a pool, then the question.

A `Template` says how a solved example and the open question are written; `DIRECT` asks for the
answer at once, `CHAIN_OF_THOUGHT` ("Let's think step by step") for the reasoning first, ending
in "The answer is N." so that tasks.extract_answer still finds it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from foundations.config import ConfigError


class Example(NamedTuple):
    question: str
    answer: str
    reasoning: str = ""   # the steps a chain-of-thought template writes before the answer


class Template(NamedTuple):
    """`solved` formats an example with {question}, {answer}, {reasoning}; `query` the open
    question; examples are joined by `separator`."""
    solved: str
    query: str
    separator: str = "\n"


DIRECT = Template("Q: {question} A: {answer}", "Q: {question} A:")
CHAIN_OF_THOUGHT = Template("Q: {question} Let's think step by step. {reasoning} "
                            "The answer is {answer}.",
                            "Q: {question} Let's think step by step.")


def choose_shots(pool: list[Example], k: int, seed: int, exclude: str | None = None
                 ) -> list[Example]:
    """k examples of the pool without replacement, the same for the same seed; an example whose
    question is `exclude` (the one being asked) is never shown."""
    candidates = [e for e in pool if e.question != exclude]
    if not 0 <= k <= len(candidates):
        raise ConfigError(f"few-shot: k={k} examples asked from a pool of {len(candidates)}")
    picked = np.random.default_rng(seed).choice(len(candidates), size=k, replace=False)
    return [candidates[i] for i in picked]


def few_shot_prompt(pool: list[Example], question: str, k: int, seed: int = 0,
                    template: Template = DIRECT) -> str:
    """k solved examples of the pool (seeded choice), then `question` left open."""
    shots = [template.solved.format(**e._asdict())
             for e in choose_shots(pool, k, seed, exclude=question)]
    return template.separator.join(shots + [template.query.format(question=question)])

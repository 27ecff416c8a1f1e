"""A task the project makes itself, with answers a program can check: multi-digit addition.

"Q: 12+35= A: 47". Its chain-of-thought form writes the column sums, right to left, carries
included, then "The answer is 47." (fewshot.CHAIN_OF_THOUGHT), so a model can be taught to think
step by step and the final answer is still parsed and checked.
"""

from __future__ import annotations

import re

import numpy as np

from foundations.prompting.fewshot import Example


def addition_examples(count: int, digits: int = 2, seed: int = 0) -> list[Example]:
    """`count` random sums of two numbers of up to `digits` digits, with their column-by-column
    reasoning."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 10 ** digits, size=(count, 2))
    return [Example(f"{a}+{b}=", str(a + b), addition_reasoning(int(a), int(b))) for a, b in pairs]


def addition_reasoning(a: int, b: int) -> str:
    """The column sums of a + b, ones first: '2+5=7, 1+3=4.' (a carry shows as '+1')."""
    steps, carry, column = [], 0, 0
    while a or b or carry:
        x, y = a % 10, b % 10
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry, a, b, column = total // 10, a // 10, b // 10, column + 1
    return ", ".join(steps or ["0+0=0"]) + "."


_FIRST_INTEGER = re.compile(r"-?\d+")
_FINAL_ANSWER = re.compile(r"answer is (-?\d+)")


def extract_answer(text: str) -> str | None:
    """The answer in a completion's first line (what follows is the model going on with more
    examples): the number after 'answer is' (chain of thought), else the first integer; None
    when there is none."""
    line = text.split("\n", 1)[0]
    final = _FINAL_ANSWER.search(line)
    if final:
        return final.group(1)
    first = _FIRST_INTEGER.search(line)
    return first.group(0) if first else None


def accuracy(predictions: list[str | None], answers: list[str]) -> float:
    """The share of predictions equal to their answer (None, no answer, counts as wrong)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        return 0.0
    return sum(p == a for p, a in zip(predictions, answers)) / len(answers)


def evaluate_addition(model, params, tokenizer, questions: list[Example], pool: list[Example],
                      shots: int = 3, samples: int = 8, temperature: float = 0.7,
                      template=None, seed: int = 0, max_new_tokens: int = 8) -> dict:
    """Accuracy on `questions` of greedy zero-shot, greedy few-shot (`shots` examples of the
    pool) and self-consistency over `samples` few-shot samples at `temperature`."""
    from foundations.prompting.consistency import answer_questions
    from foundations.prompting.fewshot import DIRECT, few_shot_prompt
    template = template or DIRECT
    answers = [q.answer for q in questions]
    zero = [few_shot_prompt(pool, q.question, 0, template=template) for q in questions]
    few = [few_shot_prompt(pool, q.question, shots, seed + i, template)
           for i, q in enumerate(questions)]
    run = dict(extract=extract_answer, max_new_tokens=max_new_tokens)
    zero_shot, _ = answer_questions(model, params, tokenizer, zero, **run)
    few_shot, _ = answer_questions(model, params, tokenizer, few, **run)
    voted, sampled = answer_questions(model, params, tokenizer, few, samples=samples,
                                      temperature=temperature, seed=seed, **run)
    single = [s[0] for s in sampled]   # one sample each: what the vote improves on
    return {"questions": len(questions), "zero_shot": {"accuracy": accuracy(zero_shot, answers)},
            "few_shot": {"accuracy": accuracy(few_shot, answers), "shots": shots},
            "one_sample": {"accuracy": accuracy(single, answers), "temperature": temperature},
            "self_consistency": {"accuracy": accuracy(voted, answers), "k": samples,
                                 "temperature": temperature}}

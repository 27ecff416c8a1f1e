"""The addition task (prompting/tasks.py) as post-training data: SFT examples and preference pairs.

SFT examples {"prompt": "12+35=", "response": "47"}; preference pairs prefer the right sum over
a near miss (one digit off), so a model must read the numbers to tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundations.prompting.tasks import addition_examples


def near_miss(answer: int, rng: np.random.Generator) -> int:
    """The answer with one of its digits changed."""
    text = list(str(answer))
    position = int(rng.integers(len(text)))
    old = text[position]
    text[position] = str(rng.choice([d for d in "0123456789" if d != old]))
    return int("".join(text))


def write_addition(out_dir: str | Path, count: int = 2000, digits: int = 2,
                   seed: int = 0) -> dict[str, Path]:
    """Writes sft.jsonl and pairs.jsonl (count lines each) under out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    sft, pairs = [], []
    for example in addition_examples(count, digits, seed):
        sft.append({"prompt": example.question, "response": example.answer})
        pairs.append({"prompt": example.question, "chosen": example.answer,
                      "rejected": str(near_miss(int(example.answer), rng))})
    paths = {"sft": out / "sft.jsonl", "pairs": out / "pairs.jsonl"}
    for name, rows in (("sft", sft), ("pairs", pairs)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths

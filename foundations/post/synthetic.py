"""A task the project makes itself, with a checkable answer: multi-digit addition.

SFT examples {"prompt": "12+35=", "response": "47"}; preference pairs prefer the right sum over
a near miss (one digit off), so a model must read the numbers to tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def addition_problems(count: int, digits: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    high = 10 ** digits
    return [(int(a), int(b)) for a, b in rng.integers(0, high, size=(count, 2))]


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
    for a, b in addition_problems(count, digits, seed):
        prompt = f"{a}+{b}="
        sft.append({"prompt": prompt, "response": str(a + b)})
        pairs.append({"prompt": prompt, "chosen": str(a + b),
                      "rejected": str(near_miss(a + b, rng))})
    paths = {"sft": out / "sft.jsonl", "pairs": out / "pairs.jsonl"}
    for name, rows in (("sft", sft), ("pairs", pairs)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths

"""Text in, text out for a batch of prompts at once: left-pad, `generate`, cut at end-of-text,
decode. The one copy that few-shot evaluation (prompting/), self-consistency and post/'s
exact-match accuracy use."""

from __future__ import annotations

import numpy as np

from foundations.inference.generate import generate


def pad_id(tokenizer) -> int:
    """The id that fills left padding and a row after its end-of-text: the tokenizer's pad id,
    else 0 (padding is masked out, and what follows end-of-text is cut off)."""
    pad = getattr(tokenizer, "pad_id", None)
    return 0 if pad is None or pad < 0 else int(pad)


def left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) (batch, longest) with each row's tokens at the right end."""
    length = max(map(len, rows))
    ids = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for r, row in enumerate(rows):
        ids[r, length - len(row):], mask[r, length - len(row):] = row, True
    return ids, mask


def complete(model, params, tokenizer, prompts: list[str], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 0,
             **sampling) -> list[str]:
    """The text each prompt's row writes (up to the tokenizer's end-of-text or max_new_tokens),
    batch_size prompts per `generate` call (0: all in one); `sampling`: generate's top_k,
    top_p, min_p, repetition_penalty, mesh."""
    eos = getattr(tokenizer, "eos_id", None)
    pad = pad_id(tokenizer)
    step = batch_size or max(len(prompts), 1)
    texts = []
    for start in range(0, len(prompts), step):
        ids, mask = left_pad([tokenizer.encode(p) for p in prompts[start:start + step]], pad)
        out = generate(model, params, ids, mask, max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed, eos_token_id=eos, pad_token_id=pad,
                       vocab_size=tokenizer.vocab_size, **sampling)
        for row in out.tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            texts.append(tokenizer.decode(row))
    return texts


def answer_line(text: str) -> str | None:
    """A completion's answer as exact match and votes read it: its first line without
    surrounding whitespace (what follows is the next example); None when that is empty."""
    return text.split("\n", 1)[0].strip() or None

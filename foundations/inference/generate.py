"""Autoregressive sampling without a cache: greedy (temperature 0) or temperature sampling.

Each new token re-runs the model over a fixed-length window of the context, so one compiled
function serves every step; when the window is full it slides left. (A KV cache makes each step
O(1) in the context length; that comes with the sampling toolbox.)
"""

from __future__ import annotations

import numpy as np


def sample_next(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """argmax at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def generate(trainer, params, prompt_ids: list[int], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, vocab_size: int | None = None,
             stop_id: int | None = None) -> list[int]:
    """Returns the new token ids (not the prompt). Ids >= vocab_size (table padding) are never
    sampled; generation stops early at `stop_id`."""
    window = trainer.seq_len
    rng = np.random.default_rng(seed)
    context = list(prompt_ids)[-window:] or [stop_id if stop_id is not None else 0]
    buffer = np.zeros((1, window), np.int32)
    new = []
    for _ in range(max_new_tokens):
        context = context[-window:]
        buffer[0, :len(context)] = context
        logits = trainer.next_token_logits(params, buffer, len(context) - 1)[0]
        if vocab_size is not None:
            logits = logits[:vocab_size]
        token = sample_next(logits, temperature, rng)
        if token == stop_id:
            break
        new.append(token)
        context.append(token)
    return new

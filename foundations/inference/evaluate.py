"""Validation metrics of a language model: loss (nats/token), perplexity and bits per byte.

Perplexity exp(loss) depends on the tokenizer; bits per byte = loss / ln 2 * tokens / bytes
does not, so it compares a byte-level model with a BPE model on the same text.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from foundations.data.pipeline import eval_batches


def evaluate(trainer, params, tokens: np.ndarray, bytes_per_token: float, batch_size: int,
             max_batches: int = 0) -> dict:
    """Mean loss over the validation windows (the first `max_batches` batches; 0: all)."""
    losses = [trainer.eval_loss(params, rows) for rows in eval_batches(
        tokens, trainer.seq_len, batch_size, max_batches, jax.process_index(),
        jax.process_count())]
    loss = float(np.mean(losses))
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": loss / math.log(2) / bytes_per_token}

"""Validation metrics of a language model: loss (nats/token), perplexity and bits per byte.

Perplexity exp(loss) depends on the tokenizer; bits per byte = loss / ln 2 * tokens / bytes
does not, so it compares a byte-level model with a BPE model on the same text.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from foundations.data.pipeline import document_eos, eval_batches


def evaluate(trainer, params, tokens: np.ndarray, bytes_per_token: float, batch_size: int,
             max_batches: int = 0) -> dict:
    """Mean loss over the validation windows (the first `max_batches` batches; 0: all), and the
    objective's own metrics (masked-token accuracy, replaced-token detection accuracy, ...)."""
    data = trainer.config.data
    eos = document_eos(data, trainer.objective.tokenizer)
    results = [trainer.eval_metrics(params, rows, i) for i, rows in enumerate(eval_batches(
        tokens, trainer.seq_len, batch_size, max_batches, jax.process_index(),
        jax.process_count(), eos, data.reset_positions))]
    means = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    loss = means.pop("loss")
    out = {"val_loss": loss}
    lm_loss = means.get("task_loss", loss)   # without MoE router losses
    objective = getattr(trainer, "objective", None)
    if objective is None or objective.reports_perplexity:
        out["val_ppl"] = math.exp(min(lm_loss, 50.0))
    if objective is None or objective.name == "clm":
        out["val_bpb"] = lm_loss / math.log(2) / bytes_per_token
    return {**out, **{f"val_{k}": v for k, v in means.items() if k != "ppl"}}


def describe(results: dict) -> str:
    """'val_loss 1.2345  ppl 3.44  bpb 1.781  mlm_accuracy 0.4120': the validation line."""
    parts = []
    for key, value in results.items():
        if key.startswith("val_"):
            name = key[4:]
            digits = {"ppl": 2, "bpb": 3}.get(name, 4)
            parts.append(f"{'val_loss' if name == 'loss' else name} {value:.{digits}f}")
    return "  ".join(parts)

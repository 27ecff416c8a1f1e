"""Validation metrics of a language model: loss (nats/token), perplexity and bits per byte.

Perplexity exp(loss) depends on the tokenizer; bits per byte = loss / ln 2 * tokens / bytes
does not, so it compares a byte-level model with a BPE model on the same text.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from foundations.data.pipeline import eval_window_batches
from foundations.data.text import document_eos
from foundations.parallel.mesh import batch_parallelism


def evaluate(trainer, params, tokens: np.ndarray, bytes_per_token: float, batch_size: int,
             windows: int = 0) -> dict:
    """Mean loss over the validation windows (`windows` of them spread evenly over the split,
    whatever the batch size; 0: all), and the objective's own metrics (masked-token accuracy,
    replaced-token detection accuracy, ...). Batches are weighted by their rows, so the result
    is the mean over windows however they are batched."""
    data = trainer.config.data
    eos = document_eos(data, trainer.objective.tokenizer)
    mesh = getattr(trainer, "mesh", None)
    multiple = (batch_parallelism(mesh) if mesh is not None else 1) \
        * trainer.config.mesh.microbatches
    results, weights = [], []
    for i, (rows, count) in enumerate(eval_window_batches(
            tokens, trainer.seq_len, batch_size, windows, jax.process_index(),
            jax.process_count(), multiple, eos, data.reset_positions)):
        results.append(trainer.eval_metrics(params, rows, i))
        weights.append(count)
    means = {k: float(np.average([r[k] for r in results], weights=weights)) for k in results[0]}
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

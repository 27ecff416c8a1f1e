"""The loss of a model on a text of any length, for `foundations eval`: a sliding window.

A text longer than the context is cut into windows that advance by `stride` tokens; each window
scores only the tokens no earlier window scored, so every token is scored exactly once, with at
least `context - stride` tokens before it (stride = context: windows side by side). Decoders score
each token after the first from the tokens before it; T5 reads a window's unscored tokens with
its encoder and predicts the rest with its decoder; BERT predicts a fixed `objective.mask_prob`
share of the text's tokens, each replaced by [MASK], from the window around it.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from foundations.config import ConfigError
from foundations.objectives.base import EVAL


def sliding_windows(n: int, size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, first_scored, end) of each window over positions [0, n): positions [start, end),
    at most `size` of them, of which [first_scored, end) are scored; together the windows score
    every position once. The first window scores all of its positions."""
    if not 1 <= stride <= size:
        raise ConfigError(f"--stride must be between 1 and the context of {size} tokens "
                          f"(got {stride})")
    windows, scored = [], 0
    while scored < n:
        end = min(n, size if scored == 0 else scored + stride)
        windows.append((max(0, end - size), scored, end))
        scored = end
    return windows


class TextScorer:
    """Sum of token losses and token count of one family's windows, one jitted batch at a time."""

    def __init__(self, trainer, stride: int = 0):
        self.trainer, self.objective = trainer, trainer.objective
        family, kind = trainer.model_cfg.family, trainer.config.objective.kind
        if kind == "electra":
            raise ConfigError("objective.kind=electra trains a replaced-token detector, which "
                              "gives no token probabilities to score; eval scores decoders, T5 "
                              "and masked-LM encoders")
        self.family = family
        seq_len = trainer.seq_len
        # decoders and T5 slide over the targets (tokens 1..n-1); BERT over all tokens, within
        # [CLS] ... [SEP]
        self.size = seq_len - 2 if family == "encoder" else seq_len
        self.stride = stride or self.size
        self._batch_loss = jax.jit(partial(_LOSSES[family], trainer))

    def min_tokens(self) -> int:
        return self.size + (0 if self.family == "encoder" else 1)

    def batches(self, tokens: np.ndarray, batch_size: int):
        """The text as batches of `batch_size` windows (fewer for a text of fewer windows; the
        last batch filled up with unscored copies), each a dict of the family's numpy arrays."""
        rows = self._rows(tokens)
        batch_size = min(batch_size, len(rows))
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            filler = [{**chunk[0], "weights": np.zeros_like(chunk[0]["weights"])}]
            chunk = chunk + filler * (batch_size - len(chunk))
            yield {k: np.stack([row[k] for row in chunk]) for k in chunk[0]}

    def _rows(self, tokens: np.ndarray) -> list[dict]:
        seq_len, pad = self.trainer.seq_len, 0
        if self.family == "encoder":
            ids = self.objective.ids
            selected = self.masked_positions(tokens)
            inputs = np.where(selected, ids["mask"], tokens)
            rows = []
            for start, first, end in sliding_windows(len(tokens), self.size, self.stride):
                scored = selected[start:end] & (np.arange(start, end) >= first)
                rows.append({
                    "inputs": np.concatenate([[ids["cls"]], inputs[start:end], [ids["sep"]]]),
                    "targets": np.concatenate([[pad], tokens[start:end], [pad]]),
                    "weights": np.concatenate([[0], scored, [0]]).astype(np.float32)})
            return rows
        rows = []
        for start, first, end in sliding_windows(len(tokens) - 1, self.size, self.stride):
            if self.family == "decoder":  # targets start+1 .. end, inputs start .. end-1
                rows.append({"inputs": tokens[start:end].astype(np.int32),
                             "targets": tokens[start + 1:end + 1].astype(np.int32),
                             "weights": (np.arange(start, end) >= first).astype(np.float32)})
            else:  # encdec: the encoder reads tokens start .. first, the decoder predicts the rest
                context = tokens[start:first + 1]
                targets = tokens[first + 1:end + 1]
                start_id = self.objective.ids["pad"]   # T5's decoder start
                rows.append({
                    "inputs": _pad_to(context, seq_len, pad),
                    "padding": np.arange(seq_len) < len(context),
                    "decoder_inputs": _pad_to(np.concatenate([[start_id], targets[:-1]]),
                                              seq_len, pad),
                    "targets": _pad_to(targets, seq_len, pad),
                    "weights": (np.arange(seq_len) < len(targets)).astype(np.float32)})
        return rows

    def masked_positions(self, tokens: np.ndarray) -> np.ndarray:
        """The tokens BERT is asked to predict: a fixed `objective.mask_prob` share of the
        maskable ones (the run's seed and the evaluation stream pick them)."""
        rng = np.random.default_rng([self.trainer.config.train.seed, EVAL])
        selected = (rng.random(len(tokens)) < self.trainer.config.objective.mask_prob) \
            & ~self.objective.special[tokens]
        if not selected.any():
            raise ConfigError(f"none of the text's {len(tokens)} tokens was chosen for masking; "
                              "give a longer text")
        return selected

    def loss(self, params, batch) -> tuple[float, float]:
        """(sum of the scored tokens' losses in nats, their count) on one batch."""
        total, count = self.trainer.in_mesh(self._batch_loss)(params, batch)
        return float(total), float(count)


def _pad_to(ids: np.ndarray, length: int, pad: int) -> np.ndarray:
    return np.concatenate([ids, np.full(length - len(ids), pad)]).astype(np.int32)


def _summed(logits, targets, weights):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(losses * weights), jnp.sum(weights)


def _decoder_loss(trainer, params, batch):
    logits, _ = trainer._apply(params, None, batch["inputs"])
    return _summed(logits, batch["targets"], batch["weights"])


def _encoder_loss(trainer, params, batch):
    out, _ = trainer._apply(params, None, batch["inputs"])
    return _summed(out["logits"], batch["targets"], batch["weights"])


def _encdec_loss(trainer, params, batch):
    logits, _ = trainer._apply(params, None, batch["inputs"], batch["decoder_inputs"],
                               batch["padding"])
    return _summed(logits, batch["targets"], batch["weights"])


_LOSSES = {"decoder": _decoder_loss, "encoder": _encoder_loss, "encdec": _encdec_loss}


def score_text(trainer, params, tokens: np.ndarray, bytes_per_token: float, batch_size: int,
               stride: int = 0, max_batches: int = 0) -> dict:
    """{'loss', 'tokens', and for decoders and T5 'ppl' and 'bpb'} of the text (the first
    `max_batches` batches of windows; 0: all of them)."""
    scorer = TextScorer(trainer, stride)
    if len(tokens) < scorer.min_tokens():
        raise ConfigError(f"{len(tokens)} tokens, fewer than one window of "
                          f"{scorer.min_tokens()}")
    total = count = 0.0
    for i, batch in enumerate(scorer.batches(tokens, batch_size)):
        if max_batches and i == max_batches:
            break
        batch_total, batch_count = scorer.loss(params, batch)
        total, count = total + batch_total, count + batch_count
    loss = total / count
    out = {"loss": loss, "tokens": int(count)}
    if scorer.family != "encoder":
        out["ppl"] = math.exp(min(loss, 50.0))
        out["bpb"] = loss / math.log(2) / bytes_per_token
    return out


def score_run(run, tokens: np.ndarray, bytes_per_token: float, batch_size: int,
              stride: int = 0, max_batches: int = 0) -> dict:
    """score_text of a run read by run.py `load_run`, through a Trainer built for its config
    and mesh (the evaluation step only: no optimizer state is made) around the run's own model
    (an adapter run's reads its adapters: a soft prompt, prefixes)."""
    from foundations.train.trainer import Trainer
    trainer = Trainer(run.config, run.mesh, run.tokenizer)
    trainer.model = run.model
    return score_text(trainer, run.params, tokens, bytes_per_token, batch_size, stride,
                      max_batches)

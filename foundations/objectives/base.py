"""What an objective is: a numpy transform of packed token windows into a model batch, and a
loss on the model's outputs. Causal LM and prefix LM live here; see mlm, span, electra.

Randomness in `prepare` comes from (seed, stream, step, process), never from global state, so a
resumed run sees the same corrupted batches and the data iterator stays the only data state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from foundations.models.decoder import output_head
from foundations.objectives.losses import (chunked_cross_entropy, cross_entropy,
                                          weighted_cross_entropy)

TRAIN, EVAL = 0, 1   # random streams of `prepare`


class Objective:
    """Causal LM: predict token t+1 from tokens <= t; the batch is the windows themselves."""
    name = "clm"
    reports_perplexity = True   # validation reports exp(loss) and bits per byte

    def __init__(self, config, tokenizer):
        self.config, self.model_cfg, self.tokenizer = config, config.model, tokenizer
        self.seq_len = config.data.seq_len
        self.seed = config.train.seed

    def rng(self, step: int, stream: int = TRAIN) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, step, jax.process_index()])

    def prepare(self, rows: np.ndarray, step: int, stream: int = TRAIN):
        """Windows (rows, seq_len + 1) -> the batch `loss` and `model_args` take."""
        return rows

    def model_args(self, batch) -> tuple:
        """The model's positional inputs for this batch (also used to initialise it)."""
        return (batch[:, :-1],)

    @staticmethod
    def packed(batch) -> tuple:
        """(tokens, the model's keyword inputs): packed windows with document masks
        (data.document_masks) are dicts that also carry segment ids and positions."""
        if not isinstance(batch, dict):
            return batch, {}
        return batch["tokens"], {k: v[:, :-1] for k, v in batch.items() if k != "tokens"}

    def with_aux(self, loss, aux, metrics: dict):
        """Adds the model's auxiliary losses (MoE routers) and reports both parts."""
        if self.model_cfg.moe.num_experts:
            metrics = {**metrics, "task_loss": loss, "router_loss": aux}
        return loss + aux, metrics

    def loss(self, apply, params, batch, rng):
        tokens, inputs = self.packed(batch)
        chunk = self.config.objective.loss_chunk_size
        if chunk:  # the head is applied chunk by chunk: no (B, T, V) logits
            hidden, aux = apply(params, rng, tokens[:, :-1], hidden=True, **inputs)
            loss = chunked_cross_entropy(hidden, output_head(self.model_cfg, params),
                                         tokens[:, 1:], chunk)
        else:
            logits, aux = apply(params, rng, tokens[:, :-1], **inputs)
            loss = cross_entropy(logits, tokens[:, 1:])
        return self.with_aux(loss, aux, {"ppl": jnp.exp(loss)})


class PrefixLM(Objective):
    """Prefix LM (UniLM, T5 'prefix LM'): each window splits at a random point; the prefix is
    seen bidirectionally and the rest is predicted causally, with the loss on the rest only."""
    name = "prefix_lm"

    def prepare(self, rows, step, stream=TRAIN):
        length = rows.shape[1] - 1
        prefix = self.rng(step, stream).integers(1, length, size=rows.shape[0])
        return {"tokens": rows, "prefix": prefix.astype(np.int32)}

    @staticmethod
    def mask(prefix: jax.Array, length: int) -> jax.Array:
        """(B,) prefix lengths -> (B, 1, T, T): key j visible to query i if j <= i or j < P."""
        i = jnp.arange(length)[:, None]
        j = jnp.arange(length)[None, :]
        return ((j <= i) | (j < prefix[:, None, None]))[:, None]

    def model_args(self, batch):
        return (batch["tokens"][:, :-1],)

    def loss(self, apply, params, batch, rng):
        tokens, prefix = batch["tokens"], batch["prefix"]
        length = tokens.shape[1] - 1
        logits, aux = apply(params, rng, tokens[:, :-1], mask=self.mask(prefix, length))
        predicted = jnp.arange(length)[None, :] >= prefix[:, None] - 1  # targets past the prefix
        loss, accuracy = weighted_cross_entropy(logits, tokens[:, 1:], predicted)
        return self.with_aux(loss, aux, {"ppl": jnp.exp(loss), "accuracy": accuracy})

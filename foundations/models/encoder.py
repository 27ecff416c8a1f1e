"""The encoder-only Transformer (BERT): bidirectional blocks over token + segment + position
embeddings, with a masked-LM head tied to the token embeddings and a [CLS] pooler.

BERT is this module with norm_position=post (LayerNorm after each residual and on the summed
embeddings), learned positions and gelu; ELECTRA's discriminator swaps the MLM head for a
per-token binary head (`head="rtd"`). Padding keys are masked out of attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.decoder import stacked_blocks
from foundations.models.layers import Einsum, Embedding, Norm, activation, constrain, zeros
from foundations.models.positions import add_positions, attention_bias


def mean_pool(hidden: jax.Array, padding: jax.Array | None) -> jax.Array:
    """Sentence embeddings: the mean of the hidden states over the real (non-pad) tokens."""
    if padding is None:
        return hidden.mean(axis=1)
    weights = padding.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


class Encoder(nn.Module):
    """Token ids (B, T) [+ segment ids, padding (B, T) bool: True = real token] -> a dict with
    `hidden` (B, T, d), `pooled` ([CLS] pooler, (B, d)) and `logits`: MLM (B, T, vocab) or
    replaced-token detection (B, T)."""
    cfg: ModelConfig
    head: str = "mlm"   # mlm | rtd

    @nn.compact
    def __call__(self, tokens, segments=None, padding=None, deterministic: bool = True):
        cfg = self.cfg
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = Embedding(cfg, cfg.vocab_size, ("vocab", "embed"), name="token_embed")
        x = add_positions(cfg, embed(tokens), positions)
        if cfg.type_vocab_size:
            segments = jnp.zeros_like(tokens) if segments is None else segments
            x = x + Embedding(cfg, cfg.type_vocab_size, ("segment", "embed"),
                              name="segment_embed")(segments)
        if cfg.norm_position == "post":
            x = Norm(cfg, name="embed_norm")(x)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "act_embed"))
        mask = None if padding is None else padding[:, None, None, :]
        bias = attention_bias(cfg, tokens.shape[1], bidirectional=True)
        x, _ = stacked_blocks(cfg, deterministic, causal=False)(
            x, positions, mask, bias, None, None)
        if cfg.norm_position == "pre":
            x = Norm(cfg, name="final_norm")(x)

        def dense(features, axes, name):
            return Einsum(cfg, "btd,df->btf", (cfg.d_model, features), axes, cfg.init_std,
                          bias_axes=axes[-1:], name=name)

        pooled = jnp.tanh(dense(cfg.d_model, ("embed", None), "pooler")(x[:, :1]))[:, 0]
        h = activation(cfg, dense(cfg.d_model, ("embed", None), f"{self.head}_transform")(x))
        h = Norm(cfg, name=f"{self.head}_norm")(h)
        if self.head == "rtd":
            logits = dense(1, (None, None), "rtd_out")(h)[..., 0]
        else:
            logits = embed.attend(h)
            if cfg.use_bias:
                logits = logits + self.param("mlm_bias", zeros(("vocab",)), (cfg.vocab_size,))
            logits = constrain(logits, ("batch", "length", "act_vocab"))
        return {"hidden": x, "pooled": pooled, "logits": logits}

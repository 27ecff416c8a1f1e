"""The decoder-only Transformer (GPT-2, LLaMA, ...): one model, the family is its config.

tokens -> token embedding (+ learned positions) -> L pre-norm blocks -> final norm -> logits.
The L identical blocks run under `nn.scan`: their parameters are stacked on a leading `layers`
axis, compile time stays flat in depth, and a pipeline can later split that axis into stages.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.attention import CausalSelfAttention
from foundations.models.layers import Einsum, Embedding, Mlp, Norm, constrain
from foundations.models.positions import LearnedPositions

REMAT_POLICIES = {
    "full": None,  # keep nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): the pre-norm residual block."""
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions):
        x = x + CausalSelfAttention(self.cfg, name="attention")(
            Norm(self.cfg, name="attention_norm")(x), positions, self.deterministic)
        x = x + Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x), self.deterministic)
        return constrain(x, ("batch", "length", "act_embed")), None


def stacked_blocks(cfg: ModelConfig, deterministic: bool, name: str = "blocks"):
    """cfg.num_layers Blocks under nn.scan (and nn.remat if asked); params get a `layers` axis."""
    block = Block
    if cfg.remat != "none":
        block = nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat])
    scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                      "dropout": True}, in_axes=(nn.broadcast,), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(cfg, deterministic, name=name)


class Decoder(nn.Module):
    """Maps token ids (B, T) to next-token logits (B, T, vocab_size)."""
    cfg: ModelConfig
    pipeline: Any = None  # a parallel.pipeline.Pipeline: run the same blocks as pipeline stages

    @nn.compact
    def __call__(self, tokens, positions=None, deterministic: bool = True):
        cfg = self.cfg
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = Embedding(cfg, cfg.vocab_size, ("vocab", "embed"), name="token_embed")
        x = embed(tokens)
        if cfg.positions == "learned":
            x = x + LearnedPositions(cfg, name="pos_embed")(positions)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "act_embed"))
        if self.pipeline is not None and not self.is_initializing():
            x = self.pipeline(cfg, self.variables["params"]["blocks"], x, positions)
        else:
            x, _ = stacked_blocks(cfg, deterministic)(x, positions)
        x = Norm(cfg, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Einsum(cfg, "btd,dv->btv", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            cfg.init_std, name="lm_head")(x)
        return constrain(logits, ("batch", "length", "act_vocab"))

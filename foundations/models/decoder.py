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

from foundations.config import ModelConfig, scan_unroll_for
from foundations.models.adapters import prompt_inputs
from foundations.models.attention import Attention, segment_mask
from foundations.models.kv_cache import CachedPositions, decode_mask
from foundations.models.layers import DTYPES, Einsum, Embedding, Mlp, Norm, constrain
from foundations.models.moe import MoeMlp
from foundations.models.positions import add_positions, attention_bias, positions_bias

REMAT_POLICIES = {
    "full": None,  # keep nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """Attention, [cross-attention,] MLP, each a residual: pre-norm x + f(norm(x)) (GPT-2, LLaMA,
    T5) or post-norm norm(x + f(x)) (BERT). The MLP is a mixture of experts if moe.num_experts."""
    cfg: ModelConfig
    deterministic: bool = True
    causal: bool = True
    cross: bool = False
    decode: str = ""   # "", "prefill" or "step": attention reads and writes the KV cache

    @nn.compact
    def __call__(self, x, positions, mask=None, bias=None, context=None, context_mask=None):
        cfg, det = self.cfg, self.deterministic

        def residual(x, layer, name):
            if cfg.norm_position == "post":
                return Norm(cfg, name=f"{name}_norm")(x + layer(x))
            return x + layer(Norm(cfg, name=f"{name}_norm")(x))

        x = residual(x, lambda h: Attention(cfg, self.causal, self.decode, name="attention")(
            h, positions, det, mask, bias), "attention")
        if self.cross:
            x = residual(x, lambda h: Attention(cfg, False, self.decode, name="cross_attention")(
                h, positions, det, context_mask, None, context), "cross_attention")
        mlp = MoeMlp if cfg.moe.num_experts else Mlp
        x = residual(x, lambda h: mlp(cfg, name="mlp")(h, det), "mlp")
        return constrain(x, ("batch", "length", "act_embed")), None


class LayerList(nn.Module):
    """The blocks of a stack one after another, each with its own parameters and cache under
    `layer_{i}`, not stacked on a `layers` axis: the decoding layout (see `per_layer_params`),
    where each step reads every layer's weights in place (XLA:CPU copies a stacked layer's
    slice before its matmuls, which doubles a decode step's weight reads)."""
    cfg: ModelConfig
    deterministic: bool = True
    causal: bool = True
    cross: bool = False
    decode: str = ""
    num_layers: int = 0

    @nn.compact
    def __call__(self, x, positions, mask=None, bias=None, context=None, context_mask=None):
        for i in range(self.num_layers or self.cfg.num_layers):
            x, _ = Block(self.cfg, self.deterministic, self.causal, self.cross, self.decode,
                         name=f"layer_{i}")(x, positions, mask, bias, context, context_mask)
        return x, None


def per_layer_params(stack):
    """A stacked stack's parameters (or cache) {...: (layers, ...)} as LayerList's:
    {"layer_0": {...}, "layer_1": {...}, ...}, each leaf its own array (copied once)."""
    stack = nn.unbox(stack)   # init's boxes name the stacked axes; the slices have one fewer
    count = jax.tree.leaves(stack)[0].shape[0]
    return {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stack) for i in range(count)}


def stacked_blocks(cfg: ModelConfig, deterministic: bool, name: str = "blocks",
                   causal: bool = True, cross: bool = False, num_layers: int = 0,
                   decode: str = "", per_layer: bool = False):
    """num_layers (default cfg.num_layers) Blocks under nn.scan (and nn.remat if asked); params
    (and KV caches) get a `layers` axis. Call with (x, positions, mask, bias, context,
    context_mask). `per_layer`: a LayerList instead (the same blocks, parameters per layer)."""
    if per_layer:
        return LayerList(cfg, deterministic, causal, cross, decode, num_layers, name=name)
    block = Block
    if cfg.remat != "none":
        block = nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat])
    scanned = nn.scan(block, variable_axes={"params": 0, "intermediates": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 5,
                      length=num_layers or cfg.num_layers,
                      unroll=scan_unroll_for(cfg, jax.default_backend(), num_layers),
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(cfg, deterministic, causal, cross, decode, name=name)


class Decoder(nn.Module):
    """Maps token ids (B, T) to next-token logits (B, T, vocab_size). A boolean `mask`
    (B, 1, T, T) replaces the causal mask (prefix LM: bidirectional over the prefix); `segments`
    (B, T) ids of packed documents keep attention within each (data.document_masks).

    `decode="prefill"` (the prompt, into an empty cache) and then `decode="step"` (one token a
    call) run against the 'cache' collection (apply with mutable=["cache"]); `positions` are then
    required, -1 marking padding (inference/generate.py). `hidden=True` returns the final-norm
    states (B, T, d_model) instead, for a loss that applies `output_head` itself.

    `soft_prompt=P` (a prompt-tuned run, models/adapters.py): the last P rows of the token table
    are a soft prompt whose ids go before every input (at the prefill, with a cache) and whose
    outputs are cut off again, as are their logits: the model reads and writes text only, in
    cfg.vocab_size - P ids."""
    cfg: ModelConfig
    pipeline: Any = None  # a parallel.gpipe.Pipeline: run the same blocks as pipeline stages
    per_layer: bool = False   # the blocks' params per layer (LayerList), as decoding reads them
    soft_prompt: int = 0

    @nn.compact
    def __call__(self, tokens, positions=None, deterministic: bool = True, mask=None,
                 decode: str = "", segments=None, hidden: bool = False):
        cfg = self.cfg
        p = self.soft_prompt
        if p and not decode:
            tokens, positions, mask = prompt_inputs(tokens, positions, mask, segments,
                                                    cfg.vocab_size - p, p)
            segments = None
        elif p:   # the cache's positions: padding stays -1, the soft prompt comes first
            positions = jnp.where(positions >= 0, positions + p, -1)
            if decode == "prefill":
                rows = tokens.shape[0]
                tokens = jnp.concatenate([jnp.broadcast_to(
                    cfg.vocab_size - p + jnp.arange(p), (rows, p)).astype(tokens.dtype),
                    tokens], axis=1)
                positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (rows, p)).astype(
                    positions.dtype), positions], axis=1)
        out = self._decode(tokens, positions, deterministic, mask, decode, segments, hidden)
        if p:
            out = out if decode == "step" else out[:, p:]
            out = out if hidden else out[..., :cfg.vocab_size - p]
        return out

    def _decode(self, tokens, positions, deterministic, mask, decode, segments, hidden):
        cfg = self.cfg
        if segments is not None:
            mask = segment_mask(segments)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if decode:
            key_positions, key_valid = CachedPositions(name="cache_positions")(positions, decode)
            mask = decode_mask(cfg, positions, key_positions, key_valid)
            bias = positions_bias(cfg, positions, key_positions, bidirectional=False)
            positions = jnp.maximum(positions, 0)  # padding (-1) is masked out: any will do
        embed = Embedding(cfg, cfg.vocab_size, ("vocab", "embed"), name="token_embed")
        x = add_positions(cfg, embed(tokens), positions)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "act_embed"))
        if not decode:
            bias = attention_bias(cfg, tokens.shape[1], bidirectional=False)
        if self.pipeline is not None and not self.is_initializing():
            x = self.pipeline(cfg, self.variables["params"]["blocks"], x, positions)
        else:
            x, _ = stacked_blocks(cfg, deterministic, causal=mask is None, decode=decode,
                                  per_layer=self.per_layer)(x, positions, mask, bias, None, None)
        x = Norm(cfg, name="final_norm")(x)
        if hidden:
            return x
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Einsum(cfg, "btd,dv->btv", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            cfg.init_std, name="lm_head")(x)
        return constrain(logits, ("batch", "length", "act_vocab"))


def output_head(cfg: ModelConfig, params) -> jax.Array:
    """The (d_model, vocab_size) matrix the Decoder's logits are its final states times, in the
    compute dtype: the token table, transposed, when tied, else the lm_head kernel."""
    if cfg.tie_embeddings:
        head = params["token_embed"]["embedding"].T
    else:
        head = params["lm_head"]["kernel"]
    return head.astype(DTYPES[cfg.dtype])

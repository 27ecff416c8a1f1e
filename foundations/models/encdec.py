"""The encoder-decoder Transformer (T5): a bidirectional encoder, a causal decoder that also
cross-attends to the encoder's output, token embeddings shared by both and by the output head.

T5 is this module with rmsnorm (no bias, no mean), pre-norm, positions=t5_bias (one bucketed
relative-position table per stack, shared by its layers), use_bias=false and tied embeddings
(the output is then scaled by d_model^-0.5, as in T5).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.decoder import stacked_blocks
from foundations.models.kv_cache import CachedPositions, decode_mask
from foundations.models.layers import Einsum, Embedding, Norm, constrain
from foundations.models.positions import add_positions, attention_bias, positions_bias


class EncoderDecoder(nn.Module):
    """(inputs (B, S), decoder_inputs (B, T)[, input_padding (B, S)]) -> logits (B, T, vocab).

    For generation, `encode` runs the encoder once and `decode` runs the decoder against the KV
    cache (models/kv_cache.py), cross-attending to the encoder's output."""
    cfg: ModelConfig
    per_layer: bool = False   # the decoder's blocks' params per layer (LayerList), for decoding

    @nn.compact
    def __call__(self, inputs, decoder_inputs, input_padding=None, deterministic: bool = True,
                 encoded=None, decoder_positions=None, decode: str = ""):
        """decoder_inputs None: stop after the encoder; `encoded` given: skip it."""
        cfg = self.cfg
        embed = Embedding(cfg, cfg.vocab_size, ("vocab", "embed"), name="token_embed")

        def embed_stack(tokens, name, positions=None):
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
            x = embed(tokens)
            if cfg.positions.kind in ("learned", "sinusoidal"):
                x = _Positions(cfg, name=f"{name}_positions")(x, positions)
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
            return constrain(x, ("batch", "length", "act_embed")), positions

        mask = None if input_padding is None else input_padding[:, None, None, :]
        context = encoded
        if context is None:
            x, positions = embed_stack(inputs, "encoder")
            bias = attention_bias(cfg, inputs.shape[1], bidirectional=True,
                                  name="encoder_rel_bias")
            x, _ = stacked_blocks(cfg, deterministic, name="encoder", causal=False)(
                x, positions, mask, bias, None, None)
            context = Norm(cfg, name="encoder_norm")(x)
            if decoder_inputs is None:
                return context

        self_mask = None
        if decode:
            positions = decoder_positions
            key_positions, key_valid = CachedPositions(name="decoder_cache_positions")(
                positions, decode)
            self_mask = decode_mask(cfg, positions, key_positions, key_valid)
            bias = positions_bias(cfg, positions, key_positions, bidirectional=False,
                                  name="decoder_rel_bias")
        else:
            bias = attention_bias(cfg, decoder_inputs.shape[1], bidirectional=False,
                                  name="decoder_rel_bias")
        y, positions = embed_stack(decoder_inputs, "decoder", decoder_positions)
        y, _ = stacked_blocks(cfg, deterministic, name="decoder", causal=not decode, cross=True,
                              num_layers=cfg.num_decoder_layers, decode=decode,
                              per_layer=self.per_layer)(
            y, positions, self_mask, bias, context, mask)
        y = Norm(cfg, name="decoder_norm")(y)
        if cfg.tie_embeddings:
            logits = embed.attend(y * cfg.d_model ** -0.5)
        else:
            logits = Einsum(cfg, "btd,dv->btv", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            cfg.init_std, name="lm_head")(y)
        return constrain(logits, ("batch", "length", "act_vocab"))

    def encode(self, inputs, input_padding=None):
        """The encoder's output (B, S, d_model), which `decode` cross-attends to."""
        return self(inputs, None, input_padding)

    def decode(self, encoded, decoder_inputs, positions, input_padding=None, mode="step"):
        """Decoder logits (B, T, vocab) against the KV cache: mode "prefill" (restarts it and
        stores the cross-attention keys/values), then "step" (one token per row)."""
        return self(None, decoder_inputs, input_padding, encoded=encoded,
                    decoder_positions=positions, decode=mode)


class _Positions(nn.Module):
    """Absolute positions for one stack (each stack has its own learned table)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions):
        return add_positions(self.cfg, x, positions)

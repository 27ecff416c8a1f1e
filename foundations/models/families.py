"""One entry point from config to model: the family (and the ELECTRA objective) picks the module.

decoder: GPT-2, LLaMA, Mixtral (model.moe.num_experts > 0); encoder: BERT; encdec: T5; an encoder
trained with `objective.kind=electra` becomes a generator + discriminator pair; a decoder given a
pipeline schedule runs its blocks as pipeline stages.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import Config, ModelConfig
from foundations.models.decoder import Decoder
from foundations.models.encdec import EncoderDecoder
from foundations.models.encoder import Encoder


def generator_config(cfg: ModelConfig, scale: float) -> ModelConfig:
    """ELECTRA's generator: the discriminator's depth and head size, `scale` of its width."""
    heads = max(1, round(cfg.num_heads * scale))
    d_model = heads * cfg.head_dim
    return dataclasses.replace(cfg, num_heads=heads, num_kv_heads=heads, d_model=d_model,
                               d_ff=max(1, round(cfg.d_ff * d_model / cfg.d_model)))


class Electra(nn.Module):
    """A small MLM generator fills the selected positions with samples; the discriminator
    labels every token original or replaced. Returns generator logits, discriminator logits
    and the corrupted input the discriminator saw."""
    cfg: ModelConfig
    generator_scale: float = 0.25

    @nn.compact
    def __call__(self, inputs, selected, segments=None, padding=None,
                 deterministic: bool = True):
        gen_cfg = generator_config(self.cfg, self.generator_scale)
        gen_logits = Encoder(gen_cfg, name="generator")(inputs, segments, padding,
                                                         deterministic)["logits"]
        sampled = jax.random.categorical(self.make_rng("sample"),
                                         jax.lax.stop_gradient(gen_logits.astype(jnp.float32)))
        corrupted = jnp.where(selected, sampled, inputs)
        disc_logits = Encoder(self.cfg, head="rtd", name="discriminator")(
            corrupted, segments, padding, deterministic)["logits"]
        return gen_logits, disc_logits, corrupted


def build_model(config: Config, pipeline=None) -> nn.Module:
    """The model of `config` (`pipeline`: a parallel.gpipe.Pipeline for a causal decoder)."""
    cfg = config.model
    if pipeline is not None:
        return Decoder(cfg, pipeline=pipeline)
    if config.objective.kind == "electra":
        return Electra(cfg, config.objective.generator_scale)
    return {"decoder": Decoder, "encoder": Encoder, "encdec": EncoderDecoder}[cfg.family](cfg)

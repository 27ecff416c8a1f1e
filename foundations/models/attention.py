"""Causal multi-head self-attention with grouped-query heads, on `jax.nn.dot_product_attention`.

`num_kv_heads < num_heads` shares each key/value head among a group of query heads (GQA; 1 is MQA).
`attention_impl` picks the kernel: 'xla' everywhere, 'cudnn' for the fused flash kernel on GPUs.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from foundations.config import ModelConfig
from foundations.models.layers import Einsum, constrain, residual_std
from foundations.models.positions import apply_rope


class CausalSelfAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, deterministic: bool = True):
        cfg = self.cfg

        def project(heads, name):
            axes = ("embed", "heads" if name == "query" else "kv_heads", "head_dim")
            return Einsum(cfg, "btd,dhk->bthk", (cfg.d_model, heads, cfg.head_dim), axes,
                          cfg.init_std, bias_axes=axes[1:], name=name)(x)

        q = project(cfg.num_heads, "query")
        k = project(cfg.num_kv_heads, "key")
        v = project(cfg.num_kv_heads, "value")
        if cfg.positions == "rope":
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))
        k = constrain(k, ("batch", "length", "act_kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "act_kv_heads", "head_dim"))
        impl = None if cfg.attention_impl == "auto" else cfg.attention_impl
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
        out = constrain(out, ("batch", "length", "act_heads", "head_dim"))
        out = Einsum(cfg, "bthk,hkd->btd", (cfg.num_heads, cfg.head_dim, cfg.d_model),
                     ("heads", "head_dim", "embed"), residual_std(cfg), bias_axes=("embed",),
                     name="out")(out)
        return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)

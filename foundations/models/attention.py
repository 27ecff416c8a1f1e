"""Multi-head attention with grouped-query heads, on `jax.nn.dot_product_attention`.

One module for every kind the families need: causal or bidirectional self-attention, an optional
boolean mask (padding, prefix LM) and additive bias (ALiBi, T5 relative positions), a sliding
window (`local_window_size`), and cross-attention (keys/values from `context`).
`num_kv_heads < num_heads` shares each key/value head among a group of query heads (GQA; 1 is MQA).
`attention_impl` picks the kernel: 'xla' everywhere, 'cudnn' for the fused flash kernel on GPUs.
With `decode` set ("prefill", then "step" once per new token) the keys and values live in the
'cache' collection (models/kv_cache.py); the caller's mask then says which cached keys each query
sees (causality, padding and the window included). Prefix tuning's keys and values, when the
layer's parameters hold them (models/adapters.py with_prefix), are attended to before the
sequence's own, with or without a cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.kv_cache import cache_cross_attention, cache_self_attention
from foundations.models.layers import Einsum, constrain, dtypes, residual_std
from foundations.models.positions import apply_rope, scaled_rope


def window(cfg: ModelConfig, causal: bool):
    """(left, right) keys visible around each query for `local_window_size`, or None."""
    w = cfg.local_window_size
    return None if not w else (w - 1, 0 if causal else w - 1)


def segment_mask(segments, causal: bool = True):
    """(B, T) segment ids -> (B, 1, T, T): key j visible to query i only within i's segment
    (packed documents), and for causal attention only if j <= i."""
    mask = segments[:, :, None] == segments[:, None, :]
    if causal:
        length = segments.shape[1]
        mask &= jnp.tril(jnp.ones((length, length), bool))[None]
    return mask[:, None]


def prefix_keys_values(module: nn.Module, k, v, mask, causal: bool, queries: int):
    """Prefix tuning: the layer's (P, kv_heads, head_dim) prefix_key and prefix_value
    parameters go before the keys and values it attends to, and every one of its `queries`
    sees them (the mask gets P visible columns)."""
    rows, length = k.shape[:2]
    pk, pv = (jnp.broadcast_to(module.get_variable("params", name).astype(k.dtype),
                               (rows, *module.get_variable("params", name).shape))
              for name in ("prefix_key", "prefix_value"))
    if mask is None:
        mask = jnp.tril(jnp.ones((length, length), bool)) if causal else \
            jnp.ones((length, length), bool)
    mask = jnp.broadcast_to(mask, (rows, 1, queries, length))
    seen = jnp.ones((rows, 1, queries, pk.shape[1]), bool)
    return (jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1),
            jnp.concatenate([seen, mask], axis=3))


def fused_qkv(cfg: ModelConfig, x, projections):
    """q, k, v from one einsum over the three kernels stacked beside the heads axis,
    (embed, 3, heads, head_dim): x is read once and the matmul is three times wider. The
    parameters stay the three named kernels (checkpoints, LoRA and HF conversion are unchanged)."""
    dtype = dtypes(cfg)["dtype"]
    kernel = jnp.stack([p.kernel.astype(dtype) for p in projections], axis=1)
    qkv = jnp.einsum("btd,dshk->sbthk", x.astype(dtype), kernel)
    if projections[0].bias is not None:
        qkv = qkv + jnp.stack([p.bias.astype(dtype) for p in projections])[:, None, None]
    return qkv[0], qkv[1], qkv[2]


class Attention(nn.Module):
    """Self-attention (context None) or cross-attention; `causal` masks future keys."""
    cfg: ModelConfig
    causal: bool = True
    decode: str = ""   # "": no cache; "prefill" (an empty cache), then "step" (one token)

    @nn.compact
    def __call__(self, x, positions, deterministic: bool = True, mask=None, bias=None,
                 context=None):
        cfg = self.cfg
        kv_input = x if context is None else context

        def projection(heads, name):
            axes = ("embed", "heads" if name == "query" else "kv_heads", "head_dim")
            return Einsum(cfg, "btd,dhk->bthk", (cfg.d_model, heads, cfg.head_dim), axes,
                          cfg.init_std, bias_axes=axes[1:], name=name)

        query = projection(cfg.num_heads, "query")
        if context is not None and self.decode == "step":  # computed once, at the prefill
            q = query(x)
            k, v = cache_cross_attention(self, None, None)
        elif context is None and cfg.fuse_qkv and cfg.num_kv_heads == cfg.num_heads:
            q, k, v = fused_qkv(cfg, x, [query, projection(cfg.num_heads, "key"),
                                         projection(cfg.num_heads, "value")])
        else:
            q = query(x)
            k = projection(cfg.num_kv_heads, "key")(kv_input)
            v = projection(cfg.num_kv_heads, "value")(kv_input)
        if cfg.positions.kind == "rope" and context is None:
            rope_positions, theta = scaled_rope(positions, cfg.head_dim, cfg.positions.theta,
                                                cfg.positions.scaling, cfg.positions.factor)
            q = apply_rope(q, rope_positions, theta)
            k = apply_rope(k, rope_positions, theta)
        if self.decode and context is None:
            k, v = cache_self_attention(self, k, v, self.decode)
        elif self.decode == "prefill":
            cache_cross_attention(self, k, v)
        causal = self.causal
        if self.has_variable("params", "prefix_key") and context is None:
            k, v, mask = prefix_keys_values(self, k, v, mask, causal, q.shape[1])
            causal = False
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))
        k = constrain(k, ("batch", "length", "act_kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "act_kv_heads", "head_dim"))
        impl = None if cfg.attention_impl == "auto" else cfg.attention_impl
        if bias is not None:
            bias = bias.astype(q.dtype)
        out = jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, is_causal=causal, implementation=impl,
            scale=None if cfg.scale_attention else 1.0,
            local_window_size=window(cfg, self.causal) if context is None and not self.decode
            else None)
        out = constrain(out, ("batch", "length", "act_heads", "head_dim"))
        out = Einsum(cfg, "bthk,hkd->btd", (cfg.num_heads, cfg.head_dim, cfg.d_model),
                     ("heads", "head_dim", "embed"), residual_std(cfg), bias_axes=("embed",),
                     name="out")(out)
        return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)



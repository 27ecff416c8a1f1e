"""Mixture of experts (Mixtral-style): a top-k router sends each token to k of E expert MLPs.

Routing: softmax over the k selected router logits (as Mixtral). The Switch/Mixtral
load-balancing loss and the ST-MoE router z-loss are sown into the `intermediates` collection,
from which the trainer adds them to the training loss. Dispatch is GShard-style one-hot einsums
over groups (one sequence each): with capacity_factor 0 every expert has room for the whole
group (dropless, costing E/k x the expert FLOPs of a sorted grouped matmul); with a capacity
factor, tokens past an expert's capacity C = ceil(cf * k * T / E) are dropped (first choices are
placed before second choices). Expert weights carry the `expert` logical axis.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.layers import dtypes, mlp_hidden, normal, residual_std, zeros


def route(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Router logits (..., E) -> the top-k expert ids and their weights: a softmax over the
    selected logits only."""
    top_logits, top_ids = jax.lax.top_k(logits, k)
    return top_ids, jax.nn.softmax(top_logits, axis=-1)


def load_balancing_loss(logits: jax.Array, top_ids: jax.Array, num_experts: int) -> jax.Array:
    """E * sum_e f_e * P_e: f_e the share of tokens sending one of their k choices to expert e,
    P_e the mean router probability of e (Switch eq. 4; Mixtral/HF form, = k when balanced)."""
    logits = logits.reshape(-1, num_experts)
    chosen = jax.nn.one_hot(top_ids.reshape(logits.shape[0], -1), num_experts).sum(axis=1)
    fraction = chosen.mean(axis=0)
    probability = jax.nn.softmax(logits, axis=-1).mean(axis=0)
    return num_experts * jnp.sum(fraction * probability)


def router_z_loss(logits: jax.Array) -> jax.Array:
    """mean(logsumexp(logits)^2): keeps router logits small (ST-MoE)."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)


def expert_capacity(cfg: ModelConfig, group_size: int) -> int:
    """Slots per expert and group: the whole group when dropless, else cf * k * T / E."""
    if cfg.moe.capacity_factor <= 0:
        return group_size
    slots = math.ceil(cfg.moe.capacity_factor * cfg.moe.experts_per_token * group_size / cfg.moe.num_experts)
    return max(1, min(group_size, slots))


def dispatch_masks(top_ids, weights, num_experts: int, capacity: int):
    """(G, T, k) choices -> dispatch (G, T, E, C) one-hots and combine weights (G, T, E, C)."""
    groups, length, k = top_ids.shape
    chosen = jax.nn.one_hot(top_ids, num_experts, dtype=jnp.int32)           # (G, T, k, E)
    by_priority = jnp.swapaxes(chosen, 1, 2).reshape(groups, k * length, num_experts)
    slot = jnp.cumsum(by_priority, axis=1) * by_priority - 1                 # -1: not routed
    slot = jnp.swapaxes(slot.reshape(groups, k, length, num_experts), 1, 2)  # (G, T, k, E)
    slot = jnp.where(slot < capacity, slot, -1)                              # over capacity
    onehot = jax.nn.one_hot(slot, capacity, dtype=weights.dtype)             # -1 -> zeros
    dispatch = onehot.sum(axis=2)
    combine = (onehot * weights[..., None, None]).sum(axis=2)
    return dispatch, combine


class MoeMlp(nn.Module):
    """Drop-in replacement for Mlp: E expert MLPs (any model.mlp kind) behind a top-k router."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.cfg
        num_experts, d, f = cfg.moe.num_experts, cfg.d_model, cfg.d_ff
        kinds = dtypes(cfg)
        router = self.param("router", normal(cfg.init_std, ("embed", None)), (d, num_experts),
                            kinds["param_dtype"])
        logits = jnp.einsum("btd,de->bte", x.astype(jnp.float32), router.astype(jnp.float32))
        top_ids, weights = route(logits, cfg.moe.experts_per_token)
        self.sow("intermediates", "router_aux_loss",
                 cfg.moe.aux_loss_coef * load_balancing_loss(logits, top_ids, num_experts))
        self.sow("intermediates", "router_z_loss", cfg.moe.z_loss_coef * router_z_loss(logits))

        def weight(name, shape, axes, std):
            return self.param(name, normal(std, axes), shape, kinds["param_dtype"]).astype(
                kinds["dtype"])

        def bias(name, shape, axes):
            if not cfg.use_bias:
                return 0.0
            return self.param(name, zeros(axes), shape, kinds["param_dtype"]).astype(
                kinds["dtype"])[:, None, None, :]

        capacity = expert_capacity(cfg, x.shape[1])
        dispatch, combine = dispatch_masks(top_ids, weights, num_experts, capacity)
        h = x.astype(kinds["dtype"])
        expert_in = jnp.einsum("btec,btd->ebcd", dispatch.astype(h.dtype), h)
        up = jnp.einsum("ebcd,edf->ebcf", expert_in, weight(
            "up", (num_experts, d, f), ("expert", "embed", "mlp"), cfg.init_std))
        up = up + bias("up_bias", (num_experts, f), ("expert", "mlp"))

        def gate():
            g = jnp.einsum("ebcd,edf->ebcf", expert_in, weight(
                "gate", (num_experts, d, f), ("expert", "embed", "mlp"), cfg.init_std))
            return g + bias("gate_bias", (num_experts, f), ("expert", "mlp"))
        hidden = mlp_hidden(cfg, up, gate)
        out = jnp.einsum("ebcf,efd->ebcd", hidden, weight(
            "down", (num_experts, f, d), ("expert", "mlp", "embed"), residual_std(cfg)))
        out = out + bias("down_bias", (num_experts, d), ("expert", "embed"))
        y = jnp.einsum("btec,ebcd->btd", combine.astype(out.dtype), out)
        return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)

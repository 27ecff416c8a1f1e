"""Mixture of experts (Mixtral-style): a top-k router sends each token to k of E expert MLPs.

Routing: softmax over the k selected router logits (as Mixtral). The Switch/Mixtral
load-balancing loss and the ST-MoE router z-loss are sown into the `intermediates` collection,
from which the trainer adds them to the training loss. Dispatch is GShard-style one-hot einsums
over groups (one sequence each): with capacity_factor 0 every expert has room for the whole
group (dropless, costing E/k x the expert FLOPs of a sorted grouped matmul); with a capacity
factor, tokens past an expert's capacity C = ceil(cf * k * T / E) are dropped (first choices are
placed before second choices). `moe.dispatch=grouped` keeps those semantics but sorts the
(token, choice) pairs by expert and runs each projection as one `jax.lax.ragged_dot`: k x the
dense MLP's FLOPs whatever the capacity (dropped pairs get weight 0). Expert weights carry the
`expert` logical axis.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import GATED_MLPS, ModelConfig
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


def kept_choices(top_ids, num_experts: int, capacity: int) -> jax.Array:
    """(G, T, k) choices -> (G, T, k) bools: whether each finds a slot (dispatch_masks' rule)."""
    groups, length, k = top_ids.shape
    chosen = jax.nn.one_hot(top_ids, num_experts, dtype=jnp.int32)           # (G, T, k, E)
    by_priority = jnp.swapaxes(chosen, 1, 2).reshape(groups, k * length, num_experts)
    slot = jnp.sum(jnp.cumsum(by_priority, axis=1) * by_priority, axis=-1) - 1
    return jnp.swapaxes(slot.reshape(groups, k, length), 1, 2) < capacity


def grouped_experts(h, top_ids, weights, kept, expert_mlp, num_experts: int):
    """sum_k weight * expert_mlp(token) over each token's kept choices, computed with the
    (token, choice) pairs sorted by expert. `expert_mlp(rows, expert_ids, group_sizes)` maps
    expert-sorted rows (N*k, d) to outputs (N*k, d)."""
    *lead, d = h.shape
    k = top_ids.shape[-1]
    experts = top_ids.reshape(-1)
    order = jnp.argsort(experts, stable=True)
    rows = jnp.take(h.reshape(-1, d), order // k, axis=0)
    group_sizes = jnp.bincount(experts, length=num_experts).astype(jnp.int32)
    out = expert_mlp(rows, experts[order], group_sizes)
    out = jnp.take(out, jnp.argsort(order), axis=0).reshape(*lead, k, d)    # back in token order
    scale = (weights * kept).astype(out.dtype)
    return jnp.einsum("btk,btkd->btd", scale, out)


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

        # created in the order the parameters always were (their init keys depend on it)
        up_w = weight("up", (num_experts, d, f), ("expert", "embed", "mlp"), cfg.init_std)
        up_b = bias("up_bias", (num_experts, f), ("expert", "mlp"))
        gated = cfg.mlp in GATED_MLPS
        gate_w = weight("gate", (num_experts, d, f), ("expert", "embed", "mlp"),
                        cfg.init_std) if gated else None
        gate_b = bias("gate_bias", (num_experts, f), ("expert", "mlp")) if gated else 0.0
        down_w = weight("down", (num_experts, f, d), ("expert", "mlp", "embed"),
                        residual_std(cfg))
        down_b = bias("down_bias", (num_experts, d), ("expert", "embed"))
        capacity = expert_capacity(cfg, x.shape[1])
        h = x.astype(kinds["dtype"])
        if cfg.moe.dispatch == "grouped":
            def expert_mlp(rows, expert_ids, group_sizes):
                def per_row(b):  # (E, 1, 1, n) -> the row's expert's bias (rows, n)
                    return b if isinstance(b, float) else b[:, 0, 0][expert_ids]
                up = jax.lax.ragged_dot(rows, up_w, group_sizes) + per_row(up_b)
                hidden = mlp_hidden(cfg, up, lambda: jax.lax.ragged_dot(
                    rows, gate_w, group_sizes) + per_row(gate_b))
                return jax.lax.ragged_dot(hidden, down_w, group_sizes) + per_row(down_b)
            kept = kept_choices(top_ids, num_experts, capacity)
            y = grouped_experts(h, top_ids, weights, kept, expert_mlp, num_experts)
            return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
        dispatch, combine = dispatch_masks(top_ids, weights, num_experts, capacity)
        expert_in = jnp.einsum("btec,btd->ebcd", dispatch.astype(h.dtype), h)
        up = jnp.einsum("ebcd,edf->ebcf", expert_in, up_w) + up_b
        hidden = mlp_hidden(cfg, up, lambda: jnp.einsum("ebcd,edf->ebcf", expert_in, gate_w)
                            + gate_b)
        out = jnp.einsum("ebcf,efd->ebcd", hidden, down_w) + down_b
        y = jnp.einsum("btec,ebcd->btd", combine.astype(out.dtype), out)
        return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)

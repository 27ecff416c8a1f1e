"""Mixture of experts: routing and losses against hand computations; one expert = a dense MLP."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import ModelConfig, MoeConfig
from foundations.models.layers import Mlp
from foundations.models.moe import (MoeMlp, dispatch_masks, expert_capacity, kept_choices,
                                    load_balancing_loss, route, router_z_loss)

LOGITS = np.array([[2.0, 1.0, 0.0, -1.0],     # token 0: experts 0, 1
                   [0.0, 3.0, 1.0, 0.5],      # token 1: experts 1, 2
                   [1.0, 0.0, 0.0, 2.0]])     # token 2: experts 3, 0


def test_router_top_k_softmax_over_selected_logits():
    ids, weights = route(jnp.asarray(LOGITS), k=2)
    np.testing.assert_array_equal(ids, [[0, 1], [1, 2], [3, 0]])
    # softmax over the two chosen logits only: e^a / (e^a + e^b) = sigmoid(a - b)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(weights, [[sig(1), sig(-1)], [sig(2), sig(-2)], [sig(1), sig(-1)]],
                               rtol=1e-6)


def test_load_balancing_and_z_loss_by_hand():
    ids, _ = route(jnp.asarray(LOGITS), k=2)
    probs = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)
    # each expert's share of the 3 tokens that chose it (top-2): e0: 2, e1: 2, e2: 1, e3: 1
    fraction = np.array([2, 2, 1, 1]) / 3
    expected = 4 * np.sum(fraction * probs.mean(0))
    assert float(load_balancing_loss(jnp.asarray(LOGITS), ids, 4)) == pytest.approx(expected,
                                                                                   rel=1e-6)
    # perfectly uniform routing gives k (Switch's 1 per choice)
    uniform = jnp.zeros((8, 4))
    balanced_ids = jnp.array([[0, 1], [2, 3]] * 4)
    assert float(load_balancing_loss(uniform, balanced_ids, 4)) == pytest.approx(2.0)
    lse = np.log(np.exp(LOGITS).sum(1))
    assert float(router_z_loss(jnp.asarray(LOGITS))) == pytest.approx(np.mean(lse ** 2), rel=1e-6)


def test_capacity_drops_later_choices_first():
    ids, weights = route(jnp.asarray(LOGITS)[None], k=2)   # one group of 3 tokens
    dispatch, combine = dispatch_masks(ids, weights, 4, capacity=1)
    dispatch = np.asarray(dispatch[0])                      # (T, E, C)
    # first choices: t0->e0, t1->e1, t2->e3 all fit; second choices t0->e1, t2->e0 find their
    # expert full, t1->e2 fits (e2 had no first choice)
    assert dispatch.sum(axis=(1, 2)).tolist() == [1, 2, 1]
    assert dispatch[1, 2, 0] == 1 and dispatch[0, 1].sum() == 0
    np.testing.assert_allclose(np.asarray(combine[0]).sum(axis=(1, 2)),
                               [weights[0, 0, 0], 1.0, weights[0, 2, 0]], rtol=1e-6)
    # dropless: every choice gets a slot, the combine weights of a token sum to 1
    cfg = ModelConfig(moe=MoeConfig(num_experts=4, experts_per_token=2, capacity_factor=0.0))
    dispatch, combine = dispatch_masks(ids, weights, 4, expert_capacity(cfg, 3))
    assert np.asarray(dispatch).sum() == 6
    np.testing.assert_allclose(np.asarray(combine).sum(axis=(2, 3)), 1.0, rtol=1e-6)
    assert expert_capacity(with_capacity(cfg, 1.0), 64) == 32


def tiny(**moe) -> ModelConfig:
    return ModelConfig(d_model=16, d_ff=32, num_heads=2, num_kv_heads=2, head_dim=8,
                       num_layers=2, mlp="swiglu", use_bias=True, moe=MoeConfig(**moe))


def with_capacity(cfg: ModelConfig, capacity_factor: float) -> ModelConfig:
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe,
                                                            capacity_factor=capacity_factor))


def test_one_expert_equals_the_dense_mlp():
    cfg = tiny(num_experts=1, experts_per_token=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    dense = nn.unbox(jax.jit(Mlp(cfg).init)(jax.random.PRNGKey(1), x))["params"]
    moe = nn.unbox(jax.eval_shape(MoeMlp(cfg).init, jax.random.PRNGKey(2), x))["params"]
    moe["router"] = jnp.zeros((16, 1))    # one expert: the router's weight is 1 whatever it says
    for name in ("up", "gate", "down"):   # the dense weights as expert 0
        moe[name] = dense[name]["kernel"][None]
        moe[f"{name}_bias"] = dense[name]["bias"][None]
    expected = jax.jit(Mlp(cfg).apply)({"params": dense}, x)
    np.testing.assert_allclose(jax.jit(MoeMlp(cfg).apply)({"params": moe}, x), expected,
                               atol=1e-5)


def test_large_capacity_equals_dropless_and_small_capacity_differs():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 16))
    cfg = tiny(num_experts=4, experts_per_token=2)
    params = jax.jit(MoeMlp(cfg).init)(jax.random.PRNGKey(1), x)

    def apply(capacity_factor):
        return jax.jit(MoeMlp(with_capacity(cfg, capacity_factor)).apply)(params, x)

    dropless, roomy, tight = apply(0.0), apply(2.0), apply(0.25)
    np.testing.assert_allclose(roomy, dropless, atol=1e-6)
    assert np.abs(np.asarray(tight - dropless)).max() > 1e-4
    # the router losses are sown for the trainer to collect
    _, sown = jax.eval_shape(lambda p: MoeMlp(cfg).apply(p, x, mutable=["intermediates"]),
                             params)
    assert set(sown["intermediates"]) == {"router_aux_loss", "router_z_loss"}


def test_kept_choices_match_the_dispatch_slots():
    ids, weights = route(jnp.asarray(LOGITS)[None], k=2)
    dispatch, _ = dispatch_masks(ids, weights, 4, capacity=1)
    kept = kept_choices(ids, 4, capacity=1)
    # the hand-worked case above: t0 keeps its first choice, t1 both, t2 its first
    assert np.asarray(kept[0]).tolist() == [[True, False], [True, True], [True, False]]
    assert np.asarray(kept).sum() == np.asarray(dispatch).sum()


@pytest.mark.parametrize("mlp,capacity_factor", [("swiglu", 0.0), ("gelu", 0.5)])
def test_grouped_dispatch_equals_dense(mlp, capacity_factor):
    """Sorted ragged matmuls give the dense one-hot path's outputs and gradients, dropless and
    with tokens dropped at capacity."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 16))
    dense = dataclasses.replace(with_capacity(tiny(num_experts=4, experts_per_token=2),
                                              capacity_factor), mlp=mlp)
    grouped = dataclasses.replace(dense, moe=dataclasses.replace(dense.moe, dispatch="grouped"))
    params = nn.unbox(jax.jit(MoeMlp(dense).init)(jax.random.PRNGKey(1), x))["params"]
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero biases

    def loss_and_grads(cfg):
        def loss(p, x):
            return jnp.sum(jnp.sin(MoeMlp(cfg).apply({"params": p}, x)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    (want, want_grads), (got, got_grads) = loss_and_grads(dense), loss_and_grads(grouped)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5),
                 got_grads, want_grads)


def test_grouped_dispatch_refuses_a_sharded_expert_axis():
    from foundations.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="dispatch=grouped runs with mesh.expert=1"):
        load_config("experiments/mixtral_tiny.yaml", ["model.moe.dispatch=grouped",
                                                      "mesh.expert=2"])

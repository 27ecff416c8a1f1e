"""Position schemes and attention masks: ALiBi, T5 buckets, sinusoids, RoPE scaling, windows."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import ModelConfig, PositionsConfig
from foundations.models.attention import Attention
from foundations.models.positions import (RelativePositionBias, alibi_bias, alibi_slopes,
                                          apply_rope, relative_position_bucket, rope_angles,
                                          scaled_rope, sinusoidal_table)


def test_alibi_slopes_shape_and_monotonicity():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)], rtol=1e-6)
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (paper's recipe)
    np.testing.assert_allclose(alibi_slopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8,
                                                 2 ** -1, 2 ** -3], rtol=1e-6)
    bias = np.asarray(alibi_bias(jnp.arange(6), jnp.arange(6), 4))
    assert bias.shape == (1, 4, 6, 6)
    np.testing.assert_allclose(np.diagonal(bias, axis1=2, axis2=3), 0.0)
    row = bias[0, :, 5, :]            # query 5 looking back: penalties grow with distance
    assert (np.diff(row, axis=-1) > 0).all()
    np.testing.assert_allclose(bias[0, 0, 5, 2], -0.25 * 3)


def reference_bucket(relative, bidirectional, num_buckets, max_distance):
    """T5's relative_position_bucket for one int, written out with Python scalars."""
    bucket, n = 0, -relative
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            bucket += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact))
    return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_match_reference_and_are_monotone(bidirectional):
    relative = np.arange(-300, 301)
    got = np.asarray(relative_position_bucket(jnp.asarray(relative), bidirectional, 32, 128))
    expected = [reference_bucket(int(r), bidirectional, 32, 128) for r in relative]
    np.testing.assert_array_equal(got, expected)
    back = got[relative <= 0][::-1]             # keys 0, 1, 2, ... positions behind the query
    assert (np.diff(back) >= 0).all() and back[0] == 0 and back[-1] == (15 if bidirectional
                                                                         else 31)
    if not bidirectional:
        assert (got[relative > 0] == 0).all()   # the future shares bucket 0 (masked anyway)


def test_t5_bias_shape_is_shared_per_offset():
    cfg = ModelConfig(num_heads=3, positions=PositionsConfig(buckets=8, max_distance=16))
    module = RelativePositionBias(cfg, bidirectional=True)
    relative = jnp.arange(7)[None, :] - jnp.arange(5)[:, None]   # key - query, (5, 7)
    params = module.init(jax.random.PRNGKey(0), relative)
    bias = np.asarray(module.apply(params, relative))
    assert bias.shape == (1, 3, 5, 7)
    for offset in range(-4, 7):                 # a Toeplitz matrix: one value per offset
        diagonal = np.diagonal(bias[0], offset=offset, axis1=1, axis2=2)
        np.testing.assert_allclose(diagonal, diagonal[:, :1].repeat(diagonal.shape[1], 1))


def test_sinusoidal_table_values():
    table = np.asarray(sinusoidal_table(jnp.arange(10), 8))
    assert table.shape == (10, 8)
    p, i = 7, 2
    assert table[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert table[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)


def test_rope_scaling_linear_and_ntk():
    positions = jnp.arange(64)[None]
    scaled, theta = scaled_rope(positions, 16, 10000.0, "linear", 4.0)
    np.testing.assert_allclose(rope_angles(scaled, 16, theta)[0, 8],
                               rope_angles(jnp.array([[2]]), 16, 10000.0)[0, 0], rtol=1e-6)
    same, ntk_theta = scaled_rope(positions, 16, 10000.0, "ntk", 4.0)
    assert ntk_theta == pytest.approx(10000.0 * 4.0 ** (16 / 14))
    base = rope_angles(positions, 16, 10000.0)[0]
    ntk = rope_angles(same, 16, ntk_theta)[0]
    np.testing.assert_allclose(ntk[:, 0], base[:, 0])                 # highest frequency kept
    np.testing.assert_allclose(ntk[:, -1], base[:, -1] / 4.0, rtol=1e-5)  # lowest stretched 4x
    # still relative: scores depend only on the offset
    q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1, 16))

    def score(m, n):
        pq, tq = scaled_rope(jnp.array([[m]]), 16, 10000.0, "linear", 4.0)
        pk, _ = scaled_rope(jnp.array([[n]]), 16, 10000.0, "linear", 4.0)
        return float(jnp.sum(apply_rope(q, pq, tq) * apply_rope(k, pk, tq)))
    assert score(9, 2) == pytest.approx(score(29, 22), rel=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_equals_an_explicit_mask(causal):
    cfg = ModelConfig(d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, num_layers=1,
                      positions=PositionsConfig(kind="rope"), local_window_size=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 16))
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    windowed = Attention(cfg, causal)
    params = windowed.init(jax.random.PRNGKey(1), x, positions)
    i, j = np.arange(9)[:, None], np.arange(9)[None, :]
    explicit = (j > i - 3) & (j <= i if causal else j < i + 3)
    plain = Attention(dataclasses.replace(cfg, local_window_size=0), causal=False)
    expected = plain.apply(params, x, positions, True, jnp.asarray(explicit)[None, None])
    np.testing.assert_allclose(windowed.apply(params, x, positions), expected, atol=1e-5)
    full = plain.apply(params, x, positions)    # and the window does change the result
    assert np.abs(np.asarray(full - expected)).max() > 1e-3

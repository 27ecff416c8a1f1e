"""Fast paths leave the numbers alone: chunked cross-entropy equals the whole-logits loss (optax on
(B, T, V)), values and gradients, and the trainer's loss and gradients do not change with
`objective.loss_chunk_size`, an unrolled layer scan (`model.scan_unroll`) or the fused q/k/v
projection (`model.fuse_qkv`, against the three separate einsums)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from foundations.config import UNROLL_ALL_LAYERS, ConfigError, load_config, scan_unroll_for
from foundations.objectives.losses import chunked_cross_entropy
from foundations.parallel.mesh import make_mesh
from foundations.train.trainer import Trainer, resolve_scan_unroll
from conftest import TINY


def test_chunked_cross_entropy_equals_optax_on_whole_logits():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    hidden = jax.random.normal(keys[0], (3, 12, 16))
    head = jax.random.normal(keys[1], (16, 40))
    targets = jax.random.randint(keys[2], (3, 12), 0, 40)

    def whole(hidden, head):
        logits = jnp.einsum("btd,dv->btv", hidden, head)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def chunked(hidden, head):  # 12 positions in chunks of 5: the last one is padded
        return chunked_cross_entropy(hidden, head, targets, 5)

    want, want_grads = jax.value_and_grad(whole, argnums=(0, 1))(hidden, head)
    got, got_grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, head)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tied,fast_path", [(True, "objective.loss_chunk_size=12"),
                                             pytest.param(False, "objective.loss_chunk_size=12",
                                                          marks=pytest.mark.slow),
                                             (True, "model.scan_unroll=2"),
                                             (True, "model.scan_unroll=0"),
                                             (True, "model.fuse_qkv=true")])
def test_trainer_loss_and_gradients_do_not_change(tied, fast_path):
    """Against the scanned stack (scan_unroll=1); scan_unroll=0 (auto) unrolls it on the CPU."""
    overrides = [*TINY, f"model.tie_embeddings={str(tied).lower()}", "model.scan_unroll=1"]
    mesh = make_mesh(load_config(None, overrides).mesh, jax.devices()[:1])
    whole = Trainer(load_config(None, overrides), mesh)
    chunked = Trainer(load_config(None, [*overrides, fast_path]), mesh)
    params = whole.init_state()["params"]
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 33)), jnp.int32)

    def value_and_grad(trainer):
        grad_fn = jax.jit(jax.value_and_grad(lambda p: trainer.loss(p, batch, None)[0]))
        return trainer.in_mesh(grad_fn)(params)

    want, want_grads = value_and_grad(whole)
    got, got_grads = value_and_grad(chunked)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7),
                 got_grads, want_grads)


def test_chunks_are_refused_for_other_objectives():
    with pytest.raises(ConfigError, match="loss_chunk_size applies to objective.kind=clm"):
        load_config(None, ["model.family=encoder", "objective.kind=mlm",
                           "objective.loss_chunk_size=64"])


def test_auto_scan_unroll_resolves_by_backend_and_depth():
    def resolved(layers, backend, setting=0):
        cfg = load_config(None, [f"model.num_layers={layers}",
                                 f"model.scan_unroll={setting}"]).model
        return scan_unroll_for(cfg, backend)
    assert load_config(None, []).model.scan_unroll == 0   # the default is auto
    for backend in ("cpu", "gpu", "tpu"):                 # shallow: unrolled everywhere
        assert resolved(4, backend) == 4
        assert resolved(UNROLL_ALL_LAYERS, backend) == UNROLL_ALL_LAYERS
    assert resolved(24, "cpu") == 24                      # deep: unrolled only on the CPU
    assert resolved(24, "tpu") == 1 and resolved(24, "gpu") == 1
    assert resolved(24, "tpu", setting=3) == 3            # a set value is kept
    # the trainer records what it resolved: its config says what the step used
    config = load_config(None, [*TINY, "model.num_layers=3"])
    assert resolve_scan_unroll(config).model.scan_unroll == 3   # (CPU, shallow)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    assert Trainer(config, mesh).config.model.scan_unroll == 3

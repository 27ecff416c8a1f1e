"""Every parallelism equals the unsharded computation: 8 simulated devices vs 1."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from foundations.config import replace
from foundations.parallel.mesh import make_mesh
from foundations.train.loop import build

LLAMA_LIKE = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
              "model.num_kv_heads=2", "model.tie_embeddings=false", "model.use_bias=false"]


def run_steps(cfg, mesh_shape, rows, steps=3):
    cfg = replace(cfg, dict(zip(("mesh.data", "mesh.fsdp", "mesh.tensor"), mesh_shape)))
    n = int(np.prod(mesh_shape))
    data, trainer = build(cfg, make_mesh(cfg.mesh, jax.devices()[:n]))
    state = trainer.init_state()
    losses = []
    for i in range(steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(rows[i]))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"]), state


def batches(cfg, steps=3):
    from foundations.data.pipeline import load_text_data
    tokens = load_text_data(cfg.data).train_tokens
    per = cfg.train.batch_size * (cfg.data.seq_len + 1)
    return [tokens[i * per:(i + 1) * per].reshape(cfg.train.batch_size, -1) for i in range(steps)]


def assert_trees_close(a, b, atol):
    """Leaf by leaf, matched by path (tree_map_with_path raises if the two trees differ)."""
    jax.tree_util.tree_map_with_path(
        lambda path, x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4, err_msg=jax.tree_util.keystr(path)),
        a, b)


@pytest.mark.parametrize("extra", [[], LLAMA_LIKE], ids=["gpt2", "llama_gqa"])
def test_data_fsdp_tensor_mesh_equals_one_device(tiny_config, extra):
    cfg = tiny_config(*extra)
    rows = batches(cfg)
    single_losses, single_params, _ = run_steps(cfg, (1, 1, 1), rows)
    mesh_losses, mesh_params, state = run_steps(cfg, (2, 2, 2), rows)
    np.testing.assert_allclose(mesh_losses, single_losses, rtol=1e-5)
    assert_trees_close(mesh_params, single_params, atol=2e-5)
    assert single_losses[2] < single_losses[0]  # it trained
    # the parameters really are split: an MLP kernel (layers, embed, mlp) over fsdp and tensor
    kernel = state["params"]["blocks"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec == P("stage", "fsdp", "tensor")  # stage: size 1 here
    assert kernel.addressable_shards[0].data.shape == (2, 32 // 2, 128 // 2)
    # and so are Adam's moments
    mu = jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
    moments = [x for x in mu if hasattr(x, "mu")][0].mu
    assert moments["blocks"]["mlp"]["up"]["kernel"].sharding.spec == P("stage", "fsdp", "tensor")


@pytest.fixture(scope="module")
def wide_baseline(corpus):
    """A model with 8 heads (so tensor=4 divides) and its 1-device result, shared by the cases."""
    from conftest import TINY
    from foundations.config import load_config
    cfg = load_config(None, TINY + [f"data.train_files=[{corpus}]", "model.d_model=64",
                                    "model.num_heads=8"])
    rows = batches(cfg, steps=2)
    losses, params, _ = run_steps(cfg, (1, 1, 1), rows, steps=2)
    return cfg, rows, losses, params


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (1, 2, 4)])
def test_other_meshes_equal_one_device(wide_baseline, mesh_shape):
    cfg, rows, single_losses, single_params = wide_baseline
    losses, params, _ = run_steps(cfg, mesh_shape, rows, steps=2)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert_trees_close(params, single_params, atol=2e-5)


def test_gradient_accumulation_equals_one_big_batch(tiny_config):
    cfg = tiny_config()
    rows = batches(cfg)
    losses, params, _ = run_steps(cfg, (1, 1, 1), rows)
    accum = replace(cfg, {"train.grad_accum": 4})
    accum_losses, accum_params, _ = run_steps(accum, (2, 1, 1), rows)
    np.testing.assert_allclose(accum_losses, losses, rtol=1e-5)
    assert_trees_close(accum_params, params, atol=2e-5)

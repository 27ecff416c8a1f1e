"""Pipeline parallelism on 8 simulated devices: same loss and gradients as the unpipelined model,
whatever the stage count, microbatch count and the other mesh axes; clear errors; bubble logged."""

import jax
import numpy as np
import pytest

from foundations.config import ConfigError
from foundations.parallel.mesh import make_mesh
from foundations.parallel.gpipe import bubble_fraction
from foundations.train.loop import build, train
from foundations.train.metrics import read_metrics

FOUR_LAYERS = ("model.num_layers=4", "model.positions.kind=rope", "model.norm=rmsnorm")


@pytest.fixture(scope="module")
def reference(corpus):
    """Loss and gradients of the plain model on one device, with the params and batch used."""
    from conftest import TINY
    from foundations.config import load_config
    config = load_config(None, TINY + [f"data.train_files=[{corpus}]", *FOUR_LAYERS])
    data, trainer = build(config, make_mesh(config.mesh, jax.devices()[:1]))
    params = trainer.init_state()["params"]
    rows = data.train_tokens[:8 * 33].reshape(8, 33)
    loss, grads = _loss_and_grads(trainer, params, rows)
    return data, params, rows, loss, grads


def _loss_and_grads(trainer, params, rows, with_hlo=False):
    params = jax.device_put(params, trainer.state_shardings["params"])
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b, r: trainer.loss(p, b, r)[0]))
    compiled = trainer.in_mesh(lambda: grad_fn.lower(params, rows, None).compile())()
    loss, grads = compiled(params, rows, None)
    return (loss, grads, compiled.as_text()) if with_hlo else (loss, grads)


@pytest.mark.parametrize("mesh", [
    ("mesh.stage=2", "mesh.data=2", "mesh.tensor=2", "mesh.microbatches=2"),
    ("mesh.stage=4", "mesh.data=2", "mesh.microbatches=4"),
    ("mesh.stage=4", "mesh.fsdp=2", "mesh.microbatches=2"),
], ids=["S2xD2xT2-M2", "S4xD2-M4", "S4xF2-M2"])
def test_pipelined_loss_and_grads_equal_the_plain_model(tiny_config, reference, mesh):
    data, params, rows, ref_loss, ref_grads = reference
    _, trainer = build(tiny_config(*FOUR_LAYERS, *mesh), data=data)
    assert trainer.pipeline is not None and dict(trainer.mesh.shape)["stage"] > 1
    loss, grads, hlo = _loss_and_grads(trainer, params, rows, with_hlo=True)
    assert "collective-permute" in hlo  # the stage shift is a neighbour exchange
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, want), got in zip(flat_ref, flat):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # the block params really are split over stages: each device holds L/S layers
    kernel = jax.device_put(params, trainer.state_shardings["params"])["blocks"]["mlp"]["up"]
    stages = trainer.mesh.shape["stage"]
    assert kernel["kernel"].addressable_shards[0].data.shape[0] == 4 // stages


def test_pipeline_config_errors(tiny_config):
    with pytest.raises(ConfigError, match=r"model.num_layers=2 is not divisible by mesh.stage=4"):
        tiny_config("mesh.stage=4")
    with pytest.raises(ConfigError, match=r"do not split into mesh.microbatches=3"):
        tiny_config("mesh.stage=2", "mesh.microbatches=3")
    with pytest.raises(ConfigError, match=r"4 sequences per step .* do not divide into "
                                          r"mesh.microbatches=2 x mesh.data x mesh.fsdp = 4"):
        build(tiny_config("mesh.stage=2", "mesh.microbatches=2", "mesh.data=4",
                          "train.batch_size=4"))
    with pytest.raises(ConfigError, match="mesh.stage=0 must be > 0"):
        tiny_config("mesh.stage=0")


def test_bubble_fraction_formula():
    assert bubble_fraction(1, 8) == 0.0
    assert bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert bubble_fraction(2, 6) == pytest.approx(1 / 7)


def test_pipelined_training_logs_bubble_and_restores_unpipelined(tiny_config, tmp_path):
    from foundations.run import load_run
    config = tiny_config("mesh.stage=2", "mesh.data=2", "mesh.microbatches=2", "train.steps=2",
                         "train.grad_accum=2", "checkpoint.every=0")
    summary = train(config, tmp_path, progress=False)
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["bubble_fraction"] == pytest.approx(1 / 3) for r in records)
    assert np.isfinite(summary["val_loss"])
    # the checkpoint has the ordinary layout: it loads onto one device without a pipeline
    run = load_run(tmp_path)
    assert run.step == 2 and dict(run.mesh.shape)["stage"] == 1

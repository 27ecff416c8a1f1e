"""ELECTRA and prefix LM on 8 simulated devices, (data 2, fsdp 2, tensor 2), match one device:
the same losses and metrics at the first step and after an update, and the same parameters."""

import jax
import numpy as np
import pytest

from foundations.config import MeshConfig, load_config
from foundations.data.pipeline import load_text_data
from foundations.parallel.mesh import make_mesh
from foundations.train.loop import build
from test_families import ELECTRA, FAST, PREFIX

# 8 heads of 4: ELECTRA's generator (a quarter of the width) keeps 2 heads to split over tensor=2
WIDE_ENOUGH = ["model.num_heads=8"]
STEPS = 2  # the first step's loss is the initial model's; the second's is after one update


@pytest.fixture(scope="module")
def data(corpus):
    return load_text_data(load_config(None, [f"data.train_files=[{corpus}]"]).data)


def host_state(trainer, seed=0):
    """A training state made with numpy, which saves compiling the model's init: weights
    N(0, 0.02), norm scales 1, biases 0; everything else zeros (Adam's moments and counts, and
    the rng key PRNGKey(0), as `init_state` makes them)."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = getattr(path[-1], "key", "")
        if path[0].key != "params" or "bias" in name:
            return np.zeros(x.shape, x.dtype)
        if name == "scale":
            return np.ones(x.shape, x.dtype)
        return (0.02 * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.tree_util.tree_map_with_path(leaf, trainer.abstract_state)


def run(trainer, initial, rows):
    """STEPS train steps from `initial` laid out on the trainer's mesh: metrics, final params."""
    state = jax.device_put(initial, trainer.state_shardings)
    metrics = []
    for step in range(STEPS):
        state, step_metrics = trainer.train_step(state, trainer.put_batch(rows, step))
        metrics.append({k: float(v) for k, v in step_metrics.items()})
    return metrics, jax.tree.map(np.asarray, state["params"])


@pytest.mark.parametrize("overrides", [pytest.param(ELECTRA, marks=pytest.mark.slow), PREFIX],
                         ids=["electra", "prefix_lm"])   # electra: a long compile on 8 devices
def test_objective_on_8_devices_equals_one_device(tiny_config, data, overrides):
    cfg = tiny_config(*FAST, *overrides, *WIDE_ENOUGH)
    rows = data.train_tokens[:8 * 17].reshape(8, 17)
    _, single = build(cfg, make_mesh(MeshConfig(), jax.devices()[:1]), data)
    _, sharded = build(cfg, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8]),
                       data)
    assert dict(sharded.mesh.shape) == {"stage": 1, "data": 2, "fsdp": 2, "tensor": 2,
                                        "expert": 1}
    initial = host_state(single)
    single_metrics, single_params = run(single, initial, rows)
    sharded_metrics, sharded_params = run(sharded, initial, rows)

    assert single_metrics[1]["loss"] != single_metrics[0]["loss"]  # the update changed the model
    for one, eight in zip(single_metrics, sharded_metrics):
        assert set(one) == set(eight)
        for name in one:  # ELECTRA: the generator's samples too (replaced_fraction, rtd_*)
            np.testing.assert_allclose(eight[name], one[name], rtol=2e-5, err_msg=name)
    # (Adam divides by sqrt(v), so last-bit gradient differences move weights by up to ~1e-4
    # with lr 1e-2, as in test_families)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                 sharded_params, single_params)

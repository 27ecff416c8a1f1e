"""Prefix tuning: free keys/values in every layer equal the keys/values that real prefix tokens
would have (checked on a position-free model), and only they are in the optimizer; that they
train (finite-difference gradients, a falling loss) is tests/test_adapter_gradients.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import Stage
from foundations.post.synthetic import write_addition

PREFIX = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.num_kv_heads=2",
          "model.max_seq_len=48", "model.positions.kind=none", "data.seq_len=48",
          "train.batch_size=8", "train.steps=3", "train.eval_batches=1", "train.sample_tokens=0",
          "schedule.warmup_steps=1", "checkpoint.async_save=false",
          "prefix_tuning.num_tokens=3", "optimizer.lr=1e-2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = write_addition(tmp_path_factory.mktemp("addition"), count=200, seed=4)
    config = load_config(None, PREFIX + [f"sft.train_file={data['sft']}"])
    trainer, iterator, _, _ = Stage("sft", log=lambda _: None).build(
        config, make_mesh(config.mesh, jax.devices()[:1]))
    return trainer, iterator


def test_shapes_and_only_prefixes_in_the_optimizer(built):
    trainer, _ = built
    state = trainer.init_state()
    shapes = jax.tree.map(jnp.shape, state["params"])
    assert shapes == {"prefix": {"blocks": {"attention": {"prefix_key": (2, 3, 2, 8),
                                                          "prefix_value": (2, 3, 2, 8)}}}}
    moments = [x.shape for x in jax.tree.leaves(state["opt_state"]) if x.shape]
    assert sorted(moments) == [(2, 3, 2, 8)] * 4


def test_prefixes_act_as_the_keys_and_values_of_real_tokens(built):
    trainer, _ = built
    base = trainer.frozen["base"]
    tokens = jnp.asarray(trainer.task.val_rows["tokens"][:2, :20])
    rest = tokens[:, 3:]
    # the keys and values each layer computes for the 3 context tokens (no positions: they
    # depend only on the tokens before them)
    _, sown = trainer.model.apply({"params": base}, tokens, capture_intermediates=lambda m, _:
                                  m.name in ("key", "value"), mutable=["intermediates"])
    attention = sown["intermediates"]["blocks"]["attention"]
    prefix = {"blocks": {"attention": {
        f"prefix_{name}": attention[name]["__call__"][0][:, 0, :3] for name in ("key", "value")}}}
    prefix_b = {"blocks": {"attention": {
        f"prefix_{name}": attention[name]["__call__"][0][:, 1, :3] for name in ("key", "value")}}}
    whole = trainer.model.apply({"params": base}, tokens)[:, 3:]
    for row, p in enumerate((prefix, prefix_b)):
        tuned, _, _ = trainer.forward({"prefix": p}, rest[row:row + 1], frozen=trainer.frozen)
        np.testing.assert_allclose(np.asarray(tuned[0]), np.asarray(whole[row]), atol=2e-5,
                                   rtol=1e-5)
    alone, _, _ = trainer.forward(None, rest, frozen=trainer.frozen)   # the context matters
    assert not np.allclose(np.asarray(alone), np.asarray(whole), atol=1e-3)

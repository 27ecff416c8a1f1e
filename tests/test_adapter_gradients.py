"""LoRA, prompt and prefix tuning train: the gradients the post-training step takes
(`Trainer._step`: `jax.value_and_grad` of the task's loss over the adapter tree) equal central
finite differences of that loss, coordinate by coordinate and along the gradient, and a few of
the real (AdamW) steps on one fixed batch lower its loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from foundations.config import load_config
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import Stage
from foundations.post.synthetic import write_addition

TINY = ["model.num_layers=2", "model.d_model=16", "model.num_heads=2", "model.max_seq_len=40",
        "model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
        "model.use_bias=false", "data.seq_len=32", "train.batch_size=4", "train.steps=8",
        "train.eval_batches=1", "train.sample_tokens=0", "schedule.warmup_steps=0",
        "schedule.kind=constant", "checkpoint.async_save=false", "optimizer.lr=5e-2",
        "model.init_std=0.1"]   # a base far enough from uniform logits for adapters to matter
METHODS = {"lora": ["lora.rank=2", "lora.alpha=4", "lora.targets=attention/(query|value)|mlp/down"],
           "prompt": ["prompt_tuning.num_tokens=3"],
           "prefix": ["prefix_tuning.num_tokens=3"]}


@pytest.fixture(scope="module")
def addition(tmp_path_factory):
    return write_addition(tmp_path_factory.mktemp("addition"), count=60, seed=5)


@pytest.fixture(scope="module", params=sorted(METHODS))
def built(request, addition):
    config = load_config(None, TINY + METHODS[request.param]
                         + [f"sft.train_file={addition['sft']}"])
    trainer, _, _, _ = Stage("sft", log=lambda _: None).build(
        config, make_mesh(config.mesh, jax.devices()[:1]))
    assert trainer.method == request.param
    rows = {k: v[:4] for k, v in trainer.task.train_rows.items()}   # one fixed batch
    batch = trainer.put_batch(rows, 0)
    micro = jax.tree.map(lambda x: x[0], batch)
    loss = trainer.in_mesh(jax.jit(lambda p: trainer.loss(p, micro, None, trainer.frozen)[0]))
    return trainer, batch, loss


def start_params(trainer):
    """Fresh adapters; LoRA's B random too (at init B = 0, so A's gradient is exactly 0)."""
    params = trainer.init_state()["params"]
    if trainer.method == "lora":
        params = {"lora": {name: {"a": ad["a"], "b": 0.3 * jax.random.normal(
            jax.random.PRNGKey(i), ad["b"].shape)}
            for i, (name, ad) in enumerate(sorted(params["lora"].items()))}}
    return jax.tree.map(lambda x: np.array(x, np.float32), params)


def step_gradients(trainer, params, batch, monkeypatch):
    """The gradients `Trainer._step` computes, read back through plain SGD at learning rate 1
    (new params = params - grads), with its grad_norm metric."""
    monkeypatch.setattr(trainer, "tx", optax.sgd(1.0))
    state = {"step": jnp.asarray(0, jnp.int32), "params": params,
             "opt_state": trainer.tx.init(params), "rng": jax.random.PRNGKey(0)}
    new, metrics = trainer.in_mesh(jax.jit(lambda s, f, b: trainer._step(s, b, f)))(
        state, trainer.frozen, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                         params, new["params"])
    return grads, float(metrics["grad_norm"]), float(metrics["loss"])


def test_step_gradients_equal_finite_differences(built, monkeypatch):
    trainer, batch, loss = built
    params = start_params(trainer)
    grads, grad_norm, step_loss = step_gradients(trainer, params, batch, monkeypatch)
    assert step_loss == pytest.approx(float(loss(params)), rel=1e-6)
    flat, treedef = jax.tree_util.tree_flatten(params)
    flat_grads = jax.tree.leaves(grads)
    norm = np.sqrt(sum(float(np.sum(g ** 2)) for g in flat_grads))
    assert grad_norm == pytest.approx(norm, rel=1e-4)
    assert norm > 1e-3

    def moved(leaf, index, delta):
        leaves = [x.copy() for x in flat]
        leaves[leaf][index] += delta
        return float(loss(jax.tree_util.tree_unflatten(treedef, leaves)))

    # a few random coordinates of every leaf, and each leaf's steepest one: central
    # differences in float32 (eps 1e-2: truncation ~1e-4, rounding ~1e-4 of a loss ~5)
    rng, eps = np.random.default_rng(0), 1e-2
    ours, theirs = [], []
    for leaf, g in enumerate(flat_grads):
        picks = [np.unravel_index(i, g.shape) for i in rng.choice(g.size, 3, replace=False)]
        picks.append(np.unravel_index(np.argmax(np.abs(g)), g.shape))
        for index in picks:
            ours.append(g[index])
            theirs.append((moved(leaf, index, eps) - moved(leaf, index, -eps)) / (2 * eps))
    ours, theirs = np.array(ours), np.array(theirs)
    scale = np.max(np.abs(theirs))
    assert scale > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=0.05, atol=0.02 * scale)

    # along the (unit) gradient the loss changes at the rate |g|: the whole vector's scale
    unit = [g / norm for g in flat_grads]
    along = [jax.tree_util.tree_unflatten(treedef, [(x + s * u).astype(np.float32)
                                                    for x, u in zip(flat, unit)])
             for s in (eps, -eps)]
    slope = (float(loss(along[0])) - float(loss(along[1]))) / (2 * eps)
    assert slope == pytest.approx(norm, rel=0.03)


def test_a_few_steps_on_a_fixed_batch_lower_its_loss(built):
    trainer, batch, loss = built
    state = trainer.init_state()
    before = float(loss(jax.tree.map(np.array, state["params"])))
    for _ in range(8):
        state, metrics = trainer.train_step(state, batch)
    after = float(loss(state["params"]))
    assert np.isfinite(float(metrics["loss"]))
    assert after < before - 0.05, (before, after)

"""LoRA: the untrained adapter is the base, the merge is W + (alpha/r) A B computed by hand and
by convert/lora.py from the PEFT export, and only adapters are optimized and checkpointed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config
from foundations.convert.lora import export_peft, lora_deltas
from foundations.convert.weights import rules_for, to_hf_layout
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import Stage
from foundations.post.synthetic import write_addition
from foundations.post.merge import merge_run
from foundations.train import checkpoint
from foundations.run import load_run
from foundations.train.loop import train

LORA = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=48",
        "model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
        "model.use_bias=false", "data.seq_len=48", "train.batch_size=8", "train.steps=3",
        "train.log_every=1", "train.eval_every=0", "train.eval_batches=1",
        "train.sample_tokens=0", "schedule.warmup_steps=1", "checkpoint.every=0",
        "checkpoint.async_save=false", "lora.rank=4", "lora.alpha=8",
        "lora.targets=attention/(query|value|out)|mlp/down"]
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = write_addition(tmp_path_factory.mktemp("addition"), count=200, seed=1)
    config = load_config(None, LORA + [f"sft.train_file={data['sft']}"])
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    trainer, iterator, _, _ = Stage("sft", **QUIET).build(config, mesh)
    return config, mesh, trainer, iterator


def test_targets_and_counts(built):
    _, _, trainer, _ = built
    assert sorted(trainer.lora_targets) == [
        "blocks/attention/out/kernel", "blocks/attention/query/kernel",
        "blocks/attention/value/kernel", "blocks/mlp/down/kernel"]
    trainable, base = trainer.trainable_count()
    d, r, layers, f = 32, 4, 2, trainer.model_cfg.d_ff
    assert trainable == layers * r * ((d + d) * 3 + (f + d))
    assert base == 320 * d + layers * (4 * d * d + 2 * d + 3 * d * f) + d


def test_untrained_adapter_is_the_base(built):
    _, _, trainer, iterator = built
    params = trainer.init_state()["params"]
    tokens = jnp.asarray(trainer.task.val_rows["tokens"][:4, :-1])
    tuned, _, _ = trainer.forward(params, tokens, frozen=trainer.frozen)
    base, _, _ = trainer.forward(None, tokens, frozen=trainer.frozen)
    np.testing.assert_array_equal(np.asarray(tuned), np.asarray(base))


def nonzero_adapters(params):
    """The adapters with B random too (after init B = 0 makes every update vanish)."""
    lora = {name: {"a": ad["a"], "b": jax.random.normal(jax.random.PRNGKey(i), ad["b"].shape)}
            for i, (name, ad) in enumerate(sorted(params["lora"].items()))}
    return {"lora": lora}


def test_merge_is_w_plus_scaled_ab_and_matches_peft(built, tmp_path):
    config, _, trainer, _ = built
    params = nonzero_adapters(trainer.init_state()["params"])
    merged = trainer.merged(params)
    base = trainer.frozen["base"]
    x = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    w = np.asarray(base["blocks"]["attention"]["query"]["kernel"][1])   # (d, heads, head_dim)
    a = np.asarray(params["lora"]["blocks/attention/query/kernel"]["a"][1])
    b = np.asarray(params["lora"]["blocks/attention/query/kernel"]["b"][1])
    by_hand = x @ w.reshape(32, -1) + (8 / 4) * (x @ a) @ b
    ours = x @ np.asarray(merged["blocks"]["attention"]["query"]["kernel"][1]).reshape(32, -1)
    np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-5)

    export_peft(config, params["lora"], trainer.lora_targets, tmp_path / "adapter")
    deltas = lora_deltas(tmp_path / "adapter")
    rules = {r.ours: r for r in rules_for(config)}
    assert len(deltas) == 4 * 2
    for name in trainer.lora_targets:
        rule = rules[name]
        path = name.split("/")
        merged_w, base_w = merged, base
        for key in path:
            merged_w, base_w = merged_w[key], base_w[key]
        for layer in range(2):
            ours = to_hf_layout(np.asarray(merged_w[layer]) - np.asarray(base_w[layer]), rule)
            np.testing.assert_allclose(ours, deltas[rule.hf.format(i=layer)], atol=1e-5)


def test_only_adapters_train_and_are_checkpointed(built, tmp_path):
    config, mesh, _, _ = built
    stage = Stage("sft", **QUIET)
    train(config, tmp_path / "lora", mesh=mesh, progress=False, stage=stage)
    import orbax.checkpoint as ocp
    handlers = {"state": ocp.PyTreeCheckpointHandler()}
    with ocp.CheckpointManager((tmp_path / "lora" / "checkpoints").absolute(),
                               item_handlers=handlers) as manager:
        stored = manager.item_metadata(manager.latest_step())["state"]
    assert set(stored["params"]) == {"lora"}
    adapter_shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(stored["params"]))
    moments = [tuple(x.shape) for x in jax.tree.leaves(stored["opt_state"]) if x.shape]
    assert sorted(moments) == sorted(adapter_shapes * 2)   # Adam's mu and nu, nothing else

    # merge: an ordinary run whose model gives the adapter model's logits
    merge_run(tmp_path / "lora", tmp_path / "merged")
    merged = load_run(tmp_path / "merged")
    trainer, _, _, _ = stage.build(config, mesh)
    lora_state = checkpoint.restore(checkpoint.checkpoint_manager(tmp_path / "lora",
                                                                  config.checkpoint),
                                    3, trainer.abstract_state)
    tokens = jnp.asarray(trainer.task.val_rows["tokens"][:4, :-1])
    adapted, _, _ = trainer.forward(lora_state["params"], tokens, frozen=trainer.frozen)
    folded = merged.model.apply({"params": merged.params}, tokens)
    np.testing.assert_allclose(np.asarray(folded), np.asarray(adapted), atol=1e-5, rtol=1e-5)
    base, _, _ = trainer.forward(None, tokens, frozen=trainer.frozen)
    assert not np.allclose(np.asarray(base), np.asarray(adapted), atol=1e-4)

"""`train.init_from`: a new run from another run's parameters, on any mesh; refused for others."""

import jax
import numpy as np
import pytest

from foundations.config import ConfigError
from foundations.parallel.mesh import make_mesh
from foundations.run import load_run
from foundations.train.loop import build, make_trainer, train
from foundations.train.warm_start import params_from_run

ROPE = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
        "model.num_kv_heads=2", "model.use_bias=false", "model.tie_embeddings=false"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, corpus):
    from foundations.config import load_config
    from conftest import TINY
    run_dir = tmp_path_factory.mktemp("source")
    config = load_config(None, TINY + ROPE + [f"data.train_files=[{corpus}]", "train.steps=3"])
    return run_dir, train(config, run_dir, progress=False)


def test_a_new_run_starts_from_the_other_runs_parameters_on_another_mesh(source, tiny_config,
                                                                         tmp_path):
    src_dir, src_summary = source
    config = tiny_config(*ROPE, f"train.init_from={src_dir}", "train.steps=0",
                         "schedule.warmup_steps=0", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    summary = train(config, tmp_path, progress=False)
    assert summary["step"] == 0
    assert summary["val_loss"] == pytest.approx(src_summary["val_loss"], rel=1e-5)
    # the same logits, parameters laid out on the new mesh; a fresh optimizer
    _, trainer = build(config)
    params = params_from_run(src_dir, None, trainer)
    assert len(jax.tree.leaves(params)[0].sharding.device_set) == 8
    src = load_run(src_dir)
    src_trainer = make_trainer(src.config, src.tokenizer, src.mesh)
    tokens = np.arange(64).reshape(2, 32) % 250
    np.testing.assert_allclose(trainer.next_token_logits(params, tokens, 31),
                               src_trainer.next_token_logits(src.params, tokens, 31),
                               atol=1e-5)
    assert int(trainer.init_state()["step"]) == 0


def test_shape_keeping_changes_are_allowed(source, tiny_config):
    """A longer context with RoPE (no position table), rope scaling and dropout keep every shape."""
    src_dir, _ = source
    config = tiny_config(*ROPE, "model.max_seq_len=64", "data.seq_len=64",
                         "model.positions.scaling=linear", "model.positions.factor=2",
                         "model.dropout=0.1", f"train.init_from={src_dir}", "train.init_step=3")
    _, trainer = build(config, make_mesh(config.mesh, jax.devices()[:1]))
    params = params_from_run(src_dir, 3, trainer)
    for new, old in zip(jax.tree.leaves(params), jax.tree.leaves(load_run(src_dir).params)):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("override, message", [
    ("model.d_model=64", r"parameter blocks/\S+ is \(.*\) in .*checkpoints/3 but \(.*\) in this run"),
    ("model.tie_embeddings=true", r"has parameter lm_head/kernel \(32, 320\) that this run's "
                                  r"model lacks"),
    ("train.init_step=2", r"has no checkpoint of step 2 \(it has 3\)"),
])
def test_other_shapes_are_refused_naming_the_parameter(source, tiny_config, tmp_path, override,
                                                       message):
    src_dir, _ = source
    config = tiny_config(*ROPE, f"train.init_from={src_dir}", override)
    with pytest.raises(ConfigError, match=message):
        train(config, tmp_path / "new", progress=False)
    assert not (tmp_path / "new" / "config.yaml").exists()  # nothing of the new run is written


def test_init_from_a_directory_without_checkpoints(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="is not a run directory with checkpoints"):
        train(tiny_config(f"train.init_from={tmp_path / 'nothing'}"), tmp_path / "new",
              progress=False)

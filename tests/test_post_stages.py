"""Every stage runs `Trainer.forward`: an SFT step on a mixture of experts has the pre-training
step's router losses, each stage counts the tokens and FLOPs it processes, tasks are typed, and
the post-training commands start jax.distributed as `train` does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import BaseTask, Stage, Task
from foundations.post.synthetic import write_addition
from foundations.post.trainer import PostTrainer
from foundations.tokenizers.byte import ByteTokenizer
from foundations.train.trainer import Trainer

SMALL = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.num_kv_heads=2",
         "model.d_ff=64", "model.max_seq_len=48", "data.seq_len=48", "train.batch_size=8",
         "train.eval_every=0", "train.sample_tokens=0", "schedule.warmup_steps=2",
         "checkpoint.every=0", "checkpoint.async_save=false"]
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def addition(tmp_path_factory):
    return write_addition(tmp_path_factory.mktemp("addition"), count=100, seed=0)


def copy(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


@pytest.mark.slow  # a long MoE compile; the token and flop counts below are quick
def test_sft_step_on_experts_has_the_pretraining_steps_router_losses(addition):
    config = load_config("experiments/mixtral_tiny.yaml",
                         SMALL + [f"sft.train_file={addition['sft']}"])
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    post, _, _, _ = Stage("sft", **QUIET).build(config, mesh)
    pre = Trainer(config, mesh, ByteTokenizer())
    state = post.init_state()
    params = copy(state["params"])   # the steps donate their states
    pre_state = {**pre.init_state(), "params": copy(params), "rng": copy(state["rng"])}
    rows = post.task.train_rows
    tokens = rows["tokens"][:8]
    # one document per row, so both steps' attention is plain causal and the routers see the
    # same hidden states; the SFT loss still reads only the responses
    batch = {"tokens": tokens, "weights": rows["weights"][:8],
             "segments": np.ones((8, 48), np.int32),
             "positions": np.broadcast_to(np.arange(48, dtype=np.int32), (8, 48)).copy()}
    _, sft = post.train_step(state, post.put_batch(batch))
    _, pretrain = pre.train_step(pre_state, pre.put_batch(tokens))
    sft, pretrain = jax.device_get(sft), jax.device_get(pretrain)
    assert float(pretrain["router_loss"]) > 0
    np.testing.assert_allclose(sft["router_loss"], pretrain["router_loss"], rtol=1e-5)
    np.testing.assert_allclose(sft["loss"], sft["task_loss"] + sft["router_loss"], rtol=1e-6)
    # and the forward pass itself returns the same aux terms to both
    inputs = jnp.asarray(tokens[:, :-1])
    _, hidden, aux = post.forward(params, inputs, frozen=post.frozen)
    _, pre_hidden, pre_aux = pre.forward(params, inputs)
    np.testing.assert_allclose(aux, pre_aux, rtol=1e-6)
    np.testing.assert_allclose(hidden, pre_hidden, rtol=1e-6)


def test_each_stage_counts_the_tokens_and_flops_it_processes(addition):
    mesh = make_mesh(load_config(None, SMALL).mesh, jax.devices()[:1])
    work = {}
    for kind in ("sft", "reward", "dpo"):
        config = load_config(None, SMALL + [f"sft.train_file={addition['sft']}",
                                            f"reward.train_file={addition['pairs']}",
                                            f"dpo.train_file={addition['pairs']}"])
        trainer, _, _, _ = Stage(kind, **QUIET).build(config, mesh)
        work[kind] = trainer.step_work()
        per_token = trainer.flops_per_token
    rows = 8 * 48
    assert work["sft"] == (rows, pytest.approx(rows * per_token))
    assert work["reward"] == (2 * rows, pytest.approx(2 * rows * per_token))
    # DPO: the pair's two rows trained (forward + backward), then the reference's forward
    assert work["dpo"] == (4 * rows, pytest.approx((2 * rows + 2 * rows / 3) * per_token))


def test_a_post_trainer_takes_only_tasks():
    class Untyped:
        needs_reference = False

    assert isinstance(BaseTask(), Task) and not isinstance(Untyped(), Task)
    with pytest.raises(TypeError, match="not a post/stages.py Task"):
        PostTrainer(load_config(None, SMALL), None, ByteTokenizer(), Untyped())


@pytest.mark.parametrize("command", ["sft", "reward", "dpo", "ppo"])
def test_post_commands_start_jax_distributed_first(command, monkeypatch):
    from foundations.parallel import distributed
    from foundations.post import cli

    class Started(Exception):
        pass

    def initialize(settings):
        raise Started(settings)
    monkeypatch.setattr(distributed, "initialize", initialize)
    args = type("Args", (), {"config": "experiments/mixtral_tiny.yaml", "overrides": [],
                             "command": command, "run_dir": None, "no_progress": True})
    with pytest.raises(Started):
        cli._stage(args)

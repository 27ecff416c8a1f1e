"""The decoder model: causality, RoPE, training to overfit, schedules (the optimizer itself:
test_optim.py; parameter and FLOP counts: test_flops.py)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import ModelConfig, OptimizerConfig, ScheduleConfig, load_config
from foundations.models.decoder import Decoder
from foundations.models.positions import apply_rope
from foundations.train.loop import build
from foundations.train.optim import learning_rate_schedule

LLAMA_LIKE = {"norm": "rmsnorm", "mlp": "swiglu", "positions.kind": "rope",
              "tie_embeddings": False, "use_bias": False, "num_kv_heads": 2}


def model_config(**kw) -> ModelConfig:
    """A small resolved model config; keys are model settings (nested ones dotted)."""
    settings = {"num_layers": 2, "d_model": 32, "num_heads": 4, "max_seq_len": 16,
                "vocab_size": 64, **kw}
    overrides = [f"model.{key}={json.dumps(value)}" for key, value in settings.items()]
    return load_config(None, overrides + ["data.seq_len=16"]).model


@pytest.mark.parametrize("kw", [{}, LLAMA_LIKE], ids=["gpt2", "llama"])
def test_model_is_causal(kw):
    cfg = model_config(**kw)
    model = Decoder(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, cfg.vocab_size)
    params = model.init(jax.random.PRNGKey(0), tokens)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % cfg.vocab_size)
    a, b = model.apply(params, tokens), model.apply(params, changed)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-3


def test_rope_scores_depend_only_on_offset():
    key_q, key_k = jax.random.split(jax.random.PRNGKey(0))
    q = jax.random.normal(key_q, (1, 1, 1, 16))
    k = jax.random.normal(key_k, (1, 1, 1, 16))

    def score(m, n):
        rq = apply_rope(q, jnp.array([[m]]), 10000.0)
        rk = apply_rope(k, jnp.array([[n]]), 10000.0)
        return float(jnp.sum(rq * rk))

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
    assert score(3, 1) == pytest.approx(score(102, 100), rel=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    # a rotation keeps the norm
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, jnp.array([[57]]), 1e4)),
                               jnp.linalg.norm(q), rtol=1e-5)


@pytest.mark.parametrize("extra", [[], ["model.norm=rmsnorm", "model.mlp=swiglu",
                                        "model.positions.kind=rope", "model.num_kv_heads=2",
                                        "model.tie_embeddings=false", "model.use_bias=false"]],
                         ids=["gpt2", "llama"])
def test_tiny_model_overfits_one_batch(tiny_config, extra):
    cfg = tiny_config("optimizer.lr=1e-2", "optimizer.weight_decay=0", "schedule.kind=constant",
                      "schedule.warmup_steps=10", "model.d_model=64", "train.steps=300", *extra)
    data, trainer = build(cfg)
    state = trainer.init_state()
    batch = trainer.put_batch(data.train_tokens[:8 * 33].reshape(8, 33))
    losses = []
    for _ in range(300):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
        if losses[-1] < 0.1:
            break
    assert losses[0] > 4.0
    assert losses[-1] < 0.1, f"loss after {len(losses)} steps: {losses[-1]}"


@pytest.mark.parametrize("kind, checks", [
    ("cosine", {0: 0.0, 10: 1.0, 60: 0.55, 110: 0.1}),
    ("linear", {5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1}),
    ("constant", {10: 1.0, 110: 1.0}),
    ("wsd", {10: 1.0, 80: 1.0, 90: 1.0, 100: 0.55, 110: 0.1}),
])
def test_schedules(kind, checks):
    opt = OptimizerConfig(lr=1.0)
    sched = ScheduleConfig(kind=kind, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.18)
    schedule = learning_rate_schedule(opt, sched, total_steps=110)
    for step, lr in checks.items():
        assert float(schedule(step)) == pytest.approx(lr, abs=1e-3), (kind, step)


def test_warmup_below_one_is_a_fraction_of_the_run():
    opt = OptimizerConfig(lr=1.0)
    as_fraction = learning_rate_schedule(opt, ScheduleConfig(warmup_steps=0.25), total_steps=40)
    as_steps = learning_rate_schedule(opt, ScheduleConfig(warmup_steps=10), total_steps=40)
    for step in (0, 5, 10, 20, 39):
        assert float(as_fraction(step)) == pytest.approx(float(as_steps(step)))
    assert float(as_fraction(5)) == pytest.approx(0.5)


def test_the_smoke_recipe_runs_at_twenty_steps():
    """The first thing a new user tries: a fractional warmup scales with train.steps."""
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"
    config = load_config(smoke, ["train.steps=20"])
    assert config.schedule.warmup_for(config.train.steps) == 2

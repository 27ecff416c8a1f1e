"""Every family trains (loss falls) and, on 8 simulated devices, matches one device exactly."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import ConfigError, MeshConfig, load_config
from foundations.data.pipeline import load_text_data
from foundations.models.encoder import Encoder, mean_pool
from foundations.models.families import build_model
from foundations.flops import param_counts
from foundations.parallel.mesh import make_mesh
from foundations.train.loop import build

FAST = ["model.max_seq_len=16", "data.seq_len=16", "optimizer.lr=1e-2",
        "optimizer.weight_decay=0", "schedule.kind=constant", "schedule.warmup_steps=1"]
MIXTRAL = ["model.moe.num_experts=4", "model.moe.experts_per_token=2", "model.mlp=swiglu",
           "model.norm=rmsnorm", "model.positions.kind=rope", "model.num_kv_heads=2",
           "model.use_bias=false", "model.moe.z_loss_coef=0.001"]
BERT = ["model.family=encoder", "objective.kind=mlm", "model.norm_position=post"]
T5 = ["model.family=encdec", "objective.kind=span", "model.positions.kind=t5_bias",
      "model.norm=rmsnorm", "model.use_bias=false", "model.vocab_size=320"]
ELECTRA = ["model.family=encoder", "objective.kind=electra", "model.norm_position=post"]
PREFIX = ["objective.kind=prefix_lm", "model.positions.kind=alibi", "model.local_window_size=8"]

SHARDED = {  # family -> (overrides, mesh of 8 devices)
    "mixtral": (MIXTRAL, MeshConfig(data=1, fsdp=2, tensor=2, expert=2)),
    "bert": (BERT, MeshConfig(data=2, fsdp=2, tensor=2)),
    "t5": (T5, MeshConfig(data=2, fsdp=2, tensor=2)),
}
STEPS = 8


def train(trainer, rows, steps, snapshot_at=None, state=None):
    """Steps on the same rows (a fresh objective draw each step); losses, metrics, snapshot."""
    state = trainer.init_state() if state is None else state
    losses, snapshot = [], None
    for step in range(steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(rows, step))
        losses.append(float(metrics["loss"]))
        if step + 1 == snapshot_at:
            snapshot = jax.tree.map(np.asarray, state["params"])
    return losses, metrics, snapshot, state


@pytest.fixture(scope="module")
def data(corpus):
    return load_text_data(load_config(None, [f"data.train_files=[{corpus}]"]).data)


# bert in the quick loop; mixtral and t5 (each a long compile on 8 devices) are slow: test_moe
# and the t5 tests below keep those families in the quick loop
@pytest.mark.parametrize("family", [f if f == "bert" else pytest.param(f, marks=pytest.mark.slow)
                                    for f in SHARDED])
def test_family_trains_and_sharded_equals_unsharded(tiny_config, data, family):
    overrides, mesh_cfg = SHARDED[family]
    cfg = tiny_config(*FAST, *overrides)
    rows = data.train_tokens[:8 * 17].reshape(8, 17)
    _, single = build(cfg, make_mesh(MeshConfig(), jax.devices()[:1]), data)
    initial = jax.device_get(single.init_state())
    losses, metrics, params_at_2, trained = train(single, rows, STEPS, snapshot_at=2,
                                                  state=jax.device_put(initial))
    assert losses[-1] < losses[0] - 0.3, losses

    # the same initial state laid out on the mesh (saves compiling the sharded init)
    _, sharded = build(cfg, make_mesh(mesh_cfg, jax.devices()[:8]), data)
    sharded_losses, _, _, state = train(
        sharded, rows, 2, state=jax.device_put(initial, sharded.state_shardings))
    np.testing.assert_allclose(sharded_losses, losses[:2], rtol=2e-5)
    # (Adam divides by sqrt(v): a gradient that differs in its last bits can move a weight
    # by a visible fraction of one lr step, hence atol 1e-4 with lr 1e-2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                 jax.tree.map(np.asarray, state["params"]), params_at_2)
    if family == "mixtral":  # router losses reach the loss; experts sharded on `expert`
        assert metrics["loss"] == pytest.approx(metrics["task_loss"] + metrics["router_loss"])
        assert float(metrics["router_loss"]) > 0.0
        spec = sharded.state_shardings["params"]["blocks"]["mlp"]["up"].spec
        assert spec[1] == "expert", spec
    if family == "bert":  # evaluation runs the objective's transform with its own seed
        held_out = data.val_tokens[:8 * 17].reshape(8, 17)
        before = single.eval_metrics(initial["params"], held_out)
        after = single.eval_metrics(trained["params"], held_out)
        assert set(after) == {"loss", "mlm_accuracy"}
        assert after["loss"] < before["loss"] - 0.3, (before, after)
        assert after["mlm_accuracy"] > before["mlm_accuracy"] + 0.05, (before, after)


@pytest.mark.parametrize("overrides", [pytest.param(ELECTRA, marks=pytest.mark.slow), PREFIX],
                         ids=["electra", "prefix_lm"])   # electra: the by-hand test below is quick
def test_objective_trains(tiny_config, data, overrides):
    cfg = tiny_config(*FAST, *overrides)
    _, trainer = build(cfg, make_mesh(MeshConfig(), jax.devices()[:1]), data)
    rows = data.train_tokens[:8 * 17].reshape(8, 17)
    _, first, _, _ = train(trainer, rows, 1)
    losses, metrics, _, state = train(trainer, rows, STEPS)
    assert losses[-1] < losses[0] - 0.3, losses
    metrics = {k: float(v) for k, v in metrics.items()}
    if "electra" in overrides[1]:
        # the loss is MLM + 50 * detection, and the detection accuracy is what users read
        assert metrics["loss"] == pytest.approx(metrics["mlm_loss"] + 50 * metrics["disc_loss"],
                                                rel=1e-5)
        # eight steps learn the prior (flag nothing: accuracy 1 - replaced_fraction, the
        # entropy of the replace rate as loss), not yet the detection; a random or an
        # everything-flagging discriminator is below that baseline
        assert 0.0 < metrics["replaced_fraction"] < 0.2
        assert metrics["rtd_accuracy"] >= 1 - metrics["replaced_fraction"] - 1e-6, metrics
        assert metrics["disc_loss"] < float(first["disc_loss"]) - 0.2, (first, metrics)
    else:
        assert metrics["ppl"] == pytest.approx(np.exp(metrics["loss"]), rel=1e-4)


def test_electra_detection_metrics_by_hand(tiny_config, data):
    """Accuracy counts every real token; recall only the replaced ones, so a discriminator that
    answers "original" everywhere gets accuracy 1 - replaced_fraction but recall 0."""
    cfg = tiny_config(*FAST, *ELECTRA)
    _, trainer = build(cfg, make_mesh(MeshConfig(), jax.devices()[:1]), data)
    targets = jnp.array([[5, 6, 7, 8, 9, 10]])
    corrupted = jnp.array([[5, 1, 7, 2, 3, 0]])          # positions 1, 3, 4 (and pad 5) differ
    padding = jnp.array([[True, True, True, True, True, False]])
    disc_logits = jnp.array([[-1.0, 2.0, 3.0, -2.0, 1.0, 5.0]])  # flags 1, 2, 4 (and pad 5)
    batch = {"targets": targets, "weights": jnp.zeros((1, 6)), "padding": padding,
             "inputs": targets, "selected": padding, "segments": jnp.zeros_like(targets)}

    def apply(params, rng, *args):
        return (jnp.zeros((1, 6, 320)), disc_logits, corrupted), 0.0

    _, metrics = trainer.objective.loss(apply, None, batch, None)
    assert float(metrics["replaced_fraction"]) == pytest.approx(3 / 5)
    assert float(metrics["rtd_accuracy"]) == pytest.approx(3 / 5)  # positions 0, 1, 4
    assert float(metrics["rtd_recall"]) == pytest.approx(2 / 3)    # 1 and 4 of 1, 3, 4
    nothing = jnp.full((1, 6), -9.0)
    _, metrics = trainer.objective.loss(
        lambda *a: ((jnp.zeros((1, 6, 320)), nothing, corrupted), 0.0), None, batch, None)
    assert float(metrics["rtd_recall"]) == 0.0
    assert float(metrics["rtd_accuracy"]) == pytest.approx(1 - 3 / 5)


def test_objective_must_fit_family(tiny_config):
    with pytest.raises(ConfigError, match="does not fit"):
        tiny_config("objective.kind=mlm")
    with pytest.raises(ConfigError, match="not one of"):
        tiny_config("objective.kind=nsp")


def test_encoder_ignores_padding_and_mean_pools(tiny_config):
    cfg = tiny_config(*BERT).model
    model = Encoder(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 10), 0, 256)
    padding = jnp.arange(10)[None, :] < jnp.array([[7], [10]])
    params = jax.jit(model.init)(jax.random.PRNGKey(1), tokens, None, padding)
    apply = jax.jit(model.apply)
    out = apply(params, tokens, None, padding)
    changed = apply(params, tokens.at[0, 7:].set(5), None, padding)  # only padding changed
    np.testing.assert_allclose(out["hidden"][0, :7], changed["hidden"][0, :7], atol=1e-5)
    assert np.abs(np.asarray(out["hidden"][0, :7] - apply(
        params, tokens.at[0, 3].set(5), None, padding)["hidden"][0, :7])).max() > 1e-3
    pooled = mean_pool(out["hidden"], padding)
    np.testing.assert_allclose(pooled[0], out["hidden"][0, :7].mean(0), atol=1e-6)
    assert out["logits"].shape == (2, 10, cfg.vocab_size) and out["pooled"].shape == (2, 32)
    # the MLM head is tied: its output projection is the token embedding table
    assert "lm_head" not in params["params"] and "mlm_bias" in params["params"]


EXPERIMENTS = Path(__file__).parent.parent / "experiments"
# parameter counts of the reference models (Hugging Face): GPT-2 small with its vocabulary
# padded to 50304, Llama-3.2-1B, T5-base; BERT-base's 109,482,240 plus its MLM head's transform,
# norm and output bias (768*768 + 768 + 2*768 + 30522)
BIG_SHAPES = {"gpt2_124m": 124_475_904, "llama_1b": 1_235_814_400, "t5_base": 222_903_552,
              "bert_base": 109_482_240 + 768 * 768 + 768 + 2 * 768 + 30522}


@pytest.mark.parametrize("name", ["gpt2_tiny", "llama_tiny", "mixtral_tiny", "bert_tiny",
                                  "t5_tiny", "electra_tiny", *BIG_SHAPES])
def test_recipes_load_and_big_shapes_match_the_references(name):
    config = load_config(EXPERIMENTS / f"{name}.yaml")
    if name not in BIG_SHAPES:
        return
    model_cfg = config.model
    model = build_model(config)
    x = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            *((x, x) if model_cfg.family == "encdec" else (x,)))
    assert sum(v.size for v in jax.tree.leaves(shapes["params"])) == BIG_SHAPES[name]
    assert param_counts(model_cfg, config.objective).total == BIG_SHAPES[name]


def test_t5_decoder_is_causal_reads_the_encoder_and_shares_its_bias(tiny_config):
    from foundations.models.encdec import EncoderDecoder
    cfg = tiny_config(*T5).model
    model = EncoderDecoder(cfg)
    inputs = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 256)
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, 256)
    params = jax.jit(model.init)(jax.random.PRNGKey(2), inputs, targets)
    apply = jax.jit(model.apply)
    logits = apply(params, inputs, targets)
    later = apply(params, inputs, targets.at[:, 4:].set(7))        # change future targets
    np.testing.assert_allclose(logits[:, :4], later[:, :4], atol=1e-5)
    other_input = apply(params, inputs.at[:, 5].set(9), targets)     # change one input token
    assert np.abs(np.asarray(other_input - logits)).max() > 1e-4
    # one relative-position table per stack, shared by its layers (no `layers` axis)
    p = params["params"]
    assert p["encoder_rel_bias"]["table"].value.shape == (32, 4)
    assert p["decoder_rel_bias"]["table"].value.shape == (32, 4)
    assert "cross_attention" in p["decoder"] and "cross_attention" not in p["encoder"]

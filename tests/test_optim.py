"""The optimizer: which parameters decay (from their logical axes, every family), that the mask
reaches AdamW, that gradients are clipped, and that bf16 compute really computes in bf16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from foundations.config import MeshConfig, OptimizerConfig, load_config
from foundations.parallel.mesh import make_mesh
from foundations.tokenizers.byte import ByteTokenizer
from foundations.train.loop import make_trainer
from foundations.train.optim import decay_mask
from conftest import TINY

FAMILIES = {
    "gpt2": [],
    "llama": ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
              "model.tie_embeddings=false", "model.use_bias=false", "model.num_kv_heads=2"],
    "mixtral": ["model.moe.num_experts=4", "model.mlp=swiglu", "model.norm=rmsnorm",
                "model.positions.kind=rope", "model.use_bias=true"],
    "bert": ["model.family=encoder", "objective.kind=mlm", "model.norm_position=post"],
    "t5": ["model.family=encdec", "objective.kind=span", "model.positions.kind=t5_bias",
           "model.norm=rmsnorm", "model.use_bias=false", "model.vocab_size=320"],
    "electra": ["model.family=encoder", "objective.kind=electra", "model.norm_position=post"],
}

# ---- the expected weight-decay flag of every parameter, with the default optimizer config
BLOCK_WITH_BIASES = {  # GPT-2 / BERT / ELECTRA block: LayerNorm, GELU, biases
    "attention/query/kernel": True, "attention/query/bias": False,
    "attention/key/kernel": True, "attention/key/bias": False,
    "attention/value/kernel": True, "attention/value/bias": False,
    "attention/out/kernel": True, "attention/out/bias": False,
    "attention_norm/LayerNorm_0/scale": False, "attention_norm/LayerNorm_0/bias": False,
    "mlp/up/kernel": True, "mlp/up/bias": False,
    "mlp/down/kernel": True, "mlp/down/bias": False,
    "mlp_norm/LayerNorm_0/scale": False, "mlp_norm/LayerNorm_0/bias": False,
}
T5_BLOCK = {  # RMSNorm, no biases
    "attention/query/kernel": True, "attention/key/kernel": True,
    "attention/value/kernel": True, "attention/out/kernel": True,
    "attention_norm/RMSNorm_0/scale": False,
    "mlp/up/kernel": True, "mlp/down/kernel": True, "mlp_norm/RMSNorm_0/scale": False,
}
BERT_EMBEDDINGS = {
    "token_embed/embedding": False, "pos_embed/table/embedding": False,
    "segment_embed/embedding": False,
    "embed_norm/LayerNorm_0/scale": False, "embed_norm/LayerNorm_0/bias": False,
    "pooler/kernel": True, "pooler/bias": False,
}


def under(prefix: str, table: dict) -> dict:
    return {f"{prefix}/{path}": flag for path, flag in table.items()}


EXPECTED = {
    "gpt2": {
        **under("blocks", BLOCK_WITH_BIASES),
        "token_embed/embedding": False, "pos_embed/table/embedding": False,
        "final_norm/LayerNorm_0/scale": False, "final_norm/LayerNorm_0/bias": False,
    },
    "llama": {
        "blocks/attention/query/kernel": True, "blocks/attention/key/kernel": True,
        "blocks/attention/value/kernel": True, "blocks/attention/out/kernel": True,
        "blocks/attention_norm/RMSNorm_0/scale": False,
        "blocks/mlp/up/kernel": True, "blocks/mlp/gate/kernel": True,
        "blocks/mlp/down/kernel": True, "blocks/mlp_norm/RMSNorm_0/scale": False,
        "final_norm/RMSNorm_0/scale": False,
        "token_embed/embedding": False, "lm_head/kernel": True,  # untied head: a projection
    },
    "mixtral": {
        "blocks/attention/query/kernel": True, "blocks/attention/query/bias": False,
        "blocks/attention/key/kernel": True, "blocks/attention/key/bias": False,
        "blocks/attention/value/kernel": True, "blocks/attention/value/bias": False,
        "blocks/attention/out/kernel": True, "blocks/attention/out/bias": False,
        "blocks/attention_norm/RMSNorm_0/scale": False,
        "blocks/mlp/router": True,
        "blocks/mlp/up": True, "blocks/mlp/up_bias": False,
        "blocks/mlp/gate": True, "blocks/mlp/gate_bias": False,
        "blocks/mlp/down": True, "blocks/mlp/down_bias": False,
        "blocks/mlp_norm/RMSNorm_0/scale": False,
        "final_norm/RMSNorm_0/scale": False, "token_embed/embedding": False,
    },
    "bert": {
        **under("blocks", BLOCK_WITH_BIASES), **BERT_EMBEDDINGS,
        "mlm_transform/kernel": True, "mlm_transform/bias": False,
        "mlm_norm/LayerNorm_0/scale": False, "mlm_norm/LayerNorm_0/bias": False,
        "mlm_bias": False,
    },
    "t5": {
        **under("encoder", T5_BLOCK), **under("decoder", T5_BLOCK),
        "decoder/cross_attention/query/kernel": True, "decoder/cross_attention/key/kernel": True,
        "decoder/cross_attention/value/kernel": True, "decoder/cross_attention/out/kernel": True,
        "decoder/cross_attention_norm/RMSNorm_0/scale": False,
        "encoder_rel_bias/table": False, "decoder_rel_bias/table": False,
        "encoder_norm/RMSNorm_0/scale": False, "decoder_norm/RMSNorm_0/scale": False,
        "token_embed/embedding": False,
    },
}
EXPECTED["electra"] = {
    **under("generator", EXPECTED["bert"]),
    **under("discriminator", {
        **under("blocks", BLOCK_WITH_BIASES), **BERT_EMBEDDINGS,
        "rtd_transform/kernel": True, "rtd_transform/bias": False,
        "rtd_norm/LayerNorm_0/scale": False, "rtd_norm/LayerNorm_0/bias": False,
        "rtd_out/kernel": True, "rtd_out/bias": False,
    }),
}
# the embedding and position tables: what `optimizer.decay_embeddings` adds back
TABLES = {
    "gpt2": {"token_embed/embedding", "pos_embed/table/embedding"},
    "llama": {"token_embed/embedding"},
    "mixtral": {"token_embed/embedding"},
    "bert": {"token_embed/embedding", "pos_embed/table/embedding", "segment_embed/embedding"},
    "t5": {"token_embed/embedding", "encoder_rel_bias/table", "decoder_rel_bias/table"},
    "electra": {f"{stack}/{table}" for stack in ("generator", "discriminator")
                for table in ("token_embed/embedding", "pos_embed/table/embedding",
                              "segment_embed/embedding")},
}


def flat(tree) -> dict:
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in leaves}


@pytest.fixture(scope="module")
def trainers():
    """family -> its tiny Trainer on one device (built on demand; nothing is compiled)."""
    mesh, built = make_mesh(MeshConfig(), jax.devices()[:1]), {}

    def get(family, *extra):
        key = (family, *extra)
        if key not in built:
            config = load_config(None, TINY + FAMILIES[family] + ["schedule.warmup_steps=0",
                                                                  *extra])
            built[key] = make_trainer(config, ByteTokenizer(), mesh)
        return built[key]
    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_decay_mask_of_every_parameter(trainers, family):
    trainer = trainers(family)
    specs = flat(trainer.logical_specs)
    shapes = flat(trainer.abstract_state["params"])
    unnamed = {p: (tuple(s), shapes[p].shape) for p, s in specs.items()
               if len(s) != len(shapes[p].shape)}
    assert not unnamed, f"parameters without a logical name for each dimension: {unnamed}"

    mask = flat(decay_mask(OptimizerConfig(), trainer.logical_specs))
    wrong = {p: (tuple(specs.get(p, ())), mask.get(p)) for p in set(mask) | set(EXPECTED[family])
             if mask.get(p) != EXPECTED[family].get(p)}
    assert not wrong, f"path: (logical axes, decays) where the table says otherwise: {wrong}"

    with_tables = flat(decay_mask(OptimizerConfig(decay_embeddings=True), trainer.logical_specs))
    assert {p for p in mask if with_tables[p] != mask[p]} == TABLES[family]
    with_vectors = flat(decay_mask(OptimizerConfig(decay_norms_and_biases=True),
                                   trainer.logical_specs))
    vectors = {p for p, decays in EXPECTED[family].items() if not decays} - TABLES[family]
    assert {p for p in mask if with_vectors[p] != mask[p]} == vectors


@pytest.mark.parametrize("family", ["mixtral", "bert", "t5"])
def test_trainer_optimizer_decays_exactly_the_masked_parameters(trainers, family):
    """Zero gradients: Adam's step is 0, so a parameter changes only by weight decay,
    p -> p * (1 - lr * weight_decay), and only where the table says it decays."""
    trainer = trainers(family)
    opt = trainer.config.optimizer
    lr = float(trainer.schedule(0))
    assert lr > 0 and opt.weight_decay > 0
    params = jax.tree.map(lambda x: jnp.full(x.shape, 2.0, x.dtype),
                          trainer.abstract_state["params"])
    grads = jax.tree.map(jnp.zeros_like, params)

    @jax.jit
    def step(grads, params):
        updates, _ = trainer.tx.update(grads, trainer.tx.init(params), params)
        return optax.apply_updates(params, updates)
    new = flat(step(grads, params))
    for path, decays in EXPECTED[family].items():
        expected = 2.0 * (1 - lr * opt.weight_decay) if decays else 2.0
        np.testing.assert_allclose(new[path], expected, rtol=1e-6, err_msg=path)


def test_gradients_are_clipped_to_clip_norm(trainers):
    """One real train step: `grad_norm` is the norm before clipping, and the step (Adam's first
    moment, the new params) is the one from the gradients scaled down to clip_norm."""
    clip = 0.01
    trainer = trainers("gpt2", f"optimizer.clip_norm={clip}")
    opt = trainer.config.optimizer
    batch = trainer.put_batch(np.random.default_rng(0).integers(0, 256, (8, 33), np.int32))
    state = trainer.init_state()
    params = jax.device_get(state["params"])
    grads, _ = trainer.in_mesh(jax.jit(jax.grad(trainer.loss, has_aux=True)))(
        state["params"], jax.tree.map(lambda x: x[0], batch),
        jax.random.fold_in(state["rng"], 0))
    norm = float(optax.tree.norm(grads))
    assert norm > 10 * clip, "the test needs gradients well above clip_norm"

    state, metrics = trainer.train_step(state, batch)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    clipped = jax.tree.map(lambda g: g * (clip / norm), grads)
    # Adam's first step barely depends on the gradients' scale; its first moment shows it
    mu = optax.tree.get(state["opt_state"], "mu")
    jax.tree.map(lambda m, g: np.testing.assert_allclose(m, (1 - opt.b1) * g, atol=1e-9,
                                                         rtol=1e-4), mu, clipped)
    reference = optax.adamw(float(trainer.schedule(0)), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                            weight_decay=opt.weight_decay,
                            mask=decay_mask(opt, trainer.logical_specs))
    updates, _ = reference.update(clipped, reference.init(params), params)
    jax.tree.map(lambda new, want: np.testing.assert_allclose(new, want, atol=1e-6),
                 jax.device_get(state["params"]), optax.apply_updates(params, updates))


def lowered_matmuls(trainer) -> list[str]:
    """The dot_general / convolution lines of the lowered (StableHLO) train step; checks on the
    way that the step takes and returns float32 parameters."""
    lowered = trainer.lower_train_step()
    for params in trainer.abstract_state["params"], lowered.out_info[0]["params"]:
        assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    return [line.strip() for line in lowered.as_text().splitlines()
            if re.search(r"stablehlo\.(dot_general|convolution)", line)]


def test_bf16_compute_lowers_to_bf16_matmuls_with_fp32_params(trainers):
    bf16 = lowered_matmuls(trainers("gpt2", "model.dtype=bfloat16"))
    fp32 = lowered_matmuls(trainers("gpt2"))
    assert len(bf16) == len(fp32) > 10  # forward and backward
    not_bf16 = [line for line in bf16 if "bf16" not in line]
    assert not not_bf16, f"matmuls outside bf16 with model.dtype=bfloat16: {not_bf16[:3]}"
    assert not [line for line in fp32 if "bf16" in line]


def test_a_parameter_without_logical_axes_is_refused():
    with pytest.raises(ValueError, match="mlp/kernel has no logical axis names"):
        decay_mask(OptimizerConfig(), {"mlp": {"kernel": jax.sharding.PartitionSpec()}})

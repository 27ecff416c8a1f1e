"""Prompt tuning: soft-prompt shapes, only they are trained, and the model reads them as a causal
prefix (vectors equal to real tokens' embeddings are those tokens prepended); that they train
(finite-difference gradients, a falling loss) is tests/test_adapter_gradients.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config, replace
from foundations.models.families import build_model
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import Stage, segment_mask
from foundations.post.synthetic import write_addition

PROMPT = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=64",
          "data.seq_len=48", "train.batch_size=8", "train.steps=3", "train.eval_batches=1",
          "train.sample_tokens=0", "schedule.warmup_steps=1", "checkpoint.async_save=false",
          "prompt_tuning.num_tokens=5", "optimizer.lr=1e-2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = write_addition(tmp_path_factory.mktemp("addition"), count=200, seed=2)
    config = load_config(None, PROMPT + [f"sft.train_file={data['sft']}"])
    trainer, iterator, _, _ = Stage("sft", log=lambda _: None).build(
        config, make_mesh(config.mesh, jax.devices()[:1]))
    return config, trainer, iterator


def test_shapes_and_trainable_parameters(built):
    config, trainer, _ = built
    state = trainer.init_state()
    assert jax.tree.map(jnp.shape, state["params"]) == {"prompt": (5, 32)}
    assert trainer.trainable_count()[0] == 5 * 32
    moments = [x.shape for x in jax.tree.leaves(state["opt_state"]) if x.shape]
    assert moments == [(5, 32), (5, 32)]


def test_a_soft_prompt_of_real_token_embeddings_is_those_tokens_prepended(built):
    """Soft-prompt vectors equal to the embeddings of 5 real tokens: the tuned model's logits
    and hidden states are the plain model's on those 5 tokens followed by the input."""
    config, trainer, _ = built
    base = trainer.frozen["base"]
    tokens = jnp.asarray(trainer.task.val_rows["tokens"][:2, :-1])
    real = jnp.asarray([ord(c) for c in "12+3="])
    params = {"prompt": base["token_embed"]["embedding"][real]}
    logits, hidden, _ = trainer.forward(params, tokens, frozen=trainer.frozen)
    ids = jnp.concatenate([jnp.broadcast_to(real, (2, 5)), tokens], axis=1)
    plain, plain_hidden, _ = trainer.forward(None, ids, frozen=trainer.frozen)
    assert logits.shape == (2, 48, config.model.vocab_size)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain[:, 5:]), atol=2e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(plain_hidden[:, 5:]), atol=2e-5,
                               rtol=1e-5)


def test_soft_prompt_is_a_causal_prefix_of_the_input(built):
    """The tuned model equals the plain decoder run on [prompt ids, tokens] with the prompt
    vectors as extra embedding rows (no packing: a plain causal mask)."""
    config, trainer, _ = built
    prompt = jax.random.normal(jax.random.PRNGKey(3), (5, 32))
    params = {"prompt": prompt}
    rows = trainer.task.val_rows
    tokens = jnp.asarray(rows["tokens"][:2, :-1])
    first = rows["segments"][:2] == 1   # the first example of each packed row
    tuned, _, _ = trainer.forward(params, tokens, frozen=trainer.frozen,
                                  positions=jnp.asarray(rows["positions"][:2]),
                                  mask=segment_mask(jnp.asarray(rows["segments"][:2])))
    vocab = config.model.vocab_size
    big = build_model(replace(config, {"model.vocab_size": vocab + 5}))
    table = jnp.concatenate([trainer.frozen["base"]["token_embed"]["embedding"], prompt])
    base = {**trainer.frozen["base"], "token_embed": {"embedding": table}}
    ids = jnp.concatenate([jnp.broadcast_to(vocab + jnp.arange(5), (2, 5)), tokens], axis=1)
    plain = big.apply({"params": base}, ids)[:, 5:, :vocab]
    for r in range(2):
        np.testing.assert_allclose(np.asarray(tuned[r][first[r]]),
                                   np.asarray(plain[r][first[r]]), atol=2e-5, rtol=1e-5)
    untuned, _, _ = trainer.forward(None, tokens, frozen=trainer.frozen)
    assert not np.allclose(np.asarray(untuned), np.asarray(tuned), atol=1e-3)

"""SFT: the loss mask is exactly the response, packed examples do not see each other, and a
tiny run lowers the response loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config, replace
from foundations.parallel.mesh import make_mesh
from foundations.post.data import encode_example, pack_rows
from foundations.post.stages import Stage, segment_mask
from foundations.post.synthetic import write_addition
from foundations.tokenizers.byte import ByteTokenizer
from foundations.train.loop import train

TINY_POST = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4",
             "model.max_seq_len=48", "data.seq_len=48", "train.batch_size=8",
             "train.log_every=5", "train.eval_every=0", "train.eval_batches=4",
             "train.sample_tokens=0", "schedule.warmup_steps=2", "checkpoint.every=0",
             "checkpoint.async_save=false", "optimizer.lr=3e-3"]


@pytest.fixture(scope="module")
def addition(tmp_path_factory):
    return write_addition(tmp_path_factory.mktemp("addition"), count=400, seed=0)


def test_loss_mask_is_exactly_the_response():
    tok = ByteTokenizer()
    tokens, weights = encode_example(tok, "Q: {prompt} A: ", "1+2=", "3")
    assert bytes(tokens[:-1].tolist()).decode() == "Q: 1+2= A: 3"
    rows = pack_rows([(tokens, weights), (tokens, weights)], seq_len=31, pack=True)
    n = len(tokens)  # 13: both examples fit in one window of 32 tokens
    assert rows["tokens"].shape == (1, 32)
    targets = rows["tokens"][0, 1:][rows["weights"][0] == 1]
    assert targets.tolist() == [ord("3"), tok.eos_id, ord("3"), tok.eos_id]
    # a target is predicted from position t: '3' from the space before it, eos from '3'
    assert np.flatnonzero(rows["weights"][0]).tolist() == [n - 3, n - 2, 2 * n - 3, 2 * n - 2]
    assert rows["segments"][0].tolist() == [1] * n + [2] * n + [0] * (31 - 2 * n)
    assert rows["positions"][0, :2 * n].tolist() == list(range(n)) * 2


def test_examples_too_long_are_refused():
    tok = ByteTokenizer()
    example = encode_example(tok, "{prompt}", "x" * 40, "y")
    with pytest.raises(ValueError, match="does not fit data.seq_len"):
        pack_rows([example], seq_len=16, pack=True)


def test_packed_logits_equal_each_example_alone(addition):
    config = load_config(None, TINY_POST + [f"sft.train_file={addition['sft']}",
                                            "model.positions.kind=rope"])
    trainer, _, _, _ = Stage("sft", log=lambda _: None).build(config, make_mesh(
        config.mesh, jax.devices()[:1]))
    params = trainer.init_state()["params"]
    rows = {k: v[:1] for k, v in trainer.task.train_rows.items()}
    segments = rows["segments"][0]
    assert segments.max() >= 2, "the first row should hold several examples"
    packed, _, _ = trainer.forward(params, jnp.asarray(rows["tokens"][:, :-1]),
                                   frozen=trainer.frozen,
                                   positions=jnp.asarray(rows["positions"]),
                                   mask=segment_mask(jnp.asarray(rows["segments"])))
    for s in range(1, segments.max() + 1):
        where = np.flatnonzero(segments == s)
        alone, _, _ = trainer.forward(params, jnp.asarray(rows["tokens"][:, where]),
                                      frozen=trainer.frozen)
        np.testing.assert_allclose(np.asarray(packed)[0, where], np.asarray(alone)[0],
                                   atol=2e-5, rtol=1e-5)


def test_tiny_sft_run_lowers_the_response_loss(addition, tmp_path):
    config = load_config(None, TINY_POST + [f"sft.train_file={addition['sft']}",
                                            "train.steps=40"])
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    trainer, _, validate, _ = Stage("sft", log=lambda _: None).build(config, mesh)
    before = validate(trainer.init_state()["params"])["val_loss"]
    summary = train(config, tmp_path / "sft", mesh=mesh, progress=False,
                    stage=Stage("sft", log=lambda _: None))
    assert summary["val_loss"] < before - 1.0, (before, summary["val_loss"])
    # the run's own config, all of it (model.scan_unroll as the trainer resolved it)
    saved = load_config(tmp_path / "sft" / "config.yaml")
    assert saved.model.scan_unroll >= 1 and saved.sft.train_file == str(addition["sft"])
    assert saved == replace(config, {"model.scan_unroll": saved.model.scan_unroll})
    lines = [json.loads(l) for l in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert "val_response_accuracy" in lines[-1]

"""Reward model and DPO: the losses against hand computations, DPO starts at log 2 from its
reference, and short runs rank held-out pairs above chance / raise the implicit-reward margin."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config
from foundations.parallel.mesh import make_mesh
from foundations.post.stages import Stage, bradley_terry_loss, dpo_loss
from foundations.post.synthetic import write_addition
from foundations.train.loop import train

TINY = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=16", "train.log_every=5", "train.eval_every=0",
        "train.eval_batches=4", "train.sample_tokens=0", "schedule.warmup_steps=2",
        "checkpoint.every=0", "checkpoint.async_save=false", "optimizer.lr=3e-3"]
QUIET = {"log": lambda _: None}


def sigmoid_nll(x):
    return math.log1p(math.exp(-x))


def test_bradley_terry_loss_by_hand():
    loss, accuracy = bradley_terry_loss(jnp.array([1.0, 0.2]), jnp.array([0.0, 0.5]))
    assert float(loss) == pytest.approx((sigmoid_nll(1.0) + sigmoid_nll(-0.3)) / 2, rel=1e-6)
    assert float(accuracy) == 0.5


def test_dpo_losses_by_hand():
    args = jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5])
    loss, metrics = dpo_loss(*args, beta=0.5)   # h = (-1 + 1.5) - (-2 + 1.5) = 1
    assert float(loss) == pytest.approx(sigmoid_nll(0.5), rel=1e-6)
    assert float(metrics["reward_margin"]) == pytest.approx(0.5)
    assert float(metrics["chosen_reward"]) == pytest.approx(0.25)
    assert float(metrics["reward_accuracy"]) == 1.0
    smoothed, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(0.9 * sigmoid_nll(0.5) + 0.1 * sigmoid_nll(-0.5),
                                            rel=1e-6)
    ipo, _ = dpo_loss(*args, beta=0.25, kind="ipo")   # (h - 1 / (2 beta))^2 = (1 - 2)^2
    assert float(ipo) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def parity_pairs(tmp_path_factory):
    """A toy preference: even answers over odd ones (held-out pairs are new prompts)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pairs") / "parity.jsonl"
    lines = []
    for _ in range(600):
        a, b = rng.integers(0, 50, size=2)
        even, odd = 2 * int(rng.integers(0, 50)), 2 * int(rng.integers(0, 50)) + 1
        lines.append(json.dumps({"prompt": f"{a}+{b}=", "chosen": str(even),
                                 "rejected": str(odd)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reward_score_reads_the_last_response_position(parity_pairs):
    config = load_config(None, TINY + [f"reward.train_file={parity_pairs}"])
    trainer, _, _, _ = Stage("reward", **QUIET).build(config, make_mesh(config.mesh,
                                                                          jax.devices()[:1]))
    params = trainer.init_state()["params"]
    rows = {k: jnp.asarray(v[:16]) for k, v in trainer.task.val_rows.items()}
    loss, metrics = trainer.loss(params, rows, None, trainer.frozen)
    # by hand: "Q: a+b= A: " + answer, then eos; the score reads the last answer character
    _, hidden, _ = trainer.forward(params, jnp.concatenate([rows["chosen"],
                                                          rows["rejected"]])[:, :-1],
                                   frozen=trainer.frozen)
    val = trainer.task.val_rows
    scores = []
    tokens = np.concatenate([val["chosen"][:16], val["rejected"][:16]])
    for row, h in zip(tokens, np.asarray(hidden)):
        eos = int(np.flatnonzero(row == trainer.task.tokenizer.eos_id)[0])
        scores.append(h[eos - 1] @ np.asarray(params["head"]["kernel"])
                      + float(params["head"]["bias"][0]))
    chosen, rejected = np.array(scores[:16]), np.array(scores[16:])
    expected = np.mean(np.log1p(np.exp(-(chosen - rejected))))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["pairwise_accuracy"]) == pytest.approx(np.mean(chosen > rejected))


def test_reward_model_ranks_held_out_pairs_above_chance(parity_pairs, tmp_path):
    config = load_config(None, TINY + [f"reward.train_file={parity_pairs}", "train.steps=40"])
    summary = train(config, tmp_path / "rm", mesh=make_mesh(config.mesh, jax.devices()[:1]),
                    progress=False, stage=Stage("reward", **QUIET))
    assert summary["val_pairwise_accuracy"] > 0.75, summary


def test_dpo_starts_at_log2_and_raises_the_margin(parity_pairs, tmp_path):
    data = write_addition(tmp_path / "addition", count=200, seed=3)
    mesh = make_mesh(load_config(None, TINY).mesh, jax.devices()[:1])
    sft = load_config(None, TINY + [f"sft.train_file={data['sft']}", "train.steps=5"])
    train(sft, tmp_path / "sft", mesh=mesh, progress=False, stage=Stage("sft", **QUIET))
    config = load_config(None, TINY + [f"dpo.train_file={parity_pairs}", "train.steps=30",
                                       f"train.init_from={tmp_path / 'sft'}", "dpo.beta=0.5"])
    trainer, _, validate, _ = Stage("dpo", **QUIET).build(config, mesh)
    start = validate(trainer.init_state()["params"])
    assert start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["val_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    # RPO: the chosen responses' per-token NLL on top, here where DPO's own loss is log 2
    rpo = load_config(None, TINY + [f"dpo.train_file={parity_pairs}", "dpo.nll_coef=0.5",
                                    f"train.init_from={tmp_path / 'sft'}", "dpo.beta=0.5"])
    trainer_rpo, _, validate_rpo, _ = Stage("dpo", **QUIET).build(rpo, mesh)
    with_nll = validate_rpo(trainer_rpo.init_state()["params"])
    assert with_nll["val_chosen_nll"] == pytest.approx(start["val_chosen_nll"], rel=1e-6)
    assert with_nll["val_chosen_nll"] > 0.1
    assert with_nll["val_loss"] == pytest.approx(math.log(2) + 0.5 * with_nll["val_chosen_nll"],
                                                 rel=1e-5)
    summary = train(config, tmp_path / "dpo", mesh=mesh, progress=False,
                    stage=Stage("dpo", **QUIET))
    assert summary["val_reward_margin"] > 1.0, summary
    assert summary["val_reward_accuracy"] > 0.75, summary
    assert summary["val_chosen_reward"] > 0 > summary["val_rejected_reward"], summary
    # tokens a step processes: SFT its 16 rows of 32; DPO 2 rows per pair, trained, and the same
    # 32 rows once more through the reference
    for run, per_step in (("sft", 16 * 32), ("dpo", 2 * 2 * 16 * 32)):
        logged = [json.loads(line) for line in
                  (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert logged[-1]["tokens"] == logged[-1]["step"] * per_step, run

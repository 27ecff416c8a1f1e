"""PPO: GAE and the clipped objectives against hand computations on a fixed trajectory; KL 0
and ratio 1 when policy, reference and old policy are one; a bandit learns; the CLI runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.config import load_config
from foundations.parallel.mesh import make_mesh
from foundations.post import ppo
from foundations.post.stages import Stage
from foundations.train.loop import train

TINY = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=16", "train.log_every=1", "train.eval_every=0",
        "train.eval_batches=1", "train.sample_tokens=0", "schedule.warmup_steps=0",
        "checkpoint.every=0", "checkpoint.async_save=false", "optimizer.lr=3e-3"]
QUIET = {"log": lambda _: None}

# one row: a prompt token (masked) then three response tokens
MASK = jnp.array([[0.0, 1.0, 1.0, 1.0]])
REWARDS = jnp.array([[9.0, 0.1, -0.2, 1.0]])   # the prompt's 9 is masked out
VALUES = jnp.array([[5.0, 0.5, 0.4, 0.3]])


def test_gae_by_hand():
    advantages, returns = ppo.gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    a3 = 1.0 - 0.3                           # last token: no next value
    a2 = (-0.2 + 0.9 * 0.3 - 0.4) + 0.72 * a3
    a1 = (0.1 + 0.9 * 0.4 - 0.5) + 0.72 * a2
    np.testing.assert_allclose(advantages, [[0.0, a1, a2, a3]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(returns, [[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3]], rtol=1e-6)
    # gamma = lam = 1: the advantage is the reward-to-go minus the value
    advantages, _ = ppo.gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(advantages, [[0.0, 0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3]], rtol=1e-6)


def test_response_mask_keeps_the_first_end_of_text_and_nothing_after():
    new = np.array([[5, 9, 0, 0], [5, 6, 7, 8], [9, 9, 0, 0]])
    np.testing.assert_array_equal(ppo.response_mask(new, eos=9),
                                  [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])


def test_token_rewards_put_the_score_on_the_last_token():
    mask = jnp.array([[0.0, 1.0, 1.0, 0.0]])
    kl = jnp.array([[3.0, 0.5, -0.25, 7.0]])
    rewards = ppo.token_rewards(jnp.array([2.0]), kl, mask, kl_coef=0.1)
    np.testing.assert_allclose(rewards, [[0.0, -0.05, 0.025 + 2.0, 0.0]], rtol=1e-6)


def test_clipped_policy_loss_by_hand():
    old = jnp.log(jnp.array([[0.5, 0.5, 0.5, 0.5]]))
    new = jnp.log(jnp.array([[0.9, 0.55, 0.8, 0.45]]))   # ratios 1.8, 1.1, 1.6, 0.9
    advantages = jnp.array([[5.0, 1.0, -1.0, 2.0]])
    loss, metrics = ppo.policy_loss(new, old, advantages, MASK, clip=0.2)
    # min(r A, clip(r) A): 1.1 * 1 = 1.1; min(-1.6, -1.2) = -1.6; min(1.8, 1.8) = 1.8
    assert float(loss) == pytest.approx(-(1.1 - 1.6 + 0.9 * 2.0) / 3, rel=1e-5)
    assert float(metrics["clip_fraction"]) == pytest.approx(1 / 3)   # only 1.6 is outside
    assert float(metrics["ratio"]) == pytest.approx((1.1 + 1.6 + 0.9) / 3, rel=1e-5)


def test_clipped_value_loss_by_hand():
    old = jnp.array([[0.0, 1.0, 1.0, 1.0]])
    values = jnp.array([[4.0, 1.5, 0.9, 2.0]])
    returns = jnp.array([[0.0, 2.0, 0.0, 1.2]])
    loss = ppo.value_loss(values, old, returns, MASK, clip=0.2)
    # clipped values 1.2, 0.9, 1.2: max((1.5-2)^2, (1.2-2)^2) = .64; (.9)^2 both; max(.64, 0)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81 + 0.64) / 3, rel=1e-5)


def test_kl_zero_and_ratio_one_when_policy_is_reference():
    logits = jnp.array(np.random.default_rng(0).normal(size=(1, 4, 5)), jnp.float32)
    logp = jnp.max(jax.nn.log_softmax(logits, axis=-1), axis=-1)
    assert float(ppo.masked_mean(ppo.kl_penalty(logp, logp), MASK)) == 0.0
    loss, metrics = ppo.policy_loss(logp, logp, jnp.ones_like(logp), MASK, clip=0.2)
    assert float(metrics["ratio"]) == 1.0 and float(metrics["clip_fraction"]) == 0.0
    assert float(loss) == -1.0


def test_entropy_group_advantages_explained_variance_and_kl_controller():
    uniform = jnp.zeros((1, 4, 8))
    assert float(ppo.entropy(uniform, MASK)) == pytest.approx(np.log(8), rel=1e-6)
    adv = ppo.group_advantages(jnp.array([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), group=2)
    np.testing.assert_allclose(adv, [1, -1, 0, 0, 0, 0], atol=1e-5)
    returns = jnp.array([[0.0, 1.0, 2.0, 3.0]])
    assert float(ppo.explained_variance(returns, returns, MASK)) == pytest.approx(1.0)
    assert float(ppo.explained_variance(returns * 0, returns, MASK)) == pytest.approx(0.0)
    assert ppo.adaptive_kl_coef(0.1, kl=10.0, target=1.0) == pytest.approx(0.1 * 1.02)
    assert ppo.adaptive_kl_coef(0.1, kl=0.9, target=1.0) == pytest.approx(0.1 * 0.99)


    delta = jnp.array([[0.0, 0.5, -1.0]])
    np.testing.assert_allclose(ppo.kl_k3(delta * 0, delta)[0],
                               np.exp([0.0, 0.5, -1.0]) - [0.0, 0.5, -1.0] - 1, rtol=1e-6)
    assert float(ppo.kl_k3(delta, delta).max()) == 0.0


def test_group_advantages_come_from_the_scores_alone_whatever_the_kl():
    """GRPO: a group whose samples all score alike has no advantage even when their KLs to the
    reference differ (divided by the group's std, folded-in KL noise would become +-1)."""
    task = ppo.PpoTask.__new__(ppo.PpoTask)
    task.config = load_config(None, ["ppo.advantage=group", "ppo.samples=2"])
    task.kl_coef = 0.05
    w = jnp.ones((4, 3))
    kl = jnp.array([[0.3, 0.1, 0.0], [0.0, 0.0, 0.01], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    advantages, _ = task.advantages(jnp.array([1.0, 1.0, 0.0, 1.0]), kl, jnp.zeros((4, 3)), w)
    np.testing.assert_allclose(advantages, [[0] * 3, [0] * 3, [-1] * 3, [1] * 3], atol=1e-5)


@pytest.fixture(scope="module")
def bandit(tmp_path_factory):
    """A one-step bandit: after "pick", an SFT model answers "a" or "b" about equally; the
    rule rewards "a" only."""
    root = tmp_path_factory.mktemp("bandit")
    (root / "sft.jsonl").write_text("".join(
        json.dumps({"prompt": "pick", "response": "ab"[i % 2]}) + "\n" for i in range(200)))
    (root / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": "pick", "answer": "a"}) + "\n" for _ in range(100)))
    sft = load_config(None, TINY + [f"sft.train_file={root / 'sft.jsonl'}", "train.steps=80",
                                    "optimizer.lr=1e-2"])
    train(sft, root / "sft", mesh=make_mesh(sft.mesh, jax.devices()[:1]), progress=False,
          stage=Stage("sft", **QUIET))
    return root


def ppo_config(bandit, *overrides):
    return load_config(None, TINY + [f"train.init_from={bandit / 'sft'}",
                                     f"ppo.prompts_file={bandit / 'prompts.jsonl'}",
                                     "ppo.max_new_tokens=1", "optimizer.lr=1e-3", *overrides])


def probability_of(trainer, params, text):
    """p(text's first token | the template of "pick") under `params`."""
    task = trainer.task
    ids = jnp.asarray(task.train_rows["prompt"][:1])
    mask = jnp.asarray(task.train_rows["prompt_mask"][:1])
    positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    logits = trainer.forward(params, ids, positions=positions,
                             mask=ppo.segment_mask(mask.astype(jnp.int32)))[0]
    token = task.tokenizer.encode(text)[0]
    return float(jax.nn.softmax(logits[0, -1].astype(jnp.float32))[token])


@pytest.fixture(scope="module")
def gae_runs(bandit, tmp_path_factory):
    """The GAE bandit trained once for the tests that read it: the SFT model's p("a") and the
    first rollout's metrics from a built trainer, then `train` for 5 rollout steps straight
    through ("whole") and the same run stopped after step 2 and resumed ("parts")."""
    root = tmp_path_factory.mktemp("gae")
    config = ppo_config(bandit, "ppo.advantage=gae")
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    trainer, iterator, _, _ = Stage("ppo", **QUIET).build(config, mesh)
    state = trainer.init_state()
    before = probability_of(trainer, state["params"], "a")
    # the first rollout: the policy is the reference and the old policy
    minibatches, rollout = trainer.task.rollout(trainer, state, trainer.put_batch(next(iterator)))
    first = jax.tree.map(lambda x: jnp.asarray(x[0]), next(iter(minibatches)))
    _, step_metrics = trainer.loss(state["params"], first, None, trainer.frozen)
    # stop_at keeps train.steps (and so the schedule) of the run above; both runs end at 5
    train(config, root / "whole", mesh=mesh, progress=False, stop_at=5,
          stage=Stage("ppo", **QUIET))
    train(config, root / "parts", mesh=mesh, progress=False, stop_at=2,
          stage=Stage("ppo", **QUIET))
    train(config, root / "parts", mesh=mesh, progress=False, stop_at=5,
          stage=Stage("ppo", **QUIET))
    from foundations.train.checkpoint import restore_latest
    whole, parts = (restore_latest(root / run, config.checkpoint, trainer.abstract_state)
                    for run in ("whole", "parts"))
    logged = [json.loads(line) for line in (root / "whole" / "metrics.jsonl").read_text()
              .splitlines()]
    return {"config": config, "mesh": mesh, "root": root, "before": before,
            "after": probability_of(trainer, whole["params"], "a"), "rollout": rollout,
            "step_metrics": jax.device_get(step_metrics), "whole": whole, "parts": parts,
            "logged": logged}


@pytest.mark.slow  # the GAE runs (a critic); the group test below is the quick one
def test_ppo_raises_the_rewarded_answer_gae(gae_runs):
    run = gae_runs
    assert 0.2 < run["before"] < 0.8, run["before"]   # the SFT model answers both
    assert run["rollout"]["kl"] == 0.0
    assert float(run["step_metrics"]["ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(run["step_metrics"]["clip_fraction"]) == 0.0
    assert int(jax.device_get(run["whole"]["step"])) == 5   # one step per rollout
    assert [m["step"] for m in run["logged"] if "loss" in m] == [1, 2, 3, 4, 5]
    assert run["after"] > run["before"] + 0.1, (run["before"], run["after"], run["logged"][-1])


def test_ppo_raises_the_rewarded_answer_group(bandit):
    config = ppo_config(bandit, "ppo.advantage=group", "ppo.samples=2")
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    trainer, iterator, _, _ = Stage("ppo", **QUIET).build(config, mesh)
    state = trainer.init_state()
    before = probability_of(trainer, state["params"], "a")
    assert 0.2 < before < 0.8, before   # the SFT model answers both
    # the first rollout: the policy is the reference and the old policy
    minibatches, metrics = trainer.task.rollout(trainer, state, trainer.put_batch(next(iterator)))
    assert metrics["kl"] == 0.0
    first = jax.tree.map(lambda x: jnp.asarray(x[0]), next(iter(minibatches)))
    _, step_metrics = trainer.loss(state["params"], first, None, trainer.frozen)
    assert float(step_metrics["ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(step_metrics["clip_fraction"]) == 0.0
    assert float(step_metrics["kl_loss"]) == 0.0   # GRPO's KL term, 0 at the reference
    for step in range(1, 6):
        state, metrics = trainer.train_step(state, trainer.put_batch(next(iterator), step))
    assert int(jax.device_get(state["step"])) == 5   # one step per rollout
    assert float(metrics["kl_loss"]) > 0.0
    after = probability_of(trainer, state["params"], "a")
    assert after > before + 0.1, (before, after, metrics)


@pytest.mark.slow  # the end-to-end `ppo` and `generate` commands
def test_ppo_command_writes_its_metrics(bandit, tmp_path):
    from foundations.cli import main
    (tmp_path / "tiny.yaml").write_text("train: {steps: 2}\n")
    overrides = TINY + [f"train.init_from={bandit / 'sft'}", "train.steps=2",
                        f"ppo.prompts_file={bandit / 'prompts.jsonl'}", "ppo.max_new_tokens=2"]
    assert main(["ppo", str(tmp_path / "tiny.yaml"), *overrides,
                 f"--run-dir={tmp_path / 'ppo'}", "--no-progress"]) in (0, None)
    logged = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text()
              .splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    # a step's tokens: 16 rows of 11 prompt + 2 response tokens sampled (2), scored by policy
    # and reference (2 x 12 inputs) and trained for 4 epochs (4 x 12)
    assert logged[-1]["tokens"] == 2 * (16 * 2 + 16 * 12 * 2 + 4 * 16 * 12)
    for key in ("reward_mean", "reward_std", "kl", "entropy", "clip_fraction", "value_loss",
                "explained_variance", "response_length", "loss", "val_accuracy"):
        assert key in logged[-1], key
    # the run (its value head beside the model) is read by generate and eval like any run
    from foundations.run import load_run, stored_params
    run = load_run(tmp_path / "ppo")
    stored = stored_params(tmp_path / "ppo", run.step)
    assert set(stored) == {"model", "head"}

    def shapes(tree):
        return {jax.tree_util.keystr(path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    assert shapes(run.params) == shapes(stored["model"])
    assert main(["generate", "--run-dir", str(tmp_path / "ppo"), "--prompt", "pick",
                 "--max-new-tokens", "2", "--temperature", "0"]) in (0, None)


def test_ppo_with_lora_keeps_the_reference_and_raises_the_answer(bandit):
    config = ppo_config(bandit, "lora.rank=4", "lora.targets=attention|mlp", "optimizer.lr=1e-2")
    trainer, iterator, _, _ = Stage("ppo", **QUIET).build(
        config, make_mesh(config.mesh, jax.devices()[:1]))
    reference = jax.tree.map(np.array, jax.device_get(trainer.frozen))   # a copy, not a view
    state = trainer.init_state()
    before = probability_of(trainer, state["params"], "a")
    for step in range(1, 6):
        state, metrics = trainer.train_step(state, trainer.put_batch(next(iterator), step))
    assert probability_of(trainer, state["params"], "a") > before + 0.05, metrics
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.frozen), reference)


@pytest.mark.slow  # needs the GAE runs and three more trainings
def test_ppo_resumed_mid_run_equals_an_uninterrupted_run(gae_runs, bandit):
    whole, parts = gae_runs["whole"], gae_runs["parts"]
    assert int(whole["step"]) == int(parts["step"]) == 5
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(whole["params"]),
                 jax.device_get(parts["params"]))
    # a PPO run (its value head beside the model) starts another stage from its model
    again = ppo_config(bandit, f"train.init_from={gae_runs['root'] / 'whole'}")
    trainer = Stage("ppo", **QUIET).build(again, gae_runs["mesh"])[0]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.frozen["base"]),
                 jax.device_get(whole["params"]["model"]))


@pytest.mark.slow  # trains a reward model, then PPO on it
def test_ppo_from_a_reward_model(bandit, tmp_path):
    """A reward run that prefers "a" to "b" scores the rollouts (bit-identical throughout), and
    its scores equal the reward model read on right-padded rows, as it was trained."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "pick", "chosen": "a", "rejected": "b"})
                             + "\n" for _ in range(100)))
    mesh = make_mesh(load_config(None, TINY).mesh, jax.devices()[:1])
    rm = load_config(None, TINY + [f"reward.train_file={pairs}", "train.steps=20",
                                   f"train.init_from={bandit / 'sft'}"])
    train(rm, tmp_path / "rm", mesh=mesh, progress=False, stage=Stage("reward", **QUIET))
    config = ppo_config(bandit, "ppo.reward=model", f"ppo.reward_model={tmp_path / 'rm'}",
                        "ppo.max_new_tokens=2")
    trainer, iterator, _, _ = Stage("ppo", **QUIET).build(config, mesh)
    state = trainer.init_state()
    before = probability_of(trainer, state["params"], "a")
    for step in range(1, 6):
        state, metrics = trainer.train_step(state, trainer.put_batch(next(iterator), step))
        if step == 1:
            reward = jax.tree.map(np.array, jax.device_get(trainer.task.reward_params))
    assert probability_of(trainer, state["params"], "a") > before + 0.05, metrics
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.task.reward_params),
                 reward)
    # the rollout's scores against the reward stage's own reading of "Q: pick A: a<eos>"
    from foundations.post.stages import RewardTask
    tok = trainer.task.tokenizer
    row = np.array([tok.encode("Q: pick A: a") + [tok.eos_id]], np.int32)
    weights = np.zeros((1, row.shape[1] - 1), np.float32)
    weights[0, -2:] = 1
    padded = np.concatenate([np.zeros((1, 3), np.int32), row], axis=1)   # left-padded
    direct = trainer.task.model_scores(trainer, trainer.task.reward_params, {
        "tokens": padded, "weights": np.concatenate([np.zeros((1, 3)), weights], axis=1),
        "positions": np.concatenate([[[0, 0, 0]], np.arange(row.shape[1] - 1)[None]], 1),
        "segments": (np.arange(padded.shape[1] - 1) >= 3).astype(np.int32)[None]})
    rm_trainer = Stage("reward", **QUIET).build(rm, mesh)[0]
    params = {"model": trainer.task.reward_params["model"],
              "head": trainer.task.reward_params["head"]}
    expected, _ = RewardTask.scores(rm_trainer.task, rm_trainer, params, rm_trainer.frozen, None,
                                    jnp.asarray(row), jnp.asarray(weights))
    np.testing.assert_allclose(direct, expected, rtol=1e-5)

"""The post-training stages on the shared training loop: SFT, reward model, DPO.

Each stage is a `Task` (its batches, its loss, its metrics; STAGES maps the stage's name to it)
trained by `PostTrainer` through `foundations.train.train(..., stage=Stage(kind))`, so
checkpoints, resuming, pre-emption, logging and evaluation are the pre-training loop's own.
  sft:    cross-entropy on the response tokens of packed (prompt, response) examples.
  reward: a scalar head on the last hidden state, Bradley-Terry loss -log sigmoid(r_c - r_r).
  dpo:    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) against the frozen init_from
          policy (or IPO's squared loss, or label smoothing).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from foundations.config import validate_for
from foundations.tokenizers import configured_tokenizer
from foundations.models.attention import segment_mask
from foundations.objectives.losses import weighted_cross_entropy
from foundations.parallel.mesh import make_mesh
from foundations.post.data import (encode_example, encode_pairs, eval_rows, pack_rows,
                                   row_iterator, split_examples)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def sequence_logprobs(logits, tokens, weights):
    """sum_t weights[t] * log p(tokens[t + 1] | ...): the log-probability of each response."""
    logp = -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                            tokens[:, 1:])
    return jnp.sum(logp * weights, axis=1)


def bradley_terry_loss(chosen, rejected):
    """Mean -log sigmoid(r_chosen - r_rejected), and the share of pairs ranked right."""
    return (-jax.nn.log_sigmoid(chosen - rejected)).mean(), (chosen > rejected).mean()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             kind: str = "sigmoid", label_smoothing: float = 0.0):
    """DPO (sigmoid) or IPO loss from sequence log-probs; metrics of the implicit rewards
    beta * (log pi - log ref)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
                  - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    return losses.mean(), {"reward_accuracy": (chosen_reward > rejected_reward).mean(),
                           "reward_margin": (chosen_reward - rejected_reward).mean(),
                           "chosen_reward": chosen_reward.mean(),
                           "rejected_reward": rejected_reward.mean()}


@runtime_checkable
class Task(Protocol):
    """What `PostTrainer` trains: a stage's loss on its batches, and what the step needs.

    `loss(trainer, params, frozen, batch, rng) -> (loss, metrics)` runs inside the jitted step
    and calls `trainer.forward` (which returns the MoE router losses the loss must include);
    `needs_reference`: the step also gets the frozen init_from model (DPO's reference);
    `rows_per_example`: the model rows one batch element trains (a preference pair: 2), for
    the tokens and FLOPs a step reports; `init_head(rng, model_cfg)`: extra trainable
    parameters (a reward head) or None; `rollout`: None, or a callable that samples the
    batch from the policy (on-policy stages)."""
    name: str
    needs_reference: bool
    rows_per_example: int
    rollout: Callable[..., Any] | None

    def loss(self, trainer, params, frozen, batch, rng) -> tuple[jax.Array, dict]: ...

    def init_head(self, rng, model_cfg) -> Any: ...


class BaseTask:
    """Defaults of the Task protocol: one row per example, no reference, head or rollout."""
    name: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = False
    rows_per_example: ClassVar[int] = 1
    rollout: ClassVar[Callable[..., Any] | None] = None

    def init_head(self, rng, model_cfg):
        return None

    def loss(self, trainer, params, frozen, batch, rng):
        raise NotImplementedError(f"{type(self).__name__} has no loss")


def with_aux(trainer, loss, aux, metrics: dict):
    """The task's loss plus the model's auxiliary losses (MoE routers), both reported, as the
    pre-training objective does."""
    return trainer.objective.with_aux(loss, aux, metrics)


class SftTask(BaseTask):
    """(prompt, response) pairs packed into windows; the loss is on the response tokens."""
    name = "sft"
    fields = ("prompt", "response")

    def __init__(self, config, tokenizer):
        self.config, self.tokenizer, self.seq_len = config, tokenizer, config.data.seq_len
        self.train_rows, self.val_rows = (self.rows(e) for e in self.examples(config))

    def examples(self, config):
        s = config.sft
        return split_examples(s.train_file, s.val_file, s.val_fraction, self.fields)

    def rows(self, examples):
        s = self.config.sft
        encoded = [encode_example(self.tokenizer, s.template, e["prompt"], e["response"])
                   for e in examples]
        return pack_rows(encoded, self.seq_len, s.pack)

    def describe(self, rows) -> str:
        return (f"{len(rows['tokens']):,} packed rows, {int(rows['weights'].sum()):,} response "
                "tokens")

    def loss(self, trainer, params, frozen, batch, rng):
        logits, _, aux = trainer.forward(
            params, batch["tokens"][:, :-1], frozen=frozen, rng=rng,
            positions=batch["positions"], mask=segment_mask(batch["segments"]))
        loss, accuracy = weighted_cross_entropy(logits, batch["tokens"][:, 1:], batch["weights"])
        return with_aux(trainer, loss, aux, {"response_accuracy": accuracy})


class PairTask(SftTask):
    """(prompt, chosen, rejected) preference pairs, each response a row of its own."""
    fields = PAIR_FIELDS
    section = "reward"
    rows_per_example = 2   # the chosen and the rejected response

    def examples(self, config):
        s = getattr(config, self.section)
        return split_examples(s.train_file, s.val_file, config.sft.val_fraction, self.fields)

    def rows(self, examples):
        return encode_pairs(examples, self.tokenizer, self.config.sft.template, self.seq_len)

    def describe(self, rows) -> str:
        return f"{len(rows['chosen']):,} preference pairs"

    def both(self, batch):
        """Chosen rows then rejected rows, as one batch of inputs, targets and weights."""
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        weights = jnp.concatenate([batch["chosen_weights"], batch["rejected_weights"]])
        return tokens, weights


class RewardTask(PairTask):
    """A scalar head reads the hidden state that has seen the whole response."""
    name = "reward"

    def init_head(self, rng, model_cfg):
        kernel = jax.random.normal(rng, (model_cfg.d_model,)) * model_cfg.init_std
        return {"kernel": nn.LogicallyPartitioned(kernel, ("embed",)),
                "bias": nn.LogicallyPartitioned(jnp.zeros((1,)), ("norm",))}

    def scores(self, trainer, params, frozen, rng, tokens, weights):
        """(scalar reward of each row, the forward pass's aux losses)."""
        _, hidden, aux = trainer.forward(params, tokens[:, :-1], frozen=frozen, rng=rng)
        last = weights.shape[1] - 1 - jnp.argmax(weights[:, ::-1], axis=1)  # last target
        read = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return (read.astype(jnp.float32) @ params["head"]["kernel"]
                + params["head"]["bias"][0]), aux

    def loss(self, trainer, params, frozen, batch, rng):
        tokens, weights = self.both(batch)
        scores, aux = self.scores(trainer, params, frozen, rng, tokens, weights)
        chosen, rejected = jnp.split(scores, 2)
        loss, accuracy = bradley_terry_loss(chosen, rejected)
        return with_aux(trainer, loss, aux, {"pairwise_accuracy": accuracy,
                                             "margin": (chosen - rejected).mean()})


class DpoTask(PairTask):
    """The policy against the frozen reference (the init_from model) on preference pairs."""
    name = "dpo"
    section = "dpo"
    needs_reference = True

    def loss(self, trainer, params, frozen, batch, rng):
        tokens, weights = self.both(batch)
        logits, _, aux = trainer.forward(params, tokens[:, :-1], frozen=frozen, rng=rng)
        policy = sequence_logprobs(logits, tokens, weights)
        # the reference's router losses are not the policy's to lower: only its log-probs count
        reference = jax.lax.stop_gradient(sequence_logprobs(
            trainer.forward(None, tokens[:, :-1], frozen=frozen)[0], tokens, weights))
        d = self.config.dpo
        (pc, pr), (rc, rr) = jnp.split(policy, 2), jnp.split(reference, 2)
        loss, metrics = dpo_loss(pc, pr, rc, rr, d.beta, d.loss, d.label_smoothing)
        # RPO's term: the chosen responses' mean per-token NLL (DPO alone may lower it too)
        chosen_tokens = jnp.maximum(jnp.split(weights, 2)[0].sum(axis=1), 1.0)
        metrics["chosen_nll"] = nll = jnp.mean(-pc / chosen_tokens)
        if d.nll_coef:
            loss = loss + d.nll_coef * nll
        return with_aux(trainer, loss, aux, metrics)


# each stage's Task; "ppo" (post/ppo.py builds on this module) is added where it is looked up
STAGES: dict[str, type[Task]] = {"sft": SftTask, "reward": RewardTask, "dpo": DpoTask}


class Stage:
    """What `loop.train(stage=...)` asks of a post-training stage: trainer, batches, validation,
    all built from the stage's Task in STAGES."""

    def __init__(self, kind: str, log=print):
        self.kind, self.log = kind, log

    def build(self, config, mesh=None):
        from foundations.post.trainer import PostTrainer
        validate_for(config, self.kind)   # config-only checks first, before any data is read
        tokenizer = configured_tokenizer(config.data.tokenizer)
        from foundations.post.ppo import PpoTask   # on-policy; it builds on this module
        task = {**STAGES, "ppo": PpoTask}[self.kind](config, tokenizer)
        mesh = mesh if mesh is not None else make_mesh(config.mesh)
        trainer = PostTrainer(config, mesh, tokenizer, task, self.log)
        trainable, base = trainer.trainable_count()
        self.log(f"{self.kind} ({trainer.method}): {trainable:,} trainable parameters, "
                 f"{100 * trainable / base:.2f}% of the base model's {base:,}")
        tc = config.train
        iterator = row_iterator(task.train_rows, tc.batch_size, config.data.shuffle_seed,
                                jax.process_index(), jax.process_count())

        def validate(params):
            if hasattr(task, "validate"):   # PPO: greedy answers, not the loss on a batch
                return task.validate(trainer, params)
            return trainer.validate(params, eval_rows(task.val_rows, tc.batch_size,
                                                      tc.eval_batches))
        return trainer, iterator, validate, task.describe(task.train_rows)

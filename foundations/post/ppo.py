"""PPO from a reward (Ouyang et al. 2022; Schulman et al. 2017), and GRPO's group advantages.

The pure pieces below work on per-token arrays (rows, T) of the response tokens with a mask
(1 on response tokens, 0 on the prompt and after end-of-text): the KL penalty to the frozen
reference, GAE, the clipped policy and value losses, entropy and explained variance.
`PpoTask` is the `foundations ppo` stage on the shared loop: one loop step samples a rollout
(PostTrainer.rollout_step), scores it, and trains ppo.epochs x ppo.minibatches steps on it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from foundations.config import ConfigError
from foundations.inference import generate
from foundations.models.attention import segment_mask
from foundations.parallel.mesh import replicated
from foundations.post.data import split_examples
from foundations.post.stages import BaseTask, RewardTask, with_aux
from foundations.train.warm_start import params_from_run


def masked_mean(x, mask):
    """Mean of x over the tokens where mask is 1."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_penalty(logp, ref_logp):
    """Per-token KL estimate log pi(a|s) - log ref(a|s): 0 where the policy is the reference."""
    return logp - ref_logp


def kl_k3(logp, ref_logp):
    """Schulman's unbiased, non-negative per-token KL(pi || ref) estimate for a loss term:
    exp(ref - logp) - (ref - logp) - 1 (GRPO's penalty; 0 where the policy is the reference)."""
    delta = ref_logp - logp
    return jnp.exp(delta) - delta - 1.0


def token_rewards(score, kl, mask, kl_coef):
    """-kl_coef * KL on every response token, plus the sequence's score on its last token."""
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    end = jax.nn.one_hot(last, mask.shape[1]) * (jnp.sum(mask, axis=1, keepdims=True) > 0)
    return (-kl_coef * kl + score[:, None] * end) * mask


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns (advantages + values) over masked tokens:
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; past the last
    response token V and A are 0 (the episode ends)."""
    values, rewards = values * mask, rewards * mask
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values * next_mask - values

    def back(carry, x):
        delta, m_next, m = x
        advantage = (delta + gamma * lam * m_next * carry) * m
        return advantage, advantage
    _, advantages = jax.lax.scan(back, jnp.zeros(mask.shape[0], deltas.dtype),
                                 (deltas.T, next_mask.T, mask.T), reverse=True)
    advantages = advantages.T
    return advantages, (advantages + values) * mask


def group_advantages(scores, group: int, eps: float = 1e-6):
    """GRPO: each sample's score against the other samples of its prompt, (s - mean) / std
    over consecutive groups of `group` rows (no value head)."""
    s = scores.reshape(-1, group)
    centred = s - s.mean(axis=1, keepdims=True)
    return (centred / (s.std(axis=1, keepdims=True) + eps)).reshape(-1)


def whiten(x, mask, eps: float = 1e-8):
    """x normalised to mean 0, variance 1 over the masked tokens."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def policy_loss(logp, old_logp, advantages, mask, clip: float):
    """The clipped surrogate -min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi / pi_old, with the
    share of tokens whose ratio was clipped and the mean ratio."""
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(-jnp.minimum(ratio * advantages, clipped * advantages), mask)
    clip_fraction = masked_mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32), mask)
    return loss, {"clip_fraction": clip_fraction, "ratio": masked_mean(ratio, mask),
                  "approx_kl_old": masked_mean(old_logp - logp, mask)}


def value_loss(values, old_values, returns, mask, clip: float):
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2): the value may move at
    most `clip` from the rollout's before the loss stops rewarding the move."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * masked_mean(jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2),
                             mask)


def entropy(logits, mask):
    """Mean entropy of the next-token distributions at the masked positions."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return masked_mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1), mask)


def explained_variance(values, returns, mask):
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 is a perfect value function."""
    def var(x):
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def adaptive_kl_coef(coef: float, kl: float, target: float, rate: float = 0.1) -> float:
    """Ziegler et al.'s controller: the coefficient grows when KL is above target and shrinks
    below it, by at most 0.2 * rate (2%) per rollout."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + rate * error)


# ------------------------------------------------------------------ the stage

def token_logprobs(logits, tokens):
    """log p(tokens[:, t + 1] | tokens[:, :t + 1]) for each position t: (rows, T - 1)."""
    return -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                            tokens[:, 1:])


def response_mask(new, eos):
    """1 on the sampled tokens up to and including the first end-of-text, 0 after it."""
    if eos is None:
        return np.ones(new.shape, np.float32)
    ended = np.cumsum(new == eos, axis=1) - (new == eos)   # eos tokens before this one
    return (ended == 0).astype(np.float32)


class PpoTask(BaseTask):
    """Prompts from JSONL; each step samples responses from the policy (KV-cached `generate`),
    scores them (exact match with the answer, or a reward model), and trains epochs x
    minibatches of the clipped objective on that rollout. The reference is the frozen
    init_from policy (under LoRA: the base); the value head reads the policy's hidden states."""
    name = "ppo"
    needs_reference = True

    def __init__(self, config, tokenizer):
        self.config, self.tokenizer, p = config, tokenizer, config.ppo  # checked: validate_ppo
        self.eos = getattr(tokenizer, "eos_id", None)
        train, val = split_examples(p.prompts_file, "", config.sft.val_fraction, ("prompt",))
        self.answers = {}
        encoded = {name: [tokenizer.encode(config.sft.template.format(prompt=e["prompt"]))
                          for e in examples] for name, examples in (("train", train),
                                                                    ("val", val))}
        self.width = max(len(t) for ts in encoded.values() for t in ts)
        if self.width + p.max_new_tokens > config.model.max_seq_len:
            raise ConfigError(f"prompts of {self.width} tokens + ppo.max_new_tokens="
                              f"{p.max_new_tokens} exceed model.max_seq_len")
        self.train_rows, self.val_rows = (self.rows(name, encoded[name], examples)
                                          for name, examples in (("train", train), ("val", val)))
        self.rows_per_example = p.samples
        self.kl_coef = p.kl_coef    # adapted per rollout when ppo.target_kl > 0 (not saved)
        self.rollout = self.sample  # on-policy: PostTrainer.train_step samples each batch
        self._score = None          # jitted on the first rollout, for its trainer
        self.reward_params = None   # ppo.reward=model: loaded on the first rollout, frozen

    def rows(self, split, encoded, examples):
        """Left-padded prompt ids, their mask and each prompt's index into self.answers."""
        answers = []
        for e in examples:
            answer = e.get("answer", e.get("response"))
            if not isinstance(answer, str):
                raise ConfigError(f"{self.config.ppo.prompts_file}: a line has no string "
                                  "\"answer\" (or \"response\") for the rule reward")
            answers.append(answer)
        self.answers[split] = answers
        ids = np.zeros((len(encoded), self.width), np.int32)
        mask = np.zeros((len(encoded), self.width), bool)
        for row, tokens in enumerate(encoded):
            ids[row, self.width - len(tokens):], mask[row, self.width - len(tokens):] = tokens, 1
        return {"prompt": ids, "prompt_mask": mask, "index": np.arange(len(encoded))}

    def describe(self, rows) -> str:
        return f"{len(rows['prompt']):,} prompts"

    def init_head(self, rng, model_cfg):
        """The value head (per token, like the reward model's); GRPO has none."""
        if self.config.ppo.advantage == "group":
            return None
        return RewardTask.init_head(self, rng, model_cfg)

    def step_work(self, trainer) -> tuple[int, float]:
        """(tokens, model FLOPs) of one rollout step: sampling the responses and scoring the
        rows (policy, reference and any reward model: forward only, a third of training's
        FLOPs per token), then ppo.epochs passes of training on them."""
        p = self.config.ppo
        rows = self.config.train.batch_size * p.samples
        length = self.width + p.max_new_tokens - 1
        forward = rows * p.max_new_tokens + rows * length * (3 if p.reward == "model" else 2)
        trained = p.epochs * rows * length
        return trained + forward, (trained + forward / 3) * trainer.flops_per_token

    # ---------------------------------------------------------------- rollouts
    def respond(self, trainer, params, prompts, mask, temperature, seed):
        """Sampled (or, temperature 0, greedy) response ids and their texts up to eos."""
        new = generate(trainer.plain_model, trainer.merged(params), prompts, mask,
                       self.config.ppo.max_new_tokens, temperature=temperature,
                       eos_token_id=self.eos, pad_token_id=0, seed=seed,
                       vocab_size=trainer.vocab_size)
        keep = response_mask(new, self.eos)
        texts = [self.tokenizer.decode([t for t, k in zip(row, ks) if k and t != self.eos])
                 for row, ks in zip(new.tolist(), keep)]
        return new, keep, texts

    def rewards(self, texts, answers):
        """The rule reward: 1 for an exact match with the answer, else 0."""
        return np.array([float(t == a) for t, a in zip(texts, answers)], np.float32)

    def load_reward_model(self, trainer):
        """The reward run's {model, head} on this trainer's shardings: a full fine-tune of the
        policy's architecture (a `foundations reward` run without adapters)."""
        head = jax.eval_shape(lambda: nn.unbox(self.reward_head(trainer.model_cfg)))
        wanted = {"model": trainer.abstract_base,
                  "head": jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                      x.shape, x.dtype, sharding=replicated(trainer.mesh)), head)}
        params = params_from_run(self.config.ppo.reward_model, None, trainer, wanted=wanted)
        score = jax.jit(functools.partial(self.model_scores, trainer))
        return params, score

    @staticmethod
    def reward_head(model_cfg):
        return RewardTask.init_head(None, jax.random.PRNGKey(0), model_cfg)

    def model_scores(self, trainer, reward, batch):
        """The reward model's score of each response: its head on the hidden state at the
        last response target (as `RewardTask.scores` reads it), prompts' padding masked."""
        _, hidden, _ = trainer.forward(
            None, batch["tokens"][:, :-1], frozen={"base": reward["model"]},
            positions=batch["positions"], mask=segment_mask(batch["segments"]))
        w = batch["weights"]
        last = w.shape[1] - 1 - jnp.argmax(w[:, ::-1], axis=1)
        read = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return read.astype(jnp.float32) @ reward["head"]["kernel"] + reward["head"]["bias"][0]

    def score(self, trainer, params, frozen, batch):
        """Per-token log-probs of the policy and the reference, and the values (or zeros)."""
        inputs = batch["tokens"][:, :-1]
        kwargs = {"positions": batch["positions"], "mask": segment_mask(batch["segments"])}
        logits, hidden, _ = trainer.forward(params, inputs, frozen=frozen, **kwargs)
        reference = trainer.forward(None, inputs, frozen=frozen, **kwargs)[0]
        return (token_logprobs(logits, batch["tokens"]),
                token_logprobs(reference, batch["tokens"]), self.values(params, hidden))

    def values(self, params, hidden):
        if "head" not in params:
            return jnp.zeros(hidden.shape[:2], jnp.float32)
        return hidden.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"][0]

    def sample(self, trainer, state, batch):
        """One rollout from train.batch_size prompts (x ppo.samples): (minibatches for the
        optimizer steps, the rollout's metrics)."""
        p, tc = self.config.ppo, self.config.train
        batch = {k: np.asarray(jax.device_get(v)).reshape(-1, *v.shape[2:])
                 for k, v in batch.items()}
        prompts, mask = (np.repeat(batch[k], p.samples, 0) for k in ("prompt", "prompt_mask"))
        answers = [self.answers["train"][i] for i in np.repeat(batch["index"], p.samples)]
        step = int(jax.device_get(state["step"]))
        new, keep, texts = self.respond(trainer, state["params"], prompts, mask, p.temperature,
                                        tc.seed * 1_000_003 + step)
        tokens = np.concatenate([prompts, new], axis=1)
        valid = np.concatenate([mask, keep > 0], axis=1)
        weights = np.zeros((len(tokens), tokens.shape[1] - 1), np.float32)
        weights[:, self.width - 1:] = keep
        experience = {"tokens": tokens.astype(np.int32),
                      "positions": np.maximum(np.cumsum(valid, 1) - 1, 0)[:, :-1].astype(np.int32),
                      "segments": valid[:, :-1].astype(np.int32), "weights": weights}
        if p.reward == "model":
            if self.reward_params is None:
                self.reward_params, self._reward_score = self.load_reward_model(trainer)
            scores = np.asarray(trainer.in_mesh(self._reward_score)(self.reward_params,
                                                                    experience))
        else:
            scores = self.rewards(texts, answers)
        if self._score is None:
            self._score = jax.jit(functools.partial(self.score, trainer))
        logp, ref, values = trainer.in_mesh(self._score)(state["params"], trainer.frozen,
                                                         experience)
        w = jnp.asarray(weights)
        kl = kl_penalty(logp, ref) * w
        advantages, returns = self.advantages(jnp.asarray(scores), kl, values, w)
        if p.advantage == "group":   # the KL to the reference is a loss term (see advantages)
            experience.update(ref_logp=ref, kl_coef=np.full(len(tokens), self.kl_coef,
                                                            np.float32))
        experience.update(old_logp=logp, old_values=values, advantages=advantages,
                          returns=returns)
        kl_per_response = float(kl.sum() / len(tokens))
        metrics = {"reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                   "kl": kl_per_response, "kl_coef": self.kl_coef,
                   "response_length": float(keep.sum(axis=1).mean())}
        if p.advantage == "gae":
            metrics["explained_variance"] = float(explained_variance(values, returns, w))
        if p.target_kl:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, kl_per_response, p.target_kl)
        return self.minibatches(experience, step), metrics

    def advantages(self, scores, kl, values, w):
        """(advantages, returns) per token. GAE: the KL-shaped token rewards, whitened. Group:
        the scores alone against their group's; folding the KL in before dividing by the
        group's std would blow KL noise up to unit advantages in a group whose samples all
        score alike, so GRPO's KL is a loss term instead."""
        p = self.config.ppo
        if p.advantage == "group":
            return group_advantages(scores, p.samples)[:, None] * w, values
        rewards = token_rewards(scores, kl, w, self.kl_coef)
        advantages, returns = gae(rewards, values, w, p.gamma, p.lam)
        return whiten(advantages, w), returns

    def minibatches(self, experience, step):
        """ppo.epochs shuffled passes of ppo.minibatches batches, each (grad_accum, rows, ...)."""
        p, accum = self.config.ppo, self.config.train.grad_accum
        experience = {k: np.asarray(v) for k, v in experience.items()}
        rows = len(experience["tokens"])
        for epoch in range(p.epochs):
            order = np.random.default_rng([self.config.train.seed, step, epoch]).permutation(rows)
            for part in np.array_split(order, p.minibatches):
                yield {k: v[part].reshape(accum, len(part) // accum, *v.shape[1:])
                       for k, v in experience.items()}

    # ---------------------------------------------------------------- the loss
    def loss(self, trainer, params, frozen, batch, rng):
        p, w = self.config.ppo, batch["weights"]
        logits, hidden, aux = trainer.forward(
            params, batch["tokens"][:, :-1], frozen=frozen, rng=rng,
            positions=batch["positions"], mask=segment_mask(batch["segments"]))
        logp = token_logprobs(logits, batch["tokens"])
        loss, metrics = policy_loss(logp, batch["old_logp"], batch["advantages"], w, p.clip)
        ent = entropy(logits, w)
        metrics.update(policy_loss=loss, entropy=ent)
        loss = loss - p.entropy_coef * ent
        if "ref_logp" in batch:   # GRPO: the KL to the reference as its own term
            kl = masked_mean(kl_k3(logp, batch["ref_logp"]), w)
            metrics["kl_loss"] = kl
            loss = loss + batch["kl_coef"][0] * kl
        if "head" in params:
            v = value_loss(self.values(params, hidden), batch["old_values"], batch["returns"],
                           w, p.value_clip)
            metrics["value_loss"] = v
            loss = loss + p.value_coef * v
        return with_aux(trainer, loss, aux, metrics)

    # ---------------------------------------------------------------- validation
    def validate(self, trainer, params) -> dict:
        """Greedy exact-match accuracy on the held-out prompts."""
        rows, answers = self.val_rows, self.answers["val"]
        limit = self.config.train.batch_size * max(self.config.train.eval_batches, 1)
        _, _, texts = self.respond(trainer, params, rows["prompt"][:limit],
                                   rows["prompt_mask"][:limit], 0.0, 0)
        return {"val_accuracy": float(self.rewards(texts, answers[:limit]).mean())}

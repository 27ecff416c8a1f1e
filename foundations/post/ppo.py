"""PPO from a reward (Ouyang et al. 2022; Schulman et al. 2017), and GRPO's group advantages.

The pure pieces below work on per-token arrays (rows, T) of the response tokens with a mask
(1 on response tokens, 0 on the prompt and after end-of-text): the KL penalty to the frozen
reference, GAE, the clipped policy and value losses, entropy and explained variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x, mask):
    """Mean of x over the tokens where mask is 1."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_penalty(logp, ref_logp):
    """Per-token KL estimate log pi(a|s) - log ref(a|s): 0 where the policy is the reference."""
    return logp - ref_logp


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

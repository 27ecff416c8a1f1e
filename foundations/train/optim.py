"""The Optax pipeline: global-norm clipping, then AdamW with a weight-decay mask, on a schedule.

Weight decay pulls weights toward zero; on norm scales, biases and embedding tables that is
usually harmful, so they are left out unless configured (`optimizer.decay_*`).
"""

from __future__ import annotations

import jax
import optax

from foundations.config import OptimizerConfig, ScheduleConfig

NO_DECAY_NAMES = ("bias", "scale")          # norm scales/biases and layer biases
EMBEDDING_NAMES = ("token_embed", "pos_embed")


def learning_rate_schedule(opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int):
    """Linear warmup to opt.lr, then cosine / linear / constant / warmup-stable-decay."""
    peak, floor = opt.lr, opt.lr * sched.min_lr_ratio
    warmup = min(sched.warmup_steps, total_steps)
    rest = max(total_steps - warmup, 1)
    warm = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
    if sched.kind == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=sched.min_lr_ratio)
    elif sched.kind == "linear":
        after = optax.linear_schedule(peak, floor, rest)
    elif sched.kind == "constant":
        after = optax.constant_schedule(peak)
    else:  # wsd: hold the peak, then decay linearly over the last decay_fraction of the steps
        decay = max(int(round(total_steps * sched.decay_fraction)), 1)
        stable = max(rest - decay, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [stable])
    return optax.join_schedules([warm, after], [warmup])


def decay_mask(opt: OptimizerConfig):
    """A function params -> tree of bools: True where weight decay applies."""
    def decays(path, _leaf) -> bool:
        names = [getattr(k, "key", str(k)) for k in path]
        if not opt.decay_norms_and_biases and names[-1] in NO_DECAY_NAMES:
            return False
        if not opt.decay_embeddings and any(n in EMBEDDING_NAMES for n in names):
            return False
        return True
    return lambda params: jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int):
    """Returns (optax transformation, schedule)."""
    schedule = learning_rate_schedule(opt, sched, total_steps)
    adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask(opt))
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw), schedule
    return adamw, schedule

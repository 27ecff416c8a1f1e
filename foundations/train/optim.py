"""The Optax pipeline: global-norm clipping, then AdamW with a weight-decay mask, on a schedule.

Weight decay pulls weights toward zero; on norm scales, biases and embedding tables that is
usually harmful, so only matrices decay unless configured (`optimizer.decay_*`). What a parameter
is comes from the logical axis names it carries (models/layers.py), not from module names.
"""

from __future__ import annotations

import jax
import optax
from jax.sharding import PartitionSpec

from foundations.config import OptimizerConfig, ScheduleConfig

# Axes that do not make a parameter a matrix: one copy per layer (the scanned stack) or per
# expert, and head_dim, which only splits a `heads`/`kv_heads` axis (a (heads, head_dim) bias
# is one vector).
NOT_FEATURE_AXES = ("layers", "expert", "head_dim")
# A table's rows are looked up by token id, position or segment: its first feature axis is one of
# these (an untied output head, (embed, vocab), is a matrix like any other projection).
TABLE_AXES = ("vocab", "position", "segment")


def learning_rate_schedule(opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int):
    """Linear warmup to opt.lr, then cosine / linear / constant / warmup-stable-decay."""
    peak, floor = opt.lr, opt.lr * sched.min_lr_ratio
    warmup = min(sched.warmup_for(total_steps), total_steps)
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


def parameter_kind(axes: tuple) -> str:
    """'vector' (one feature axis: norm scales, biases), 'table' (token, position and segment
    embeddings, position-bias tables) or 'matrix' (the rest), from a parameter's logical axes."""
    features = [a for a in axes if a not in NOT_FEATURE_AXES]
    if len(features) < 2:
        return "vector"
    return "table" if features[0] in TABLE_AXES else "matrix"


def decay_mask(opt: OptimizerConfig, logical_specs):
    """The tree of logical PartitionSpecs (one per parameter, `nn.get_partition_spec` of the
    boxed params) -> a tree of bools: True where weight decay applies."""
    decays = {"matrix": True, "table": opt.decay_embeddings,
              "vector": opt.decay_norms_and_biases}

    def decay(path, spec: PartitionSpec) -> bool:
        if not spec:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(f"parameter {name} has no logical axis names")
        return decays[parameter_kind(tuple(spec))]

    return jax.tree_util.tree_map_with_path(
        decay, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def make_optimizer(opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int,
                   logical_specs):
    """Returns (optax transformation, schedule); `logical_specs` (the params' logical
    PartitionSpecs) decide which parameters decay."""
    schedule = learning_rate_schedule(opt, sched, total_steps)
    adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask(opt, logical_specs))
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw), schedule
    return adamw, schedule

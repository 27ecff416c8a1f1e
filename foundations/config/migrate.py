"""Old-key migrations: configs and run directories of the flat layout still load.

The flat keys (`model.rope_theta`, `train.objective`, 0 for "derive it") move to the nested
sections, and an old `train.eval_batches` keeps its meaning for pretraining validation."""

from __future__ import annotations

import typing
from typing import Any

from foundations.config.sections import ConfigError


# Keys of the flat layout that run directories written before the nested sections still have.
OLD_KEYS = {
    "model.positions": "model.positions.kind", "model.rope_theta": "model.positions.theta",
    "model.rope_scaling": "model.positions.scaling",
    "model.rope_scaling_factor": "model.positions.factor",
    "model.relative_buckets": "model.positions.buckets",
    "model.relative_max_distance": "model.positions.max_distance",
    "model.num_experts": "model.moe.num_experts",
    "model.experts_per_token": "model.moe.experts_per_token",
    "model.capacity_factor": "model.moe.capacity_factor",
    "model.router_aux_loss_coef": "model.moe.aux_loss_coef",
    "model.router_z_loss_coef": "model.moe.z_loss_coef",
    "train.objective": "objective.kind", "train.mask_prob": "objective.mask_prob",
    "train.whole_word_mask": "objective.whole_word_mask",
    "train.noise_density": "objective.noise_density",
    "train.mean_span_length": "objective.mean_span_length",
    "train.electra_generator_scale": "objective.generator_scale",
    "train.electra_disc_weight": "objective.disc_weight",
}
# ... where 0 meant "derive it" (now None)
OLD_DERIVED_ZERO = ("model.vocab_size", "model.num_kv_heads", "model.head_dim", "model.d_ff",
                    "model.num_decoder_layers")


def new_path(path: list[str], value: Any) -> list[str]:
    """The nested name of a key of the old flat layout (others are returned as they are)."""
    dotted = ".".join(path)
    if dotted in OLD_KEYS and not isinstance(value, dict):
        return OLD_KEYS[dotted].split(".")
    return path


def migrate(tree: dict) -> dict:
    """Moves the old flat keys (`model.rope_theta`, `train.objective`, 0 placeholders) to the
    nested layout, so that older configs and run directories still load."""
    moved = []
    for section, values in tree.items():
        if not isinstance(values, dict):
            continue
        for key in list(values):
            dotted = f"{section}.{key}"
            if dotted in OLD_DERIVED_ZERO and values[key] == 0:
                values[key] = None
            if new_path([section, key], values[key]) != [section, key]:
                moved.append((new_path([section, key], values[key]), values.pop(key)))
    for path, value in moved:
        set_path(tree, path, value)
    return tree


def set_path(tree: dict, path: typing.Sequence[str], value: Any) -> None:
    """tree[a][b][c] = value for path (a, b, c), making the mappings on the way."""
    path = new_path(list(path), value)
    node = tree
    for i, key in enumerate(path[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path[:i + 1])} is a value, not a section")
    node[path[-1]] = value


def migrate_eval_windows(tree: dict) -> dict:
    """train.eval_batches once also sized pretraining's validation (eval_batches x batch_size
    windows): a tree that sets it but not train.eval_windows keeps that meaning. Applied once the
    overrides are in (not by read_tree), so that an override of either key still counts."""
    train = tree.get("train")
    if isinstance(train, dict) and "eval_batches" in train and "eval_windows" not in train:
        batches, batch_size = train["eval_batches"], train.get("batch_size", 16)
        if isinstance(batches, int) and isinstance(batch_size, int):
            train["eval_windows"] = batches * batch_size
    return tree

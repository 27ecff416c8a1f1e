"""Parameter-efficient tuning with the base frozen: LoRA, prompt tuning and prefix tuning.

LoRA (Hu et al. 2021): each targeted kernel W (in, out), seen as a matrix over its input and
output axes, becomes W + (alpha / rank) * A @ B with A (in, rank) random and B (rank, out) zero,
so training starts from the base model exactly. The sum is formed inside the step, so the model
code is untouched and `merge` is that same sum, done once. Dropout drops adapter input features,
one mask per step (shared by the batch's tokens, which is what lets the update fold into W).

Prompt tuning (Lester et al. 2021): `num_tokens` trainable vectors are appended to the embedding
table as extra rows, and every input starts with their ids, so the model reads them before the
text; their logits are cut off again.

Prefix tuning (Li & Liang 2021): free keys and values in every layer's attention, which every
query sees before the sequence; the model reads them from its 'prefix' variable collection.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

STACKED_AXES = ("layers", "expert")   # one kernel per layer / expert: adapters get one each


def path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def kernel_split(axes: tuple) -> tuple[int, int]:
    """(stacked axes, input axes) of a kernel from its logical axis names: the input is `embed`
    when the kernel reads the residual stream (query, key, value, MLP up/gate), else every
    feature axis but the last (attention out, MLP down)."""
    stacked = 0
    while stacked < len(axes) and axes[stacked] in STACKED_AXES:
        stacked += 1
    features = axes[stacked:]
    inputs = 1 if features[0] == "embed" else len(features) - 1
    return stacked, inputs


def lora_targets(logical_specs, pattern: str) -> dict[str, tuple[int, int]]:
    """{kernel path: (stacked axes, input axes)} of the kernels whose path matches `pattern`."""
    found = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(
            logical_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]:
        name = path_name(path)
        if name.endswith("/kernel") and re.search(pattern, name):
            found[name] = kernel_split(tuple(spec))
    return found


def _flat_shapes(shape, split):
    stacked, inputs = split
    lead = shape[:stacked]
    fan_in = math.prod(shape[stacked:stacked + inputs])
    fan_out = math.prod(shape[stacked + inputs:])
    return lead, fan_in, fan_out


def init_lora(rng, base_shapes: dict, targets: dict, rank: int) -> dict:
    """{kernel path: {"a", "b"}} boxed with logical names (stacked axes kept): A ~ N(0, 1/in),
    B = 0."""
    adapters = {}
    for i, (name, split) in enumerate(sorted(targets.items())):
        shape = base_shapes[name]
        lead, fan_in, fan_out = _flat_shapes(shape, split)
        names = ("layers",) * len(lead) + (None, None)
        a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, fan_in, rank)) / fan_in ** 0.5
        adapters[name] = {"a": nn.LogicallyPartitioned(a, names),
                          "b": nn.LogicallyPartitioned(jnp.zeros((*lead, rank, fan_out)), names)}
    return adapters


def lora_delta(adapter: dict, shape: tuple, split: tuple, scale: float, keep=None):
    """scale * A @ B in the kernel's shape; `keep` (stacked..., in): a dropout mask on A's rows."""
    a = adapter["a"] if keep is None else adapter["a"] * keep[..., None]
    return (scale * jnp.einsum("...ir,...ro->...io", a, adapter["b"])).reshape(shape)


def apply_lora(base: dict, adapters: dict, targets: dict, scale: float, dropout: float = 0.0,
               rng=None) -> dict:
    """The base parameters with every adapter's update added (the model LoRA trains); also the
    merge: call it once without dropout and keep the result."""
    flat = {path_name(p): (p, w) for p, w in jax.tree_util.tree_flatten_with_path(base)[0]}
    updated = {}
    for i, (name, adapter) in enumerate(sorted(adapters.items())):
        _, kernel = flat[name]
        keep = None
        if dropout and rng is not None:
            rows = adapter["a"].shape[:-1]
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - dropout, rows)
            keep = keep.astype(adapter["a"].dtype) / (1 - dropout)
        delta = lora_delta(adapter, kernel.shape, targets[name], scale, keep)
        updated[name] = kernel + delta.astype(kernel.dtype)
    return jax.tree_util.tree_map_with_path(
        lambda p, w: updated.get(path_name(p), w), base)


def init_soft_prompt(rng, num_tokens: int, d_model: int, std: float):
    return nn.LogicallyPartitioned(jax.random.normal(rng, (num_tokens, d_model)) * std,
                                   (None, "embed"))


def with_soft_prompt(base: dict, prompt: jax.Array) -> dict:
    """The base parameters with the soft prompt as extra rows of the token embedding table (and
    zero columns of an untied output head: those logits are cut off anyway)."""
    table = base["token_embed"]["embedding"]
    out = {**base, "token_embed": {"embedding": jnp.concatenate(
        [table, prompt.astype(table.dtype)], axis=0)}}
    if "lm_head" in base:
        kernel = base["lm_head"]["kernel"]
        pad = jnp.zeros((kernel.shape[0], prompt.shape[0]), kernel.dtype)
        out["lm_head"] = {"kernel": jnp.concatenate([kernel, pad], axis=1)}
    return out


def init_prefix(rng, num_tokens: int, cfg) -> dict:
    """Prefix tuning (Li & Liang 2021): free keys and values (layers, P, kv_heads, head_dim)
    that every layer's attention reads before the sequence (the 'prefix' collection)."""
    shape = (cfg.num_layers, num_tokens, cfg.num_kv_heads, cfg.head_dim)
    names = ("layers", None, "kv_heads", "head_dim")
    std = cfg.init_std * cfg.d_model ** 0.5   # about the size of the tokens' own keys
    return {"blocks": {"attention": {
        name: nn.LogicallyPartitioned(jax.random.normal(jax.random.fold_in(rng, i), shape) * std,
                                      names)
        for i, name in enumerate(("prefix_key", "prefix_value"))}}}


def count(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def export_peft(config, adapters_tree: dict, targets: dict, out_dir) -> None:
    """Writes LoRA adapters as PEFT's adapter_config.json + adapter_model.safetensors (LLaMA
    layout, model.norm=rmsnorm): lora_A = A^T (rank, in), lora_B = B^T (out, rank) per layer,
    which convert/lora.py (and PEFT) read back as W + (alpha / r) * B @ A."""
    import json
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    from foundations.config import ConfigError
    from foundations.convert.lora import PEFT_PREFIX
    from foundations.convert.weights import rules_for
    if config.model.norm != "rmsnorm" or config.model.moe.num_experts:
        raise ConfigError("LoRA export to PEFT's format supports LLaMA-style dense decoders "
                          "(model.norm=rmsnorm, no experts)")
    rules = {r.ours: r for r in rules_for(config)}
    tensors, modules = {}, set()
    for name, adapter in adapters_tree.items():
        if name not in rules or not rules[name].linear or targets[name][0] != 1:
            raise ConfigError(f"LoRA export: {name} has no per-layer Linear weight in the "
                              "Hugging Face layout")
        a, b = np.asarray(adapter["a"], np.float32), np.asarray(adapter["b"], np.float32)
        for layer in range(a.shape[0]):
            module = rules[name].hf.format(i=layer).removesuffix(".weight")
            modules.add(module.rsplit(".", 1)[-1])
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a[layer].T)
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b[layer].T)
    lora = config.lora
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": lora.rank, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout, "target_modules": sorted(modules), "bias": "none",
        "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}, indent=2))

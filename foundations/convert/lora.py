"""PEFT LoRA adapters, both ways: W' = W + (lora_alpha / r) * B @ A on every targeted weight.

Import (`add_lora`): read from adapter_config.json + adapter_model.safetensors and added to the
base model's HF tensors before they are mapped onto our parameters, so one table of names
(convert/weights.py) serves base models and adapters alike. Settings that change this formula in
ways not handled here (DoRA, trained biases, extra saved modules) are refused naming the key.
Export (`export_peft`, for `foundations merge --peft`): a LoRA run's adapters in that format,
through the same table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from foundations.config import ConfigError
from foundations.convert.weights import rules_for

PEFT_PREFIX = "base_model.model."


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file
    directory = Path(directory)
    config_file = directory / "adapter_config.json"
    weights = directory / "adapter_model.safetensors"
    for path in (config_file, weights):
        if not path.is_file():
            raise ConfigError(f"adapter {directory}: {path.name} does not exist")
    return json.loads(config_file.read_text()), load_file(weights)


def check_adapter(cfg: dict, source: str) -> None:
    def refuse(key):
        raise ConfigError(f"adapter {source}: {key}={cfg.get(key)!r} is not supported")
    if cfg.get("peft_type", "LORA") != "LORA":
        refuse("peft_type")
    if cfg.get("use_dora"):
        refuse("use_dora")
    if cfg.get("bias", "none") != "none":
        refuse("bias")
    if cfg.get("modules_to_save"):
        refuse("modules_to_save")


def lora_deltas(directory: str | Path) -> dict[str, np.ndarray]:
    """{base weight name: scale * B @ A in that weight's layout} of a PEFT LoRA adapter."""
    cfg, tensors = read_adapter(directory)
    check_adapter(cfg, str(directory))
    deltas = {}
    for name, a in tensors.items():
        if ".lora_A." not in name:
            if ".lora_B." not in name:
                raise ConfigError(f"adapter {directory}: unexpected tensor {name}")
            continue
        b_name = name.replace(".lora_A.", ".lora_B.")
        if b_name not in tensors:
            raise ConfigError(f"adapter {directory}: tensor {b_name} is missing")
        module = name.split(".lora_A.")[0].removeprefix(PEFT_PREFIX)
        short = module.rsplit(".", 1)[-1]
        rank = cfg.get("rank_pattern", {}).get(short, cfg["r"])
        alpha = cfg.get("alpha_pattern", {}).get(short, cfg["lora_alpha"])
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        b = tensors[b_name]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ConfigError(f"adapter {directory}: tensor {name} has rank {a.shape[0]}, "
                              f"expected r={rank}")
        delta = scale * (b.astype(np.float64) @ a.astype(np.float64))  # (out, in)
        deltas[f"{module}.weight"] = delta.T if cfg.get("fan_in_fan_out") else delta
    return deltas


def add_lora(tensors: dict[str, np.ndarray], directory: str | Path) -> dict[str, np.ndarray]:
    """The base model's HF tensors with the adapter's deltas added (merged)."""
    out = dict(tensors)
    for name, delta in lora_deltas(directory).items():
        if name not in out:
            raise ConfigError(f"adapter {directory}: targets tensor {name}, which the base "
                              "model does not have")
        if out[name].shape != delta.shape:
            raise ConfigError(f"adapter {directory}: delta of {name} has shape {delta.shape}, "
                              f"the weight {out[name].shape}")
        out[name] = (out[name].astype(np.float64) + delta).astype(out[name].dtype)
    return out


def export_peft(config, adapters_tree: dict, targets: dict, out_dir) -> None:
    """Writes LoRA adapters as PEFT's adapter_config.json + adapter_model.safetensors (LLaMA
    layout, model.norm=rmsnorm): lora_A = A^T (rank, in), lora_B = B^T (out, rank) per layer,
    which `lora_deltas` (and PEFT) read back as W + (alpha / r) * B @ A."""
    from safetensors.numpy import save_file
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

"""Hugging Face model directories <-> the project's models: `HFModel`, `from_hf`, `to_hf`,
`merge_lora` (a PEFT LoRA adapter folded into the weights).

The HF config maps onto `model.*` settings (convert/hf_config.py) and the tensors onto our
parameter tree (convert/weights.py), so the model is the one `foundations train` builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from foundations.config import Config, ConfigError
from foundations.convert.hf_config import config_from_hf, hf_config, model_differences
from foundations.convert.weights import params_from_tensors, tensors_from_params


class HFModel:
    """The project's module for a converted config, called with transformers-style arguments:
    apply(params, input_ids[, attention_mask, token_type_ids, decoder_input_ids, method]).
    `hf` keeps the original config.json so that `to_hf` writes its other keys back."""

    def __init__(self, config: Config, hf: dict | None = None):
        import jax
        from foundations.models.families import build_model
        self.config, self.hf = config, hf
        self.module = build_model(config)
        self._apply = jax.jit(self._call, static_argnames="method")

    def _call(self, params, input_ids, attention_mask, token_type_ids, decoder_input_ids,
              method):
        family = self.config.model.family
        if method is not None and (method != "encode" or family != "encoder"):
            raise ValueError(f"method={method!r}: only BERT has one, method='encode'")
        padding = None if attention_mask is None else attention_mask.astype(bool)
        if family == "encoder":
            out = self.module.apply(params, input_ids, token_type_ids, padding)
            return out["hidden"] if method == "encode" else out["logits"]
        if family == "encdec":
            if decoder_input_ids is None:
                raise ValueError("T5 needs decoder_input_ids")
            return self.module.apply(params, input_ids, decoder_input_ids, padding)
        if padding is not None:
            raise ValueError("attention_mask is for BERT and T5; a decoder's padded prompts "
                             "go through foundations.inference")
        return self.module.apply(params, input_ids)

    def apply(self, params, input_ids, attention_mask=None, token_type_ids=None,
              decoder_input_ids=None, method=None):
        """Logits (or BERT's last hidden state with method='encode'); inputs may be numpy."""
        def as_ids(x):
            return None if x is None else np.asarray(x, np.int32)
        return self._apply(params, as_ids(input_ids), as_ids(attention_mask),
                           as_ids(token_type_ids), as_ids(decoder_input_ids), method=method)

    def param_shapes(self) -> dict[str, tuple]:
        """{'blocks/attention/query/kernel': shape, ...}: our parameters, from an abstract init."""
        import flax.linen as nn
        import jax
        ids = np.zeros((1, 8), np.int32)
        args = (ids, ids) if self.config.model.family == "encdec" else (ids,)
        tree = jax.eval_shape(lambda: nn.unbox(self.module.init(jax.random.PRNGKey(0), *args)))
        return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    from safetensors.numpy import load_file
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if not index.is_file():
        raise ConfigError(f"{directory}: neither model.safetensors nor "
                          "model.safetensors.index.json")
    weight_map = json.loads(index.read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            raise ConfigError(f"{index}: shard {shard} does not exist")
        tensors.update(load_file(directory / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ConfigError(f"{index}: tensor {missing[0]} is not in shard {weight_map[missing[0]]}")
    return tensors


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"{directory} is not a Hugging Face model directory (no config.json)")
    return json.loads(path.read_text())


def from_hf(directory: str | Path, adapter: str | Path | None = None,
            tokenizer: str = "byte") -> tuple[HFModel, dict]:
    """(model, params) of a transformers directory; `adapter`: a PEFT LoRA directory, merged
    into the weights. `tokenizer` only names data.tokenizer in the config."""
    directory = Path(directory)
    hf = read_hf_config(directory)
    model = HFModel(config_from_hf(hf, tokenizer), hf)
    tensors = read_safetensors(directory)
    if adapter is not None:
        from foundations.convert.lora import add_lora
        tensors = add_lora(tensors, adapter)
    params = params_from_tensors(tensors, model.config, model.param_shapes(), str(directory))
    return model, {"params": cast(params, model.config)}


def cast(params: dict, config: Config) -> dict:
    """Numpy arrays of the config's parameter dtype."""
    import jax
    import jax.numpy as jnp
    dtype = jnp.dtype(config.model.param_dtype)
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)


def checked_hf_config(model: HFModel) -> dict:
    """config.json of the model; refuses (naming the key) settings transformers cannot express."""
    hf = hf_config(model.config, model.hf)
    for key, ours, theirs in model_differences(model.config, config_from_hf(hf))[:1]:
        raise ConfigError(f"to_hf: {key}={ours!r} has no transformers equivalent "
                          f"(a {hf['model_type']} model has {theirs!r})")
    return hf


STORED_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def to_hf(model: HFModel, params: dict, out_dir: str | Path) -> Path:
    """Writes config.json + model.safetensors (HF names and layouts) that transformers loads."""
    import flax.linen as nn
    import jax
    from safetensors.numpy import save_file
    hf = checked_hf_config(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tree = jax.device_get(nn.unbox(params["params"] if "params" in params else params))
    tensors = tensors_from_params(tree, model.config)
    stored = STORED_DTYPES.get(hf.get("dtype") or hf.get("torch_dtype"))
    if stored is not None:  # the checkpoint's own dtype (bfloat16 -> float32 -> back is exact)
        tensors = {k: v.astype(stored) for k, v in tensors.items()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out


def merge_lora(model: HFModel, params: dict, adapter: str | Path) -> dict:
    """`params` with a PEFT LoRA adapter folded in: W + (alpha / r) * B @ A for every target."""
    from foundations.convert.lora import add_lora
    tensors = tensors_from_params(params["params"], model.config)
    merged = add_lora(tensors, adapter)
    tree = params_from_tensors(merged, model.config, model.param_shapes(), str(adapter))
    return {"params": cast(tree, model.config)}

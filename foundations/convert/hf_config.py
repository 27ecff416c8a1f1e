"""Hugging Face `config.json` <-> the project's resolved `Config`.

Each supported `model_type` (gpt2, llama, mistral, mixtral, bert, t5) maps its knobs onto
`model.*` settings; a knob that would change the math in a way this code base does not implement
is refused with one line naming it. `hf_config` writes the mapped knobs back into the original
`config.json` mapping (so the keys that do not touch the math, such as token ids, survive).
"""

from __future__ import annotations

from typing import Any

from foundations.config import Config, ConfigError, config_from_tree, flat_settings

FAMILY = {"gpt2": "decoder", "llama": "decoder", "mistral": "decoder", "mixtral": "decoder",
          "bert": "encoder", "t5": "encdec"}
OBJECTIVE = {"decoder": "clm", "encoder": "mlm", "encdec": "span"}
ARCHITECTURE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
                "bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
               "relu": "relu"}
T5_MLPS = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}


def refuse(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"config.json: {key}={value!r} is not supported ({why})")


def need(hf: dict, key: str, allowed, default=None) -> Any:
    """hf[key] (or its default), refused unless it is one of `allowed`."""
    value = hf.get(key, default)
    if value not in allowed:
        refuse(key, value, f"supported: {', '.join(repr(a) for a in allowed)}")
    return value


def rope_settings(hf: dict) -> dict:
    """positions.* for RoPE: theta, and linear scaling (position interpolation) only."""
    params = hf.get("rope_parameters") or {}   # transformers >= 5 keeps theta here
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    positions = {"kind": "rope", "theta": float(theta)}
    if kind == "linear":
        positions.update(scaling="linear", factor=float(scaling["factor"]))
    elif kind != "default":
        refuse("rope_scaling.rope_type", kind, "supported: 'default', 'linear'")
    return positions


def llama_model(hf: dict) -> dict:
    need(hf, "hidden_act", ("silu",), "silu")
    need(hf, "attention_bias", (False,), False)
    need(hf, "mlp_bias", (False,), False)
    need(hf, "pretraining_tp", (1,), 1)
    heads = hf["num_attention_heads"]
    model = {"d_model": hf["hidden_size"], "num_layers": hf["num_hidden_layers"],
             "num_heads": heads, "num_kv_heads": hf.get("num_key_value_heads") or heads,
             "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
             "d_ff": hf["intermediate_size"], "max_seq_len": hf["max_position_embeddings"],
             "norm": "rmsnorm", "norm_eps": hf["rms_norm_eps"], "mlp": "swiglu",
             "use_bias": False, "tie_embeddings": hf.get("tie_word_embeddings", False),
             "positions": rope_settings(hf)}
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window and window < model["max_seq_len"]:
        model["local_window_size"] = window
    if hf["model_type"] == "mixtral":
        if hf.get("router_jitter_noise", 0.0):
            refuse("router_jitter_noise", hf["router_jitter_noise"], "supported: 0.0")
        model["moe"] = {"num_experts": hf["num_local_experts"],
                        "experts_per_token": hf["num_experts_per_tok"],
                        "aux_loss_coef": hf.get("router_aux_loss_coef", 0.01)}
    return model


def gpt2_model(hf: dict) -> dict:
    need(hf, "scale_attn_weights", (True,), True)
    need(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
    act = need(hf, "activation_function", tuple(ACTIVATIONS), "gelu_new")
    d = hf["n_embd"]
    return {"d_model": d, "num_layers": hf["n_layer"], "num_heads": hf["n_head"],
            "d_ff": hf.get("n_inner") or 4 * d, "max_seq_len": hf["n_positions"],
            "norm": "layernorm", "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "mlp": ACTIVATIONS[act], "use_bias": True,
            "tie_embeddings": hf.get("tie_word_embeddings", True),
            "positions": {"kind": "learned"}}


def bert_model(hf: dict) -> dict:
    need(hf, "position_embedding_type", ("absolute",), "absolute")
    need(hf, "is_decoder", (False,), False)
    act = need(hf, "hidden_act", tuple(ACTIVATIONS), "gelu")
    need(hf, "tie_word_embeddings", (True,), True)
    return {"d_model": hf["hidden_size"], "num_layers": hf["num_hidden_layers"],
            "num_heads": hf["num_attention_heads"], "d_ff": hf["intermediate_size"],
            "max_seq_len": hf["max_position_embeddings"], "norm": "layernorm",
            "norm_eps": hf.get("layer_norm_eps", 1e-12), "norm_position": "post",
            "mlp": ACTIVATIONS[act], "use_bias": True, "tie_embeddings": True,
            "type_vocab_size": hf.get("type_vocab_size", 2), "positions": {"kind": "learned"}}


def t5_model(hf: dict) -> dict:
    proj = need(hf, "feed_forward_proj", tuple(T5_MLPS), "relu")
    if proj == "gated-gelu":   # transformers turns "gated-gelu" into gelu_new
        need(hf, "dense_act_fn", ("gelu_new",), "gelu_new")
    if hf.get("tie_word_embeddings", True):  # transformers 5: tied, but maybe unscaled
        need(hf, "scale_decoder_outputs", (True,), True)
    return {"d_model": hf["d_model"], "num_layers": hf["num_layers"],
            "num_decoder_layers": hf.get("num_decoder_layers") or hf["num_layers"],
            "num_heads": hf["num_heads"], "head_dim": hf["d_kv"], "d_ff": hf["d_ff"],
            "max_seq_len": hf.get("n_positions", 512), "norm": "rmsnorm",
            "norm_eps": hf.get("layer_norm_epsilon", 1e-6), "mlp": T5_MLPS[proj],
            "use_bias": False, "scale_attention": False,
            "tie_embeddings": hf.get("tie_word_embeddings", True),
            "positions": {"kind": "t5_bias",
                          "buckets": hf.get("relative_attention_num_buckets", 32),
                          "max_distance": hf.get("relative_attention_max_distance", 128)}}


MODELS = {"gpt2": gpt2_model, "llama": llama_model, "mistral": llama_model,
          "mixtral": llama_model, "bert": bert_model, "t5": t5_model}


def config_from_hf(hf: dict, tokenizer: str = "byte") -> Config:
    """The resolved project Config of a Hugging Face config.json mapping."""
    model_type = hf.get("model_type")
    if model_type not in MODELS:
        refuse("model_type", model_type, f"supported: {', '.join(MODELS)}")
    model = {"family": FAMILY[model_type], "vocab_size": hf["vocab_size"], "dropout": 0.0,
             **MODELS[model_type](hf)}
    family = model["family"]
    tree = {"model": model, "objective": {"kind": OBJECTIVE[family]},
            "data": {"tokenizer": tokenizer, "seq_len": min(model["max_seq_len"], 512)},
            "train": {"sample_tokens": 0}}
    return config_from_tree(tree)


# Settings that do not change what a model computes at inference.
NOT_MATH = ("model.dropout", "model.init_std", "model.vocab_multiple", "model.dtype",
            "model.param_dtype", "model.attention_impl", "model.fuse_qkv", "model.remat",
            "model.moe.z_loss_coef", "model.moe.aux_loss_coef")


def model_differences(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """(key, a's value, b's value) for each model.* setting that changes the math."""
    ours, theirs = flat_settings(a), flat_settings(b)
    return [(key, value, theirs.get(key)) for key, value in ours.items()
            if key.startswith("model.") and key not in NOT_MATH and theirs.get(key) != value]


def same_model(a: Config, b: Config) -> bool:
    return not model_differences(a, b)


def hf_config(config: Config, original: dict | None = None) -> dict:
    """config.json for `config`: the original mapping (if any) with every mapped knob written
    from the config, so that transformers builds the same model."""
    m, p = config.model, config.model.positions
    model_type = (original or {}).get("model_type") or {
        "decoder": "mixtral" if m.moe.num_experts else "llama" if m.norm == "rmsnorm" else "gpt2",
        "encoder": "bert", "encdec": "t5"}[m.family]
    hf = dict(original or {})
    hf.setdefault("architectures", [ARCHITECTURE[model_type]])
    hf.update(model_type=model_type, vocab_size=m.vocab_size)
    if original and same_model(config_from_hf(original), config):
        return dict(original)   # nothing to write: keep the file as it was
    act = next((name for name, kind in ACTIVATIONS.items() if kind == m.mlp), None)
    if model_type == "gpt2":
        hf.update(n_embd=m.d_model, n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.d_ff,
                  n_positions=m.max_seq_len, layer_norm_epsilon=m.norm_eps,
                  activation_function=act, tie_word_embeddings=m.tie_embeddings)
    elif model_type in ("llama", "mistral", "mixtral"):
        hf.update(hidden_size=m.d_model, num_hidden_layers=m.num_layers,
                  num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                  head_dim=m.head_dim, intermediate_size=m.d_ff,
                  max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps,
                  hidden_act="silu", tie_word_embeddings=m.tie_embeddings, attention_bias=False)
        rope = ({"rope_type": "linear", "factor": p.factor} if p.scaling == "linear"
                else {"rope_type": "default"})
        if "rope_parameters" in hf:   # the layout of transformers >= 5
            hf["rope_parameters"] = {**rope, "rope_theta": p.theta}
        else:
            hf.update(rope_theta=p.theta, rope_scaling=rope if p.scaling == "linear" else None)
        if m.local_window_size:
            hf["sliding_window"] = m.local_window_size
        if m.moe.num_experts:
            hf.update(num_local_experts=m.moe.num_experts,
                      num_experts_per_tok=m.moe.experts_per_token,
                      router_aux_loss_coef=m.moe.aux_loss_coef)
    elif model_type == "bert":
        hf.update(hidden_size=m.d_model, num_hidden_layers=m.num_layers,
                  num_attention_heads=m.num_heads, intermediate_size=m.d_ff,
                  max_position_embeddings=m.max_seq_len, layer_norm_eps=m.norm_eps,
                  hidden_act=act, type_vocab_size=m.type_vocab_size)
    else:
        proj = {v: k for k, v in T5_MLPS.items()}[m.mlp]
        hf.update(d_model=m.d_model, num_layers=m.num_layers,
                  num_decoder_layers=m.num_decoder_layers, num_heads=m.num_heads,
                  d_kv=m.head_dim, d_ff=m.d_ff, layer_norm_epsilon=m.norm_eps,
                  feed_forward_proj=proj, tie_word_embeddings=m.tie_embeddings,
                  relative_attention_num_buckets=p.buckets,
                  relative_attention_max_distance=p.max_distance)
    return hf

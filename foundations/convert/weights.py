"""Hugging Face tensor names and layouts <-> the project's parameter tree, one table per family.

A `Rule` says which HF tensor (per layer `{i}`, per expert `{e}`) feeds which of our parameters,
its HF shape, and whether it is a torch `Linear` weight, stored (out, in) and so transposed to
our (in, out) layout; every other difference is a reshape (our attention kernels keep heads as
their own axis: (d_model, heads, head_dim)). Layers are stacked on our leading `layers` axis
(the blocks run under nn.scan) and experts on the next. Because each mapping is a transpose and
a reshape, import then export gives back the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from foundations.config import Config, ConfigError


@dataclass(frozen=True)
class Rule:
    ours: str                 # path in our params, e.g. "blocks/attention/query/kernel"
    hf: str                   # e.g. "model.layers.{i}.self_attn.q_proj.weight"
    shape: tuple[int, ...]    # the HF tensor's shape
    linear: bool = False      # a torch Linear weight (out, in): transposed
    optional: bool = False    # a head some files lack (BERT's pooler, MLM head): zeros then


def optional(rules: list[Rule]) -> list[Rule]:
    return [Rule(r.ours, r.hf, r.shape, r.linear, optional=True) for r in rules]


def attention_rules(ours: str, hf: str, d: int, heads: int, kv: int, hd: int,
                    names=("q_proj", "k_proj", "v_proj", "o_proj"), bias: bool = False):
    """Query, key, value and output projections stored as torch Linear weights (+ biases)."""
    rules = []
    for part, name, rows in zip(("query", "key", "value"), names, (heads, kv, kv)):
        rules.append(Rule(f"{ours}/{part}/kernel", f"{hf}.{name}.weight", (rows * hd, d), True))
        if bias:
            rules.append(Rule(f"{ours}/{part}/bias", f"{hf}.{name}.bias", (rows * hd,)))
    rules.append(Rule(f"{ours}/out/kernel", f"{hf}.{names[3]}.weight", (d, heads * hd), True))
    if bias:
        rules.append(Rule(f"{ours}/out/bias", f"{hf}.{names[3]}.bias", (d,)))
    return rules


def norm_rules(ours: str, hf: str, d: int, kind: str, bias: bool):
    """A LayerNorm (scale, bias) or RMSNorm (scale) named `ours` in our tree."""
    layer = "LayerNorm_0" if kind == "layernorm" else "RMSNorm_0"
    rules = [Rule(f"{ours}/{layer}/scale", f"{hf}.weight", (d,))]
    if bias and kind == "layernorm":
        rules.append(Rule(f"{ours}/{layer}/bias", f"{hf}.bias", (d,)))
    return rules


def gpt2_rules(m) -> list[Rule]:
    d, f, hd, h = m.d_model, m.d_ff, m.head_dim, m.num_heads
    rules = [Rule("token_embed/embedding", "transformer.wte.weight", (m.vocab_size, d)),
             Rule("pos_embed/table/embedding", "transformer.wpe.weight", (m.max_seq_len, d))]
    block = "transformer.h.{i}"
    rules += norm_rules("blocks/attention_norm", f"{block}.ln_1", d, "layernorm", True)
    for part in ("query", "key", "value"):  # c_attn, split in split_fused (Conv1D: (in, out))
        rules += [Rule(f"blocks/attention/{part}/kernel", f"{block}.attn.{part}.weight",
                       (d, h * hd)),
                  Rule(f"blocks/attention/{part}/bias", f"{block}.attn.{part}.bias", (h * hd,))]
    rules += [Rule("blocks/attention/out/kernel", f"{block}.attn.c_proj.weight", (h * hd, d)),
              Rule("blocks/attention/out/bias", f"{block}.attn.c_proj.bias", (d,))]
    rules += norm_rules("blocks/mlp_norm", f"{block}.ln_2", d, "layernorm", True)
    rules += [Rule("blocks/mlp/up/kernel", f"{block}.mlp.c_fc.weight", (d, f)),
              Rule("blocks/mlp/up/bias", f"{block}.mlp.c_fc.bias", (f,)),
              Rule("blocks/mlp/down/kernel", f"{block}.mlp.c_proj.weight", (f, d)),
              Rule("blocks/mlp/down/bias", f"{block}.mlp.c_proj.bias", (d,))]
    rules += norm_rules("final_norm", "transformer.ln_f", d, "layernorm", True)
    return rules


def llama_rules(m) -> list[Rule]:
    d, f = m.d_model, m.d_ff
    rules = [Rule("token_embed/embedding", "model.embed_tokens.weight", (m.vocab_size, d))]
    block = "model.layers.{i}"
    rules += norm_rules("blocks/attention_norm", f"{block}.input_layernorm", d, "rmsnorm", False)
    rules += attention_rules("blocks/attention", f"{block}.self_attn", d, m.num_heads,
                             m.num_kv_heads, m.head_dim)
    rules += norm_rules("blocks/mlp_norm", f"{block}.post_attention_layernorm", d, "rmsnorm",
                        False)
    if m.moe.num_experts:
        moe, e = f"{block}.block_sparse_moe", m.moe.num_experts
        rules += [Rule("blocks/mlp/router", f"{moe}.gate.weight", (e, d), True),
                  Rule("blocks/mlp/gate", f"{moe}.experts.{{e}}.w1.weight", (f, d), True),
                  Rule("blocks/mlp/up", f"{moe}.experts.{{e}}.w3.weight", (f, d), True),
                  Rule("blocks/mlp/down", f"{moe}.experts.{{e}}.w2.weight", (d, f), True)]
    else:
        rules += [Rule("blocks/mlp/gate/kernel", f"{block}.mlp.gate_proj.weight", (f, d), True),
                  Rule("blocks/mlp/up/kernel", f"{block}.mlp.up_proj.weight", (f, d), True),
                  Rule("blocks/mlp/down/kernel", f"{block}.mlp.down_proj.weight", (d, f), True)]
    rules += norm_rules("final_norm", "model.norm", d, "rmsnorm", False)
    return rules


def bert_rules(m) -> list[Rule]:
    d, f = m.d_model, m.d_ff
    emb = "bert.embeddings"
    rules = [Rule("token_embed/embedding", f"{emb}.word_embeddings.weight", (m.vocab_size, d)),
             Rule("pos_embed/table/embedding", f"{emb}.position_embeddings.weight",
                  (m.max_seq_len, d)),
             Rule("segment_embed/embedding", f"{emb}.token_type_embeddings.weight",
                  (m.type_vocab_size, d))]
    rules += norm_rules("embed_norm", f"{emb}.LayerNorm", d, "layernorm", True)
    block = "bert.encoder.layer.{i}"
    rules += attention_rules("blocks/attention", f"{block}.attention", d, m.num_heads,
                             m.num_kv_heads, m.head_dim, bias=True,
                             names=("self.query", "self.key", "self.value", "output.dense"))
    rules += norm_rules("blocks/attention_norm", f"{block}.attention.output.LayerNorm", d,
                        "layernorm", True)
    rules += [Rule("blocks/mlp/up/kernel", f"{block}.intermediate.dense.weight", (f, d), True),
              Rule("blocks/mlp/up/bias", f"{block}.intermediate.dense.bias", (f,)),
              Rule("blocks/mlp/down/kernel", f"{block}.output.dense.weight", (d, f), True),
              Rule("blocks/mlp/down/bias", f"{block}.output.dense.bias", (d,))]
    rules += norm_rules("blocks/mlp_norm", f"{block}.output.LayerNorm", d, "layernorm", True)
    # BertForMaskedLM files have no pooler, BertModel files no MLM head
    head = "cls.predictions"
    rules += optional([Rule("pooler/kernel", "bert.pooler.dense.weight", (d, d), True),
                       Rule("pooler/bias", "bert.pooler.dense.bias", (d,)),
                       Rule("mlm_transform/kernel", f"{head}.transform.dense.weight", (d, d),
                            True),
                       Rule("mlm_transform/bias", f"{head}.transform.dense.bias", (d,)),
                       Rule("mlm_bias", f"{head}.bias", (m.vocab_size,))]
                      + norm_rules("mlm_norm", f"{head}.transform.LayerNorm", d, "layernorm",
                                   True))
    return rules


def t5_rules(m) -> list[Rule]:
    d, f, h, hd = m.d_model, m.d_ff, m.num_heads, m.head_dim
    rules = [Rule("token_embed/embedding", "shared.weight", (m.vocab_size, d))]
    for stack in ("encoder", "decoder"):
        block = f"{stack}.block.{{i}}.layer"
        rules += [Rule(f"{stack}_rel_bias/table",
                       f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                       (m.positions.buckets, h))]
        rules += norm_rules(f"{stack}/attention_norm", f"{block}.0.layer_norm", d, "rmsnorm",
                            False)
        rules += attention_rules(f"{stack}/attention", f"{block}.0.SelfAttention", d, h, h, hd,
                                 names=("q", "k", "v", "o"))
        mlp = 1
        if stack == "decoder":
            rules += norm_rules(f"{stack}/cross_attention_norm", f"{block}.1.layer_norm", d,
                                "rmsnorm", False)
            rules += attention_rules(f"{stack}/cross_attention", f"{block}.1.EncDecAttention",
                                     d, h, h, hd, names=("q", "k", "v", "o"))
            mlp = 2
        rules += norm_rules(f"{stack}/mlp_norm", f"{block}.{mlp}.layer_norm", d, "rmsnorm",
                            False)
        ff = f"{block}.{mlp}.DenseReluDense"
        if m.mlp in ("swiglu", "geglu"):
            rules += [Rule(f"{stack}/mlp/gate/kernel", f"{ff}.wi_0.weight", (f, d), True),
                      Rule(f"{stack}/mlp/up/kernel", f"{ff}.wi_1.weight", (f, d), True)]
        else:
            rules += [Rule(f"{stack}/mlp/up/kernel", f"{ff}.wi.weight", (f, d), True)]
        rules += [Rule(f"{stack}/mlp/down/kernel", f"{ff}.wo.weight", (d, f), True)]
        rules += norm_rules(f"{stack}_norm", f"{stack}.final_layer_norm", d, "rmsnorm", False)
    return rules


def rules_for(config: Config) -> list[Rule]:
    m = config.model
    if m.family == "encoder":
        rules = bert_rules(m)
    elif m.family == "encdec":
        rules = t5_rules(m)
    elif m.norm == "layernorm":
        rules = gpt2_rules(m)
    else:
        rules = llama_rules(m)
    if not m.tie_embeddings:
        rules.append(Rule("lm_head/kernel", "lm_head.weight", (m.vocab_size, m.d_model), True))
    return rules


# Copies of the token embedding some files keep although config.json ties them to it.
TIED_COPIES = ("lm_head.weight", "cls.predictions.decoder.weight", "encoder.embed_tokens.weight",
               "decoder.embed_tokens.weight")


def ignorable(name: str) -> bool:
    """Buffers a checkpoint may hold beyond the rules (masks, position ids, rotary tables) and
    the decoder bias BERT ties to cls.predictions.bias."""
    return name.endswith((".attn.bias", ".attn.masked_bias", "embeddings.position_ids",
                          "rotary_emb.inv_freq")) or name == "cls.predictions.decoder.bias"


def check_tied_copies(tensors: dict, unused: set[str], embedding: str, source: str) -> set[str]:
    """The tied copies among the `unused` tensors, each refused unless it equals the embedding."""
    copies = {name for name in TIED_COPIES if name in unused}
    for name in sorted(copies):
        if not np.array_equal(tensors[name], tensors[embedding]):
            raise ConfigError(f"{source}: tensor {name} differs from {embedding}, but "
                              "config.json ties them (tie_word_embeddings)")
    return copies


PREFIXES = {"gpt2": "transformer.", "bert": "bert."}


def canonical_names(tensors: dict, config: Config) -> dict:
    """Adds the head model's prefix to a base model's names (GPT2Model, BertModel files), and
    splits GPT-2's fused c_attn into query/key/value."""
    m = config.model
    prefix = PREFIXES.get("bert" if m.family == "encoder" else
                          "gpt2" if m.family == "decoder" and m.norm == "layernorm" else "")
    if prefix and not any(k.startswith(prefix) for k in tensors):
        tensors = {(k if k.startswith("cls.") else prefix + k): v for k, v in tensors.items()}
    out = {}
    for name, value in tensors.items():
        if prefix == "transformer." and name.endswith(("attn.c_attn.weight", "attn.c_attn.bias")):
            stem, kind = name.rsplit(".c_attn.", 1)
            for part, piece in zip(("query", "key", "value"), np.split(value, 3, axis=-1)):
                out[f"{stem}.{part}.{kind}"] = piece
        else:
            out[name] = value
    return out


def fuse_gpt2(tensors: dict) -> dict:
    """The inverse of the c_attn split: query/key/value back into one Conv1D tensor."""
    out = {}
    for name, value in tensors.items():
        stem, _, kind = name.rpartition(".")
        if stem.endswith(".attn.query"):
            base = stem[:-len(".query")]
            out[f"{base}.c_attn.{kind}"] = np.concatenate(
                [tensors[f"{base}.{p}.{kind}"] for p in ("query", "key", "value")], axis=-1)
        elif not stem.endswith((".attn.key", ".attn.value")):
            out[name] = value
    return out


def expand(rule: Rule, layers: int, experts: int) -> list[list[str]]:
    """The HF names behind one rule: [[name]] or per layer [[layer i's names per expert]]."""
    names = ([rule.hf.format(i=i, e="{e}") for i in range(layers)] if "{i}" in rule.hf
             else [rule.hf])
    return [[n.format(e=e) for e in range(experts)] if "{e}" in n else [n] for n in names]


def is_float(dtype: np.dtype) -> bool:
    """float16/32/64 or bfloat16 (ml_dtypes' bfloat16 is not a numpy float kind)."""
    return dtype.kind == "f" or dtype == ml_dtypes.bfloat16


def to_ours(value: np.ndarray, rule: Rule, shape: tuple[int, ...]) -> np.ndarray:
    return (value.T if rule.linear else value).reshape(shape)


def to_hf_layout(value: np.ndarray, rule: Rule) -> np.ndarray:
    return value.reshape(rule.shape[::-1]).T if rule.linear else value.reshape(rule.shape)


def get_path(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def set_path(tree: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def layer_counts(rule: Rule, config: Config) -> tuple[int, int]:
    m = config.model
    layers = (m.num_decoder_layers if rule.ours.startswith("decoder/") else m.num_layers) \
        if "{i}" in rule.hf else 1
    return layers, (m.moe.num_experts if "{e}" in rule.hf else 1)


def params_from_tensors(tensors: dict, config: Config, shapes: dict, source: str) -> dict:
    """Our parameter tree from HF tensors (numpy, canonical names); `shapes` are our parameter
    shapes by path. Missing, extra, misshapen or non-float tensors: one line naming the tensor."""
    tensors = canonical_names(tensors, config)
    used, params = set(), {}
    dtype = None
    for rule in rules_for(config):
        layers, experts = layer_counts(rule, config)
        stacked = []
        for names in expand(rule, layers, experts):
            row = []
            for name in names:
                if name not in tensors:
                    if rule.optional:
                        row.append(np.zeros(rule.shape, np.float32))
                        continue
                    raise ConfigError(f"{source}: tensor {name} is missing (expected shape "
                                      f"{rule.shape})")
                value = tensors[name]
                if tuple(value.shape) != rule.shape:
                    raise ConfigError(f"{source}: tensor {name} has shape {tuple(value.shape)}, "
                                      f"expected {rule.shape}")
                if not is_float(value.dtype) or (dtype is not None and value.dtype != dtype):
                    raise ConfigError(f"{source}: tensor {name} has dtype {value.dtype}, "
                                      f"expected {dtype or 'a float dtype'}")
                dtype = value.dtype
                used.add(name)
                row.append(value)
            stacked.append(np.stack(row) if "{e}" in rule.hf else row[0])
        value = np.stack(stacked) if "{i}" in rule.hf else stacked[0]
        target = shapes[rule.ours]
        inner = target[("{i}" in rule.hf) + ("{e}" in rule.hf):]
        value = np.asarray([to_ours(v, rule, inner) for v in value.reshape(-1, *rule.shape)])
        set_path(params, rule.ours, value.reshape(target))
    embedding = rules_for(config)[0].hf   # every table starts with the token embedding
    used |= check_tied_copies(tensors, set(tensors) - used, embedding, source)
    extra = sorted(n for n in set(tensors) - used if not ignorable(n))
    if extra:
        raise ConfigError(f"{source}: unexpected tensor {extra[0]} {tuple(tensors[extra[0]].shape)}"
                          f" (not part of this {config.model.family} model)")
    return params


def tensors_from_params(params: dict, config: Config) -> dict:
    """HF tensors (numpy, HF names and layouts) of our parameter tree."""
    tensors = {}
    for rule in rules_for(config):
        layers, experts = layer_counts(rule, config)
        value = np.asarray(get_path(params, rule.ours))
        if rule.optional and not value.any():
            continue  # a head the imported file did not have
        inner = value.shape[("{i}" in rule.hf) + ("{e}" in rule.hf):]
        flat = value.reshape(-1, *inner)
        for k, name in enumerate(n for names in expand(rule, layers, experts) for n in names):
            tensors[name] = np.ascontiguousarray(to_hf_layout(flat[k], rule))
    if config.model.family == "decoder" and config.model.norm == "layernorm":
        tensors = fuse_gpt2(tensors)
    return tensors

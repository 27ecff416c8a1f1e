"""Typed configuration: dataclasses per section, loaded from YAML plus `section.key=value` overrides.

Every key is checked: an unknown key or a value of the wrong type raises `ConfigError` with a
one-line message naming the key (and the closest known keys), never a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem a user can fix; the CLI prints it as one line."""


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back (train/checkpoint.py raises it; it lives
    here so that the CLI can catch it without importing JAX)."""


@dataclass
class ModelConfig:
    """One Transformer code base; GPT-2, LLaMA, Mixtral, BERT and T5 are settings of these
    fields (`family` picks decoder-only, encoder-only or encoder-decoder)."""
    vocab_size: int = 0            # 0: the tokenizer's size, rounded up to vocab_multiple
    vocab_multiple: int = 64       # pad the embedding table so it divides meshes and tiles well
    num_layers: int = 4
    d_model: int = 128
    num_heads: int = 4
    num_kv_heads: int = 0          # 0: same as num_heads (multi-head); fewer: grouped-query
    head_dim: int = 0              # 0: d_model // num_heads
    d_ff: int = 0                  # 0: 4*d_model for gelu, 8/3*d_model (rounded to 64) for swiglu
    max_seq_len: int = 256
    norm: str = "layernorm"        # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"              # gelu | swiglu
    positions: str = "learned"     # learned | rope
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    use_bias: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    attention_impl: str = "auto"   # auto | xla | cudnn  (jax.nn.dot_product_attention)
    dtype: str = "float32"         # compute dtype: float32 | bfloat16 (params stay param_dtype)
    param_dtype: str = "float32"
    remat: str = "none"            # none | full | dots: recompute block activations in backward
    # ---- model families (see foundations/models/families.py)
    family: str = "decoder"        # decoder (GPT/LLaMA/Mixtral) | encoder (BERT) | encdec (T5)
    norm_position: str = "pre"     # pre: x + f(norm(x)) | post: norm(x + f(x)) (BERT)
    num_decoder_layers: int = 0    # encdec: decoder depth; 0: num_layers
    type_vocab_size: int = 2       # encoder: segment (token type) embeddings; 0: none
    local_window_size: int = 0     # >0: each query sees only the last N keys (itself included)
    rope_scaling: str = "none"     # none | linear (position interpolation) | ntk (NTK-aware theta)
    rope_scaling_factor: float = 1.0   # context extension factor for rope_scaling
    relative_buckets: int = 32     # t5_bias: number of relative-position buckets
    relative_max_distance: int = 128   # t5_bias: distances beyond this share the last bucket
    # ---- mixture of experts (num_experts > 0 replaces each block's MLP)
    num_experts: int = 0
    experts_per_token: int = 2     # top-k routing
    capacity_factor: float = 0.0   # 0: dropless; >0: each expert takes cf * k * T / E tokens
    router_aux_loss_coef: float = 0.01   # Switch/Mixtral load-balancing loss weight
    router_z_loss_coef: float = 0.0      # ST-MoE router z-loss weight


@dataclass
class DataConfig:
    """Text files -> tokens -> packed fixed-length sequences."""
    train_files: list[str] = field(default_factory=lambda: ["tinyshakespeare/input.txt"])
    val_files: list[str] = field(default_factory=list)  # empty: hold out val_fraction of train
    val_fraction: float = 0.1
    tokenizer: str = "byte"        # "byte" or a directory made by `foundations tokenize train`
    seq_len: int = 256
    shuffle_seed: int = 0
    fallback_encoding: str = ""    # e.g. latin-1: used for files that are not UTF-8 ("": refuse)


@dataclass
class MeshConfig:
    """Device mesh axis sizes; their product must equal the number of devices (-1: fill)."""
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    stage: int = 1                 # pipeline stages: the layer stack split S ways
    microbatches: int = 1          # pipeline microbatches per step (bubble (S-1)/(M+S-1))
    expert: int = 1                # shards MoE experts (and, like data, the batch)


@dataclass
class OptimizerConfig:
    """AdamW with global-norm clipping; decay skips norms, biases and embeddings by default."""
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    decay_norms_and_biases: bool = False
    clip_norm: float = 1.0         # 0: no clipping


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine | linear | constant | wsd (warmup-stable-decay)."""
    kind: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1      # final lr as a fraction of the peak
    decay_fraction: float = 0.2    # wsd: the share of steps spent in the final decay


@dataclass
class CheckpointConfig:
    every: int = 500               # save every N steps (and always at the end); 0: only at the end
    keep: int = 3                  # keep the last K checkpoints
    async_save: bool = True


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16           # global batch, in sequences
    grad_accum: int = 1            # microbatches per step; batch_size must divide by it
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200          # 0: only at the end
    eval_batches: int = 16         # validation batches per evaluation; 0: the whole split
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    peak_flops: float = 0.0        # per device, for MFU; 0: looked up from the device kind
    # ---- objectives (see foundations/objectives/)
    objective: str = "clm"         # clm | mlm | span | prefix_lm | electra
    mask_prob: float = 0.15        # mlm/electra: share of tokens selected for prediction
    whole_word_mask: bool = False  # mlm/electra: select whole words, not single tokens
    noise_density: float = 0.15    # span: share of tokens corrupted
    mean_span_length: float = 3.0  # span: mean length of a corrupted span
    electra_generator_scale: float = 0.25  # electra: generator width / discriminator width
    electra_disc_weight: float = 50.0      # electra: lambda on the discriminator loss


@dataclass
class DistributedConfig:
    """Multi-process runs (parallel/distributed.py); empty values come from the environment."""
    coordinator_address: str = ""  # host:port of process 0; "": $JAX_COORDINATOR_ADDRESS
    num_processes: int = 0         # 0: $JAX_NUM_PROCESSES, else 1 (or auto-detected)
    process_id: int = -1           # -1: $JAX_PROCESS_ID
    auto: bool = True              # detect Cloud TPU VM slices and multi-task SLURM jobs
    init_timeout_s: int = 300      # wait this long for all processes to join
    heartbeat_timeout_s: int = 100  # a silent process is declared dead; the others then exit


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


CHOICES = {
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp": ("gelu", "swiglu"),
    "model.positions": ("learned", "rope", "sinusoidal", "alibi", "t5_bias", "none"),
    "model.family": ("decoder", "encoder", "encdec"),
    "model.norm_position": ("pre", "post"),
    "model.rope_scaling": ("none", "linear", "ntk"),
    "train.objective": ("clm", "mlm", "span", "prefix_lm", "electra"),
    "model.attention_impl": ("auto", "xla", "cudnn"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "schedule.kind": ("cosine", "linear", "constant", "wsd"),
}


def _close_matches(name: str, options) -> str:
    matches = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _coerce(key: str, value: Any, annotation) -> Any:
    """Checks `value` against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single path where a list is expected
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    type_name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {type_name}, got {value!r} ({type(value).__name__})")


def set_field(section_obj, section_name: str, key: str, value: Any) -> None:
    hints = typing.get_type_hints(type(section_obj))
    if key not in hints:
        raise ConfigError(f"unknown key '{section_name}.{key}'"
                          + _close_matches(key, hints) + f"; keys of '{section_name}': "
                          + ", ".join(hints))
    full = f"{section_name}.{key}"
    value = _coerce(full, value, hints[key])
    if full in CHOICES and value not in CHOICES[full]:
        raise ConfigError(f"{full}: {value!r} is not one of {', '.join(CHOICES[full])}")
    setattr(section_obj, key, value)


def _section(config: Config, name: str):
    sections = [f.name for f in dataclasses.fields(Config)]
    if name not in sections:
        raise ConfigError(f"unknown section '{name}'" + _close_matches(name, sections)
                          + f"; sections: {', '.join(sections)}")
    return getattr(config, name)


def apply_dict(config: Config, tree: dict, source: str = "config") -> Config:
    """Applies a nested {section: {key: value}} mapping (as read from YAML) onto `config`."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    for section_name, values in tree.items():
        section = _section(config, section_name)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section_name}' must be a mapping of keys")
        for key, value in values.items():
            set_field(section, section_name, key, value)
    return config


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.steps=80' -> ('train', 'steps', 80); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.steps=80")
    section, key = dotted.split(".")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then `section.key=value` overrides; then validation."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        apply_dict(config, tree, source=str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        set_field(_section(config, section), section, key, value)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that need several fields at once; mesh divisibility is checked when the mesh exists."""
    m, t = config.model, config.train
    heads = m.num_heads
    kv = m.num_kv_heads or heads
    if heads <= 0 or m.d_model <= 0 or m.num_layers <= 0:
        raise ConfigError("model.num_heads, model.d_model and model.num_layers must be positive")
    if not m.head_dim and m.d_model % heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.num_heads={heads}"
                          " (or set model.head_dim)")
    if heads % kv:
        raise ConfigError(f"model.num_heads={heads} is not divisible by model.num_kv_heads={kv}")
    if config.data.seq_len > m.max_seq_len:
        raise ConfigError(f"data.seq_len={config.data.seq_len} exceeds "
                          f"model.max_seq_len={m.max_seq_len}")
    if t.batch_size <= 0 or t.steps < 0 or t.grad_accum <= 0:
        raise ConfigError("train.batch_size and train.grad_accum must be positive, "
                          "train.steps non-negative")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by "
                          f"train.grad_accum={t.grad_accum}")
    _validate_pipeline(config)
    if not 0.0 <= config.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={config.data.val_fraction} must be in [0, 1)")
    if not config.data.val_files and config.data.val_fraction == 0.0:
        raise ConfigError("no validation data: set data.val_files or data.val_fraction > 0")
    validate_family(config)


# which objectives each family trains with
FAMILY_OBJECTIVES = {"decoder": ("clm", "prefix_lm"), "encoder": ("mlm", "electra"),
                     "encdec": ("span",)}


def validate_family(config: Config) -> None:
    """Family, objective, positions and mixture-of-experts settings that must agree."""
    m, t = config.model, config.train
    if t.objective not in FAMILY_OBJECTIVES[m.family]:
        raise ConfigError(f"train.objective={t.objective!r} does not fit model.family="
                          f"{m.family!r}; use one of {', '.join(FAMILY_OBJECTIVES[m.family])}")
    if m.num_experts < 0 or m.num_experts and not 1 <= m.experts_per_token <= m.num_experts:
        raise ConfigError(f"model.experts_per_token={m.experts_per_token} must be in "
                          f"[1, model.num_experts={m.num_experts}]")
    if m.num_experts and m.family != "decoder":
        raise ConfigError("model.num_experts > 0 is supported for model.family=decoder only")
    if m.capacity_factor < 0 or m.local_window_size < 0 or m.rope_scaling_factor < 1.0:
        raise ConfigError("model.capacity_factor and model.local_window_size must be >= 0, "
                          "model.rope_scaling_factor >= 1")
    if not 0.0 < t.mask_prob < 1.0 or not 0.0 < t.noise_density < 1.0 or t.mean_span_length < 1:
        raise ConfigError("train.mask_prob and train.noise_density must be in (0, 1), "
                          "train.mean_span_length >= 1")


def _validate_pipeline(config: Config) -> None:
    """Pipeline settings that the config alone can refuse (the mesh checks the batch later)."""
    mesh, layers = config.mesh, config.model.num_layers
    if mesh.stage < 1 or mesh.microbatches < 1:
        raise ConfigError("mesh.stage and mesh.microbatches must be positive")
    if layers % mesh.stage:
        raise ConfigError(f"model.num_layers={layers} is not divisible by mesh.stage={mesh.stage}")
    micro = config.train.batch_size // config.train.grad_accum
    if micro % mesh.microbatches:
        raise ConfigError(f"train.batch_size={config.train.batch_size} / train.grad_accum="
                          f"{config.train.grad_accum} = {micro} sequences do not split into "
                          f"mesh.microbatches={mesh.microbatches}")
    if mesh.stage > 1 and config.model.dropout > 0:
        raise ConfigError("model.dropout > 0 is not supported with mesh.stage > 1")


# Settings a resumed run may change: they do not alter what the checkpoint's arrays mean.
RESUMABLE_MODEL_KEYS = ("attention_impl", "dtype", "remat", "dropout")


def changed_settings(saved: Config, config: Config) -> list[tuple[str, Any, Any]]:
    """(section.key, saved value, new value) for every setting in which `config` differs from
    `saved` (a run's config.yaml, loaded with load_config)."""
    old, new = to_dict(saved), to_dict(config)
    return [(f"{section}.{key}", old[section][key], value)
            for section, values in new.items() for key, value in values.items()
            if old[section][key] != value]


def incompatible_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The changes that make a run's checkpoints meaningless for the new config: the model's
    shape and family, the tokenizer and the objective."""
    def refused(name: str) -> bool:
        section, key = name.split(".", 1)
        return ((section == "model" and key not in RESUMABLE_MODEL_KEYS)
                or name in ("data.tokenizer", "train.objective"))
    return [change for change in changes if refused(change[0])]


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def resolved_model(config: Config, tokenizer_vocab_size: int) -> ModelConfig:
    """Fills the derived model fields (vocab, kv heads, head dim, d_ff) from the others."""
    m = dataclasses.replace(config.model)
    if m.vocab_size == 0:
        mult = max(m.vocab_multiple, 1)
        m.vocab_size = -(-tokenizer_vocab_size // mult) * mult
    elif m.vocab_size < tokenizer_vocab_size:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tokenizer_vocab_size})")
    m.num_kv_heads = m.num_kv_heads or m.num_heads
    m.head_dim = m.head_dim or m.d_model // m.num_heads
    if m.d_ff == 0:
        m.d_ff = 4 * m.d_model if m.mlp == "gelu" else -(-(8 * m.d_model // 3) // 64) * 64
    return m


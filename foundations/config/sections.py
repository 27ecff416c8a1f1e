"""The config's typed sections: frozen dataclasses whose fields are `knob`s (default, doc, range).

`Config` nests them; parse.py builds one from YAML and overrides, validate.py checks it. Choices
are `Literal` types; each knob's one-line doc is what `foundations config --keys` lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


class ConfigError(ValueError):
    """A configuration problem a user can fix; the CLI prints it as one line."""


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back (train/checkpoint.py raises it; it lives
    here so that the CLI can catch it without importing JAX)."""


def knob(default, doc: str, check: str = ""):
    """A config field with its one-line doc and an optional range check: '> 0', '>= 0', '>= 1',
    '[0, 1]', '[0, 1)', '(0, 1)', '(0, 1]' or '-1 or > 0'."""
    return field(default=default, metadata={"doc": doc, "check": check})


Family = Literal["decoder", "encoder", "encdec"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
Mlp = Literal["gelu", "gelu_exact", "relu", "swiglu", "geglu"]
GATED_MLPS = ("swiglu", "geglu")
PositionKind = Literal["learned", "sinusoidal", "rope", "alibi", "t5_bias", "none"]
RopeScaling = Literal["none", "linear", "ntk"]
AttentionImpl = Literal["auto", "xla", "cudnn"]
DType = Literal["float32", "bfloat16"]
Remat = Literal["none", "full", "dots"]
MoeDispatch = Literal["dense", "grouped"]
ObjectiveKind = Literal["clm", "prefix_lm", "mlm", "span", "electra"]
ScheduleKind = Literal["cosine", "linear", "constant", "wsd"]
Newlines = Literal["keep", "normalize"]


@dataclass(frozen=True)
class PositionsConfig:
    """How token positions enter the model (models/positions.py)."""
    kind: PositionKind = knob("learned", "learned table, sinusoids, rotary, ALiBi, T5 relative "
                              "bias buckets, or none")
    theta: float = knob(10000.0, "rope: base of the rotary frequencies", "> 0")
    scaling: RopeScaling = knob("none", "rope: context extension by position interpolation "
                                "(linear) or NTK-aware theta (ntk)")
    factor: float = knob(1.0, "rope: context extension factor for scaling", ">= 1")
    buckets: int = knob(32, "t5_bias: number of relative-position buckets", "> 0")
    max_distance: int = knob(128, "t5_bias: distances beyond this share the last bucket", "> 0")


@dataclass(frozen=True)
class MoeConfig:
    """Mixture of experts (models/moe.py): num_experts > 0 replaces each block's MLP."""
    num_experts: int = knob(0, "experts per MoE layer; 0: a dense MLP", ">= 0")
    experts_per_token: int = knob(2, "top-k routing: experts each token is sent to", "> 0")
    capacity_factor: float = knob(0.0, "0: dropless; > 0: each expert takes cf * k * T / E "
                                  "tokens", ">= 0")
    aux_loss_coef: float = knob(0.01, "Switch/Mixtral load-balancing loss weight", ">= 0")
    z_loss_coef: float = knob(0.0, "ST-MoE router z-loss weight", ">= 0")
    dispatch: MoeDispatch = knob("dense", "dense: one-hot einsums over capacity slots; grouped: "
                                 "tokens sorted by expert into one ragged matmul (mesh.expert=1)")


@dataclass(frozen=True)
class ModelConfig:
    """One Transformer code base; GPT-2, LLaMA, Mixtral, BERT and T5 are settings of these
    fields (`family` picks decoder-only, encoder-only or encoder-decoder). None: derived."""
    family: Family = knob("decoder", "decoder (GPT/LLaMA/Mixtral), encoder (BERT), encdec (T5)")
    vocab_size: Optional[int] = knob(None, "embedding rows; None: the tokenizer's size rounded "
                                     "up to vocab_multiple", "> 0")
    vocab_multiple: int = knob(64, "pad the derived vocabulary to a multiple of this", "> 0")
    num_layers: int = knob(4, "blocks (encdec: encoder blocks)", "> 0")
    num_decoder_layers: Optional[int] = knob(None, "encdec: decoder blocks; None: num_layers",
                                             "> 0")
    d_model: int = knob(128, "residual stream width", "> 0")
    num_heads: int = knob(4, "query heads", "> 0")
    num_kv_heads: Optional[int] = knob(None, "key/value heads; fewer than num_heads: "
                                       "grouped-query; None: num_heads", "> 0")
    head_dim: Optional[int] = knob(None, "size of each head; None: d_model // num_heads", "> 0")
    d_ff: Optional[int] = knob(None, "MLP width; None: 4*d_model (gelu) or 8/3*d_model rounded "
                               "to 64 (gated: swiglu, geglu)", "> 0")
    max_seq_len: int = knob(256, "longest sequence (learned position table size)", "> 0")
    norm: Norm = knob("layernorm", "normalisation layer")
    norm_eps: float = knob(1e-5, "normalisation epsilon", "> 0")
    norm_position: NormPosition = knob("pre", "pre: x + f(norm(x)); post: norm(x + f(x)) (BERT)")
    mlp: Mlp = knob("gelu", "MLP kind: gelu (tanh approximation, GPT-2's gelu_new), gelu_exact "
                    "(erf, BERT), relu (T5), swiglu (LLaMA), geglu (T5 v1.1's gated-gelu)")
    scale_attention: bool = knob(True, "divide q.k by sqrt(head_dim); false: T5, whose init "
                                 "absorbs the scale")
    tie_embeddings: bool = knob(True, "output head shares the token embedding table")
    use_bias: bool = knob(True, "biases in dense layers (and LayerNorm)")
    dropout: float = knob(0.0, "dropout rate on embeddings, attention and MLP outputs", "[0, 1)")
    init_std: float = knob(0.02, "standard deviation of the normal initialisers", "> 0")
    type_vocab_size: int = knob(2, "encoder: segment (token type) embeddings; 0: none", ">= 0")
    local_window_size: int = knob(0, "> 0: each query sees only the last N keys (itself "
                                  "included); 0: all", ">= 0")
    fuse_qkv: bool = knob(False, "self-attention with num_kv_heads == num_heads runs its query, "
                          "key and value kernels as one matmul (same parameters, same math; "
                          "no faster on XLA:CPU, benchmarks/NOTES.md)")
    attention_impl: AttentionImpl = knob("auto", "jax.nn.dot_product_attention implementation")
    dtype: DType = knob("float32", "compute dtype (parameters stay param_dtype)")
    param_dtype: DType = knob("float32", "parameter dtype")
    remat: Remat = knob("none", "recompute block activations in the backward pass")
    scan_unroll: int = knob(0, "blocks per iteration of the scanned layer stack; num_layers: "
                            "fully unrolled (faster steps, longer compiles); 0: auto, by backend "
                            "and depth (scan_unroll_for)", ">= 0")
    positions: PositionsConfig = field(default_factory=PositionsConfig)
    moe: MoeConfig = field(default_factory=MoeConfig)


# model.scan_unroll=0 (auto): stacks this shallow are fully unrolled on every backend
UNROLL_ALL_LAYERS = 12


def scan_unroll_for(cfg: ModelConfig, backend: str, num_layers: int = 0) -> int:
    """What model.scan_unroll=0 (auto) resolves to for a stack of num_layers (default
    cfg.num_layers) blocks on `backend` ('cpu', 'gpu', 'tpu'): fully unrolled on the CPU (the
    scan costs ~12% a step there, the compile grows little) or when the stack has at most
    UNROLL_ALL_LAYERS blocks; scanned (1) for deeper stacks on an accelerator, where unrolling
    would grow the compile with depth. A set value (> 0) is kept."""
    layers = num_layers or cfg.num_layers
    if cfg.scan_unroll:
        return cfg.scan_unroll
    return layers if backend == "cpu" or layers <= UNROLL_ALL_LAYERS else 1


@dataclass(frozen=True)
class ObjectiveConfig:
    """The pre-training task (objectives/): what is predicted and how inputs are corrupted."""
    kind: ObjectiveKind = knob("clm", "clm, prefix_lm (decoder); mlm, electra (encoder); span "
                               "(encdec)")
    mask_prob: float = knob(0.15, "mlm/electra: share of tokens selected for prediction",
                            "(0, 1)")
    whole_word_mask: bool = knob(False, "mlm/electra: select whole words, not single tokens")
    noise_density: float = knob(0.15, "span: share of tokens corrupted", "(0, 1)")
    mean_span_length: float = knob(3.0, "span: mean length of a corrupted span", ">= 1")
    generator_scale: float = knob(0.25, "electra: generator width / discriminator width",
                                  "(0, 1]")
    disc_weight: float = knob(50.0, "electra: weight of the replaced-token detection loss",
                              "> 0")
    loss_chunk_size: int = knob(0, "clm: score this many positions of each row at a time, so "
                                "no [batch, length, vocab] logits exist; 0: all at once", ">= 0")


@dataclass(frozen=True)
class MixtureSource:
    """One prepared dataset of `data.mixture` and its share of the training windows."""
    shards: str = knob("", "a directory made by `foundations prepare`")
    weight: float = knob(1.0, "relative share of training windows drawn from it", "> 0")


@dataclass(frozen=True)
class DataConfig:
    """Text files -> tokens -> packed fixed-length sequences."""
    train_files: tuple[str, ...] = knob(("tinyshakespeare/input.txt",), "training text files or "
                                        "directories (bundled corpora by relative name)")
    val_files: tuple[str, ...] = knob((), "validation files; empty: hold out val_fraction")
    val_fraction: float = knob(0.1, "share of the training text held out for validation",
                               "[0, 1)")
    tokenizer: str = knob("byte", "'byte' or a directory made by `foundations tokenize train`")
    seq_len: int = knob(256, "tokens per training window", "> 0")
    shuffle_seed: int = knob(0, "seed of the window order")
    fallback_encoding: str = knob("", "e.g. latin-1: for files that are not UTF-8 ('': refuse)")
    newlines: Newlines = knob("normalize", "normalize: read \\r\\n and lone \\r as \\n; keep: the "
                              "file's line endings as they are")
    shards: str = knob("", "a directory made by `foundations prepare`: train and validate on its "
                       "shards (train_files, val_files and val_fraction are then ignored)")
    mixture: tuple[MixtureSource, ...] = knob((), "prepared datasets mixed by weight, e.g. "
                                              "[{shards: A, weight: 0.7}, {shards: B, weight: "
                                              "0.3}]; validation: the first one's")
    document_masks: bool = knob(False, "packed windows carry segment ids: attention does not "
                                "cross an end-of-text (decoder, clm)")
    reset_positions: bool = knob(False, "with document_masks: positions restart at 0 in each "
                                 "document")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; their product must equal the number of devices (-1: fill)."""
    data: int = knob(1, "replicas that split the batch", "-1 or > 0")
    fsdp: int = knob(1, "split the batch and shard parameters and optimizer state", "-1 or > 0")
    tensor: int = knob(1, "shard heads and MLP width (Megatron-style)", "-1 or > 0")
    stage: int = knob(1, "pipeline stages: the layer stack split S ways", "> 0")
    microbatches: int = knob(1, "pipeline microbatches per step (bubble (S-1)/(M+S-1))", "> 0")
    expert: int = knob(1, "shard MoE experts (and, like data, the batch)", "-1 or > 0")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping; only matrices decay by default (train/optim.py)."""
    lr: float = knob(1e-3, "peak learning rate", "> 0")
    b1: float = knob(0.9, "Adam first-moment decay", "[0, 1)")
    b2: float = knob(0.95, "Adam second-moment decay", "[0, 1)")
    eps: float = knob(1e-8, "Adam epsilon", "> 0")
    weight_decay: float = knob(0.1, "decoupled weight decay on the decayed parameters", ">= 0")
    decay_embeddings: bool = knob(False, "also decay tables: token, position and segment "
                                  "embeddings, position-bias tables")
    decay_norms_and_biases: bool = knob(False, "also decay vectors: norm scales and biases")
    clip_norm: float = knob(1.0, "clip gradients to this global norm; 0: no clipping", ">= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup, then cosine | linear | constant | wsd (warmup-stable-decay)."""
    kind: ScheduleKind = knob("cosine", "shape of the learning rate after warmup")
    warmup_steps: float = knob(0.05, "linear warmup from 0 to the peak: a whole number of steps "
                               "(at most train.steps), or a fraction of the run if below 1",
                               ">= 0")
    min_lr_ratio: float = knob(0.1, "final learning rate as a fraction of the peak", "[0, 1]")
    decay_fraction: float = knob(0.2, "wsd: the share of steps spent in the final decay",
                                 "(0, 1]")

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of `total_steps`: a fraction below 1 (Levanter's convention)
        scales with the run, a whole number is taken as it is."""
        if self.warmup_steps < 1:
            return int(round(self.warmup_steps * total_steps))
        return int(self.warmup_steps)


@dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under the run directory's checkpoints/."""
    every: int = knob(500, "save every N steps (and always at the end); 0: only at the end",
                      ">= 0")
    keep: int = knob(3, "keep the last K checkpoints", "> 0")
    async_save: bool = knob(True, "write checkpoints in the background while training goes on")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: batch, steps, logging, evaluation and the end-of-run sample."""
    steps: int = knob(1000, "optimizer steps to train to", ">= 0")
    batch_size: int = knob(16, "global batch, in sequences", "> 0")
    grad_accum: int = knob(1, "microbatches per step; batch_size must divide by it", "> 0")
    seed: int = knob(0, "seed of initialisation, dropout and objective masks")
    log_every: int = knob(10, "log metrics every N steps", "> 0")
    eval_every: int = knob(200, "evaluate every N steps; 0: only at the end", ">= 0")
    eval_batches: int = knob(16, "post-training stages: validation batches per evaluation; 0: "
                             "the whole split (pretraining: see eval_windows)", ">= 0")
    eval_windows: int = knob(256, "pretraining: validation windows per evaluation, spread evenly "
                             "over the split and the same whatever batch_size; 0: the whole "
                             "split (a config that sets only eval_batches gets eval_batches x "
                             "batch_size, its old meaning)", ">= 0")
    sample_prompt: str = knob("ROMEO:", "prompt of the sample printed at the end")
    sample_tokens: int = knob(200, "tokens sampled at the end (decoders); 0: none", ">= 0")
    sample_temperature: float = knob(0.8, "temperature of that sample; 0: greedy", ">= 0")
    peak_flops: float = knob(0.0, "per device, for MFU; 0: looked up from the device kind",
                             ">= 0")
    init_from: str = knob("", "a run directory: start this (new) run from its parameters")
    init_step: Optional[int] = knob(None, "init_from's checkpoint step; None: its latest",
                                    ">= 0")


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-process runs (parallel/distributed.py); empty values come from the environment."""
    coordinator_address: str = knob("", "host:port of process 0; '': $JAX_COORDINATOR_ADDRESS")
    num_processes: int = knob(0, "0: $JAX_NUM_PROCESSES, else 1 (or auto-detected)", ">= 0")
    process_id: int = knob(-1, "-1: $JAX_PROCESS_ID")
    auto: bool = knob(True, "detect Cloud TPU VM slices and multi-task SLURM jobs")
    init_timeout_s: int = knob(300, "wait this long for all processes to join", "> 0")
    heartbeat_timeout_s: int = knob(100, "a silent process is declared dead after this",
                                    "> 0")


LossKind = Literal["sigmoid", "ipo"]
PpoReward = Literal["rule", "model"]
PpoAdvantage = Literal["gae", "group"]


@dataclass(frozen=True)
class SftConfig:
    """Supervised fine-tuning on (prompt, response) JSONL (post/): loss on response tokens."""
    train_file: str = knob("", "JSONL of {\"prompt\": ..., \"response\": ...} lines")
    val_file: str = knob("", "held-out JSONL of the same form; '': hold out val_fraction")
    val_fraction: float = knob(0.1, "share of train_file held out when val_file is ''", "(0, 1)")
    template: str = knob("Q: {prompt} A: ", "the text before each response; {prompt} is "
                         "replaced by the example's prompt")
    pack: bool = knob(True, "pack several examples into each window (no attention across "
                      "them); false: one example per window")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (post/adapters.py): W + (alpha / rank) * A @ B on the targeted kernels, base frozen."""
    rank: int = knob(0, "adapter rank; 0: no LoRA", ">= 0")
    alpha: float = knob(16.0, "scale numerator: the update is (alpha / rank) * A @ B", "> 0")
    dropout: float = knob(0.0, "dropout on the adapter's input features (one mask per step)",
                          "[0, 1)")
    targets: str = knob("attention/(query|key|value|out)", "regular expression searched in "
                        "each kernel's path, e.g. 'attention/(query|value)' or 'mlp'")


@dataclass(frozen=True)
class PromptTuningConfig:
    """Prompt tuning: trainable soft-prompt vectors before each input, base frozen."""
    num_tokens: int = knob(0, "soft-prompt vectors; 0: no prompt tuning", ">= 0")


@dataclass(frozen=True)
class PrefixTuningConfig:
    """Prefix tuning: trainable key/value prefixes in every layer, base frozen."""
    num_tokens: int = knob(0, "key/value prefix length; 0: no prefix tuning", ">= 0")


@dataclass(frozen=True)
class RewardConfig:
    """A scalar reward head on the decoder, Bradley-Terry loss on preference pairs."""
    train_file: str = knob("", "JSONL of {\"prompt\", \"chosen\", \"rejected\"} lines")
    val_file: str = knob("", "held-out pairs; '': hold out sft.val_fraction of train_file")


@dataclass(frozen=True)
class DpoConfig:
    """Direct preference optimisation against the frozen init_from policy (Rafailov et al.)."""
    train_file: str = knob("", "JSONL of {\"prompt\", \"chosen\", \"rejected\"} lines")
    val_file: str = knob("", "held-out pairs; '': hold out sft.val_fraction of train_file")
    beta: float = knob(0.1, "strength of the implicit KL to the reference", "> 0")
    loss: LossKind = knob("sigmoid", "sigmoid: DPO; ipo: squared loss toward 1 / (2 beta)")
    label_smoothing: float = knob(0.0, "sigmoid: share of pairs assumed mislabelled "
                                  "(conservative DPO)", "[0, 1)")
    nll_coef: float = knob(0.0, "RPO (Pang et al. 2024): weight of the chosen responses' "
                           "per-token NLL added to the loss, so they keep their likelihood", ">= 0")


@dataclass(frozen=True)
class PpoConfig:
    """PPO from a reward against the frozen init_from policy (post/ppo.py; Ouyang et al.)."""
    prompts_file: str = knob("", "JSONL of {\"prompt\", \"answer\"} lines (\"response\" is read "
                             "as the answer when there is no \"answer\")")
    reward: PpoReward = knob("rule", "rule: 1 if the response is exactly the answer, else 0; "
                             "model: the score of the reward_model run")
    reward_model: str = knob("", "a `foundations reward` run directory (ppo.reward=model)")
    advantage: PpoAdvantage = knob("gae", "gae: a value head and GAE; group: GRPO, each "
                                   "score against the other samples of its prompt")
    samples: int = knob(1, "responses sampled per prompt (group: >= 2); a rollout is "
                        "train.batch_size prompts x samples", ">= 1")
    max_new_tokens: int = knob(8, "longest response sampled", ">= 1")
    temperature: float = knob(1.0, "sampling temperature of the rollouts", "> 0")
    kl_coef: float = knob(0.05, "weight of the per-token KL penalty to the reference", ">= 0")
    target_kl: float = knob(0.0, "> 0: adapt kl_coef toward this KL per response; 0: fixed",
                            ">= 0")
    gamma: float = knob(1.0, "discount of GAE", "[0, 1]")
    lam: float = knob(0.95, "lambda of GAE", "[0, 1]")
    clip: float = knob(0.2, "the policy ratio's clip range", "> 0")
    value_clip: float = knob(0.2, "how far a value may move from the rollout's", "> 0")
    value_coef: float = knob(0.5, "weight of the value loss", ">= 0")
    entropy_coef: float = knob(0.0, "weight of an entropy bonus", ">= 0")
    epochs: int = knob(4, "passes over each rollout", ">= 1")
    minibatches: int = knob(2, "optimizer steps per epoch (the rollout's rows split)", ">= 1")


@dataclass(frozen=True)
class PrepareConfig:
    """`foundations prepare`'s options (data/prepare.py): a corpus -> shards. Not a section of
    Config: the command's flags set it (their names, defaults and help come from here)."""
    tokenizer: str = field(metadata={"doc": "'byte' or a saved tokenizer directory"})
    val_fraction: float = knob(0.01, "share of documents held out for validation (at least one)",
                               "[0, 1)")
    text_key: str = knob("text", "JSONL: the field holding the text")
    separator: str = knob("", "split text files into documents at this string (e.g. '\\n\\n\\n')")
    min_chars: int = knob(1, "drop documents with fewer non-blank characters", ">= 0")
    fallback_encoding: str = knob("", "as data.fallback_encoding: decode non-UTF-8 files so ('': "
                                  "refuse them)")
    shard_tokens: int = knob(1 << 26, "tokens per shard", "> 0")
    workers: int = knob(0, "tokenizing processes; 0: one per core", ">= 0")
    newlines: Newlines = knob("normalize", "as data.newlines: normalize reads \\r\\n and lone \\r "
                              "as \\n; keep leaves them")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    prefix_tuning: PrefixTuningConfig = field(default_factory=PrefixTuningConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)

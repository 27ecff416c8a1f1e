"""Parameter and training-FLOP counts of every family, from the config alone (no model is built).

`param_counts(cfg, objective)` and `train_flops_per_token(cfg, seq_len, objective)` dispatch on
the family (decoder: GPT-2, LLaMA, Mixtral; encoder: BERT; encdec: T5) and on the ELECTRA
objective. tests/test_flops.py checks the parameters against a real init of every family and the
FLOPs against hand counts and XLA's count of the compiled forward + backward. Conventions:

- Embedding parameters are the tables indexed by token, position or segment (token embeddings,
  learned position tables, T5's relative-bias tables, segment embeddings) and, when untied, the
  vocabulary-sized output head (with BERT's MLM output bias). Everything else (blocks, norms,
  routers, the pooler, the heads' transforms) is N, the non-embedding count of scaling laws
  (Kaplan et al. 2020). An MoE's N holds all E experts; `active` holds the k a token is routed
  to (and the router), the N that sets its compute.
- Training costs 6 FLOPs (2 forward, 4 backward) per matmul weight per position it multiplies:
  every block's kernels, the k routed experts and the router, the output head (tied or not) and
  the MLM / replaced-token heads at every position. Lookups, elementwise work (norms, softmax,
  activations), remat's recomputation and an MoE's one-hot dispatch are not model FLOPs.
- Attention adds 12 FLOPs per query, key and query-head dimension (QK^T and AV, forward and
  backward): 12·L·T·heads·head_dim per token with T keys, as Megatron and PaLM count it. Every
  query is charged for all T keys (S encoder outputs for cross-attention), whether the mask is
  causal, bidirectional or a prefix: masked scores are not discounted. A sliding window of w
  charges min(T, 2w - 1) keys, the band within distance w, likewise not halved when causal.
- T5 counts both stacks: the encoder over its S input tokens, the decoder over its T targets,
  cross-attention's key/value projections over the S encoder outputs and its scores over S keys.
  The pooler is in N but costs nothing: no objective's loss reads it, so the compiled step
  drops it. ELECTRA is generator + discriminator.
- FLOPs are per trained token, i.e. per seq_len-token window (what tokens/s counts): T5's S and
  T (set by the span corruption) are folded into that.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundations.config import FAMILY_OBJECTIVES, GATED_MLPS, ModelConfig, ObjectiveConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int       # token, position and segment tables, untied output head, MLM bias
    non_embedding: int   # the N of scaling laws
    active: int          # N a token passes through: an MoE's k routed experts, not all E


def _objective(cfg: ModelConfig, objective: ObjectiveConfig | None) -> ObjectiveConfig:
    """The objective settings the counts read (kind, generator_scale, noise_density,
    mean_span_length); None: the family's default objective."""
    if objective is None:
        return ObjectiveConfig(kind=FAMILY_OBJECTIVES[cfg.family][0])
    return objective


def _generator(cfg: ModelConfig, objective: ObjectiveConfig) -> ModelConfig:
    # imported here, as span_counts below: the CLI imports this module before JAX may start
    from foundations.models.families import generator_config
    return generator_config(cfg, objective.generator_scale)


def param_counts(cfg: ModelConfig, objective: ObjectiveConfig | None = None) -> ParamCounts:
    """The parameters `build_model(config)` creates, split as the module docstring says."""
    objective = _objective(cfg, objective)
    if objective.kind == "electra":
        parts = [_encoder_params(_generator(cfg, objective), "mlm"), _encoder_params(cfg, "rtd")]
    else:
        parts = [{"decoder": _decoder_params, "encoder": _encoder_params,
                  "encdec": _encdec_params}[cfg.family](cfg)]
    embedding, non_embedding, active = (sum(p[i] for p in parts) for i in range(3))
    return ParamCounts(embedding + non_embedding, embedding, non_embedding, active)


def train_flops_per_token(cfg: ModelConfig, seq_len: int,
                          objective: ObjectiveConfig | None = None) -> float:
    """Forward + backward FLOPs per trained token (module docstring: 6 per matmul weight per
    position, plus attention scores)."""
    objective = _objective(cfg, objective)
    if objective.kind == "electra":
        flops = (_encoder_flops(_generator(cfg, objective), seq_len, "mlm")
                 + _encoder_flops(cfg, seq_len, "rtd"))
    elif cfg.family == "encdec":
        flops = _encdec_flops(cfg, seq_len, objective)
    elif cfg.family == "encoder":
        flops = _encoder_flops(cfg, seq_len, "mlm")
    else:
        flops = _decoder_flops(cfg, seq_len)
    return flops / seq_len


# ---------------------------------------------------------------- parameters of the pieces
def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)


def _dense(cfg: ModelConfig, inputs: int, outputs: int) -> int:
    """A kernel (inputs, outputs) and, with use_bias, its bias."""
    return inputs * outputs + (outputs if cfg.use_bias else 0)


def _attention(cfg: ModelConfig) -> int:
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return _dense(cfg, cfg.d_model, q) + 2 * _dense(cfg, cfg.d_model, kv) + _dense(
        cfg, q, cfg.d_model)


def _expert(cfg: ModelConfig) -> int:
    """One MLP: the dense block's, or each expert's of an MoE."""
    ups = 2 if cfg.mlp in GATED_MLPS else 1
    return ups * _dense(cfg, cfg.d_model, cfg.d_ff) + _dense(cfg, cfg.d_ff, cfg.d_model)


def _block(cfg: ModelConfig, cross: bool = False, experts: int | None = None) -> int:
    """A block's parameters with `experts` of its MoE's experts (default all E)."""
    mlp = _expert(cfg)
    if cfg.moe.num_experts:
        experts = cfg.moe.num_experts if experts is None else experts
        mlp = cfg.d_model * cfg.moe.num_experts + experts * mlp   # router + experts
    layers = [_attention(cfg), mlp] + ([_attention(cfg)] if cross else [])
    return sum(layers) + len(layers) * _norm(cfg)


def _stack(cfg: ModelConfig, layers: int, cross: bool = False) -> tuple[int, int]:
    """(N, active N) of `layers` blocks."""
    return (layers * _block(cfg, cross),
            layers * _block(cfg, cross, experts=cfg.moe.experts_per_token))


def _tables(cfg: ModelConfig) -> int:
    """A stack's position tables: a learned one, or T5's relative-bias table."""
    if cfg.positions.kind == "learned":
        return cfg.max_seq_len * cfg.d_model
    if cfg.positions.kind == "t5_bias":
        return cfg.positions.buckets * cfg.num_heads
    return 0


def _untied_head(cfg: ModelConfig) -> int:
    return 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size


def _decoder_params(cfg: ModelConfig) -> tuple[int, int, int]:
    """(embedding, N, active N) of `Decoder`."""
    blocks, active = _stack(cfg, cfg.num_layers)
    embedding = cfg.vocab_size * cfg.d_model + _tables(cfg) + _untied_head(cfg)
    return embedding, blocks + _norm(cfg), active + _norm(cfg)


def _encoder_params(cfg: ModelConfig, head: str = "mlm") -> tuple[int, int, int]:
    """`Encoder`: embeddings (+ segments), blocks, the norm after the embeddings (post-norm) or
    after the blocks (pre-norm), the pooler and the MLM or replaced-token head."""
    blocks, active = _stack(cfg, cfg.num_layers)
    d = cfg.d_model
    embedding = (cfg.vocab_size + cfg.type_vocab_size) * d + _tables(cfg)
    rest = _norm(cfg) + 2 * _dense(cfg, d, d) + _norm(cfg)    # a norm, pooler, transform, norm
    if head == "rtd":
        rest += _dense(cfg, d, 1)
    elif cfg.use_bias:
        embedding += cfg.vocab_size                             # the tied MLM head's bias
    return embedding, blocks + rest, active + rest


def _encdec_params(cfg: ModelConfig) -> tuple[int, int, int]:
    """`EncoderDecoder`: a shared token table, per-stack position tables, both stacks (the
    decoder's blocks cross-attend), their final norms and the output head."""
    encoder, encoder_active = _stack(cfg, cfg.num_layers)
    decoder, decoder_active = _stack(cfg, cfg.num_decoder_layers, cross=True)
    embedding = cfg.vocab_size * cfg.d_model + 2 * _tables(cfg) + _untied_head(cfg)
    norms = 2 * _norm(cfg)
    return embedding, encoder + decoder + norms, encoder_active + decoder_active + norms


# ---------------------------------------------------------------- FLOPs per sequence
def _kernels(cfg: ModelConfig, kv_inputs: bool = True) -> int:
    """Matmul weights one query position multiplies in attention (without the key/value
    projections when those read another sequence) and in the MLP (the routed experts only)."""
    d, q, kv = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    ups = 2 if cfg.mlp in GATED_MLPS else 1
    mlp = (ups + 1) * d * cfg.d_ff
    if cfg.moe.num_experts:
        mlp = cfg.moe.experts_per_token * mlp + d * cfg.moe.num_experts
    return 2 * d * q + (2 * d * kv if kv_inputs else 0) + mlp


def _attention_scores(cfg: ModelConfig, queries: int, keys: int) -> int:
    """QK^T and AV, forward and backward, for `queries` x `keys` (every query head)."""
    return 12 * queries * keys * cfg.num_heads * cfg.head_dim


def _keys(cfg: ModelConfig, length: int) -> int:
    """Keys charged per query in self-attention over `length` tokens (module docstring)."""
    w = cfg.local_window_size
    return min(length, 2 * w - 1) if w else length


def _stack_flops(cfg: ModelConfig, layers: int, length: int, context: int = 0) -> int:
    """`layers` blocks over `length` positions; with `context`, each block also cross-attends
    to that many encoder outputs (its key/value projections run over those)."""
    per_layer = 6 * length * _kernels(cfg) + _attention_scores(cfg, length, _keys(cfg, length))
    if context:
        per_layer += (6 * length * 2 * cfg.d_model * cfg.num_heads * cfg.head_dim
                      + 6 * context * 2 * cfg.d_model * cfg.num_kv_heads * cfg.head_dim
                      + _attention_scores(cfg, length, context))
    return layers * per_layer


def _decoder_flops(cfg: ModelConfig, length: int) -> int:
    return _stack_flops(cfg, cfg.num_layers, length) + 6 * length * cfg.d_model * cfg.vocab_size


def _encoder_flops(cfg: ModelConfig, length: int, head: str) -> int:
    """Blocks, then the head at every position: a d x d transform and the vocabulary output
    (MLM) or one logit (replaced-token detection)."""
    outputs = cfg.vocab_size if head == "mlm" else 1
    return (_stack_flops(cfg, cfg.num_layers, length)
            + 6 * length * cfg.d_model * (cfg.d_model + outputs))


def _encdec_flops(cfg: ModelConfig, seq_len: int, objective: ObjectiveConfig) -> int:
    """Span corruption turns a seq_len window into S encoder inputs and T decoder targets."""
    from foundations.objectives.span import span_counts
    noise, spans = span_counts(seq_len, objective.noise_density, objective.mean_span_length)
    inputs, targets = seq_len - noise + spans, noise + spans
    return (_stack_flops(cfg, cfg.num_layers, inputs)
            + _stack_flops(cfg, cfg.num_decoder_layers, targets, inputs)
            + 6 * targets * cfg.d_model * cfg.vocab_size)

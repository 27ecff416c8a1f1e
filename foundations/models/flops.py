"""Parameter and FLOP counts derived from the config alone (no model needs to be built).

Conventions (Kaplan et al. 2020; PaLM appendix B): N counts non-embedding parameters (the token
and position tables, and an untied output head, are left out); training costs 6 FLOPs per
parameter per token for the matmuls, plus 12·L·T·(heads·head_dim) per token for attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundations.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int       # token table + learned position table + untied output head
    non_embedding: int   # the N of scaling laws


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Counts the parameters `Decoder(cfg)` creates (a test checks it against a real init)."""
    d, f, h, kv, hd, layers = (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_kv_heads,
                               cfg.head_dim, cfg.num_layers)
    bias = 1 if cfg.use_bias else 0
    norm = d * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)
    attention = d * h * hd + 2 * d * kv * hd + h * hd * d + bias * (h * hd + 2 * kv * hd + d)
    n_up = 2 if cfg.mlp == "swiglu" else 1
    mlp = n_up * d * f + f * d + bias * (n_up * f + d)
    blocks = layers * (attention + mlp + 2 * norm)
    embedding = cfg.vocab_size * d
    embedding += cfg.max_seq_len * d if cfg.positions.kind == "learned" else 0
    embedding += 0 if cfg.tie_embeddings else d * cfg.vocab_size
    non_embedding = blocks + norm
    return ParamCounts(non_embedding + embedding, embedding, non_embedding)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights multiplied with each token: every block's kernels and the output head."""
    d, f, h, kv, hd = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    n_up = 2 if cfg.mlp == "swiglu" else 1
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + n_up * d * f + f * d
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: 6·(matmul weights) + 12·L·T·(heads·head_dim)."""
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return 6 * matmul_params(cfg) + attention

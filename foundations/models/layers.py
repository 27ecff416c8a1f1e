"""Small building blocks with logical axis names on every parameter: norms, MLPs, embeddings.

Logical names (`embed`, `mlp`, `vocab`, ...) say what a dimension *is*; `foundations.parallel.mesh`
maps them to mesh axes. A layer never names a mesh axis, so parallelism is a config change.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtypes(cfg: ModelConfig) -> dict:
    """The compute and parameter dtypes as keyword arguments for flax layers."""
    return {"dtype": DTYPES[cfg.dtype], "param_dtype": DTYPES[cfg.param_dtype]}


def normal(std: float, axes: tuple[str, ...]):
    """A normal initializer whose parameter carries logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def zeros(axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Names the axes of an activation so the compiler shards it by the rules table."""
    return nn.with_logical_constraint(x, axes)


def residual_std(cfg: ModelConfig) -> float:
    """GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(2L)."""
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)


class Norm(nn.Module):
    """LayerNorm (GPT-2) or RMSNorm (LLaMA), chosen by `cfg.norm`."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        if cfg.norm == "rmsnorm":
            return nn.RMSNorm(epsilon=cfg.norm_eps, scale_init=ones(("norm",)), **dtypes(cfg))(x)
        return nn.LayerNorm(epsilon=cfg.norm_eps, use_bias=cfg.use_bias,
                            scale_init=ones(("norm",)), bias_init=zeros(("norm",)),
                            **dtypes(cfg))(x)


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The MLP's nonlinearity: exact (erf) GELU for gelu_exact, relu for relu, else GELU's tanh
    approximation (GPT-2's gelu_new; also the gate of geglu)."""
    if cfg.mlp == "gelu_exact":
        return nn.gelu(x, approximate=False)
    if cfg.mlp == "relu":
        return nn.relu(x)
    return nn.gelu(x, approximate=True)


def mlp_hidden(cfg: ModelConfig, up: jax.Array, gate) -> jax.Array:
    """act(up) for plain MLPs; act(gate) * up for the gated ones (silu: swiglu, gelu: geglu);
    `gate()` computes the gate projection, only for gated kinds."""
    if cfg.mlp == "swiglu":
        return nn.silu(gate()) * up
    if cfg.mlp == "geglu":
        return activation(cfg, gate()) * up
    return activation(cfg, up)


class Mlp(nn.Module):
    """The position-wise feed-forward block: GELU (GPT-2, BERT), ReLU (T5), or gated: SwiGLU
    (LLaMA), GeGLU (T5 v1.1)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.cfg

        def dense(features, axes, std, name):
            return nn.Dense(features, use_bias=cfg.use_bias, kernel_init=normal(std, axes),
                            bias_init=zeros(axes[-1:]), name=name, **dtypes(cfg))

        up = dense(cfg.d_ff, ("embed", "mlp"), cfg.init_std, "up")(x)
        hidden = mlp_hidden(cfg, up, lambda: dense(cfg.d_ff, ("embed", "mlp"), cfg.init_std,
                                                   "gate")(x))
        hidden = constrain(hidden, ("batch", "length", "act_mlp"))
        out = dense(cfg.d_model, ("mlp", "embed"), residual_std(cfg), "down")(hidden)
        return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)


class Einsum(nn.Module):
    """y = einsum(spec, x, W) + b with W created in its multi-axis shape, e.g. (embed, heads,
    head_dim) for a query projection, so every weight axis has its own logical name. `kernel`
    and `bias` are readable from outside (attention fuses the q/k/v kernels into one matmul)."""
    cfg: ModelConfig
    spec: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    std: float
    bias_axes: tuple[str, ...] = ()   # trailing kernel axes that get a bias; () with no bias

    def setup(self):
        param_dtype = dtypes(self.cfg)["param_dtype"]
        self.kernel = self.param("kernel", normal(self.std, self.kernel_axes), self.kernel_shape,
                                 param_dtype)
        self.bias = (self.param("bias", zeros(self.bias_axes),
                                self.kernel_shape[-len(self.bias_axes):], param_dtype)
                     if self.cfg.use_bias and self.bias_axes else None)

    def __call__(self, x):
        dtype = dtypes(self.cfg)["dtype"]
        y = jnp.einsum(self.spec, x.astype(dtype), self.kernel.astype(dtype))
        return y if self.bias is None else y + self.bias.astype(dtype)


class Embedding(nn.Module):
    """A table of vectors: `__call__` looks ids up, `attend` scores vectors against every row
    (the tied output head)."""
    cfg: ModelConfig
    num_embeddings: int
    axes: tuple[str, str]

    def setup(self):
        self.embedding = self.param("embedding", normal(self.cfg.init_std, self.axes),
                                    (self.num_embeddings, self.cfg.d_model),
                                    dtypes(self.cfg)["param_dtype"])

    def __call__(self, ids):
        # Gather the whole table before the lookup: a row gather from a table sharded over
        # its rows is something the SPMD partitioner can only do by replicating anyway.
        table = constrain(self.embedding, (None, None))
        return jnp.take(table, ids, axis=0).astype(dtypes(self.cfg)["dtype"])

    def attend(self, x):
        kinds = dtypes(self.cfg)
        return jnp.einsum("btd,vd->btv", x.astype(kinds["dtype"]),
                          self.embedding.astype(kinds["dtype"]))

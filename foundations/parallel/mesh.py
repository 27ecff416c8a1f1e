"""The device mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: `stage` (pipeline stages, each holding a contiguous slice of the layer stack; see
parallel/gpipe.py), `data` (replicas that split the batch), `fsdp` (split the batch *and* shard
parameters and optimizer state, gathering weights when used), `tensor` (split heads, MLP width and
vocabulary inside each layer, Megatron-style), `expert` (shard a mixture of experts' weights by
expert; it splits the batch too, so outside the MoE layers it acts like `data`). A parameter's
logical axes (see models/layers.py) meet the rules below; the first rule for a name whose mesh
axis is still free on that array wins.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from foundations.config import ConfigError, MeshConfig

MESH_AXES = ("stage", "data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")

# logical axis -> mesh axis (or None: replicated). Activations use `act_*` names so that the
# model dimension of an activation stays whole while the same dimension of a weight is sharded.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("position", None),
    ("segment", None),     # segment (token type) embedding rows: a tiny table
    ("norm", None),
    ("layers", "stage"),   # the scanned layer axis: contiguous slices per pipeline stage
    ("stage", "stage"),
    ("expert", "expert"),
    ("act_expert", "expert"),
)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """A (stage, data, fsdp, tensor) mesh over the first prod(sizes) of `devices` (default:
    all); one size may be -1: all the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [getattr(cfg, axis) for axis in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be positive "
                          "(at most one may be -1, meaning 'the remaining devices')")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ConfigError(f"mesh: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) > len(devices):
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                          f"but {len(devices)} are available; set mesh.stage/data/fsdp/tensor/"
                          "expert so their product matches")
    devices = devices[:math.prod(sizes)]  # a smaller mesh uses the first devices
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES, axis_types=axis_types)


def logical_shardings(logical_specs, mesh: Mesh):
    """Logical PartitionSpecs (a tree) -> NamedShardings on `mesh` through RULES."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def check_divisible(abstract_tree, shardings, what: str = "parameter") -> None:
    """Raises a ConfigError naming the array and axis when a dimension does not split evenly."""
    def check(path, leaf, sharding):
        for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
            if axes is None:
                continue
            axes = axes if isinstance(axes, tuple) else (axes,)
            parts = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % parts:
                name = jax.tree_util.keystr(path, simple=True, separator="/")
                raise ConfigError(f"{what} {name} has shape {tuple(leaf.shape)}: dimension {dim} "
                                  f"({size}) does not divide by mesh axes {axes} ({parts} ways)")
    jax.tree_util.tree_map_with_path(check, abstract_tree, shardings)


def batch_sharding(mesh: Mesh, leading_unsharded: int = 0) -> NamedSharding:
    """Batch arrays split their example axis over BATCH_AXES; `leading_unsharded` axes stay whole
    (e.g. the microbatch axis of gradient accumulation)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_unsharded), BATCH_AXES))


def batch_parallelism(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())

"""The device mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: `stage` (pipeline stages, each holding a contiguous slice of the layer stack; see
parallel/gpipe.py), `data` (replicas that split the batch), `fsdp` (split the batch *and* shard
parameters and optimizer state, gathering weights when used), `tensor` (split heads, MLP width and
vocabulary inside each layer, Megatron-style), `expert` (shard a mixture of experts' weights by
expert; it splits the batch too, so outside the MoE layers it acts like `data`). A parameter's
logical axes (see models/layers.py) meet the rules below; the first rule for a name whose mesh
axis is still free on that array wins. With several processes, each reads only its own rows of
every batch, so the processes must split the batch axes: `make_mesh` lays the mesh out that way.
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
    """A (stage, data, fsdp, tensor, expert) mesh over `devices` (default: all); one size may be
    -1: all the remaining devices. A smaller mesh uses the first devices, or, when the devices
    belong to several processes, the same number of each process's first devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = _resolve_sizes(cfg, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    processes = len({d.process_index for d in devices})
    if math.prod(sizes) == len(devices):  # all of them: JAX's topology-aware order, if it has one
        try:
            mesh = jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
        except (NotImplementedError, ValueError):  # sizes that do not fit the physical torus
            mesh = None
        if mesh is not None and feeds_own_rows(mesh, processes):
            return mesh
    if processes == 1:
        grid = np.array(devices[:math.prod(sizes)]).reshape(sizes)
    else:
        grid = _spread_over_processes(sizes, devices)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def _resolve_sizes(cfg: MeshConfig, num_devices: int) -> list[int]:
    """The configured axis sizes with a -1 filled in; refused when they need too many devices."""
    sizes = [getattr(cfg, axis) for axis in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be positive "
                          "(at most one may be -1, meaning 'the remaining devices')")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise ConfigError(f"mesh: {num_devices} devices do not divide by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
        raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                          f"but {num_devices} are available; set mesh.stage/data/fsdp/tensor/"
                          "expert so their product matches")
    return sizes


def feeds_own_rows(mesh: Mesh, process_count: int) -> bool:
    """Whether each of the `process_count` processes has devices in `mesh` holding their own,
    equal share of each batch's rows: what `make_array_from_process_local_data` needs when each
    process reads only its rows."""
    ways = batch_parallelism(mesh)
    rows: dict[int, set[int]] = {}
    for device, index in batch_sharding(mesh).devices_indices_map((ways,)).items():
        rows.setdefault(device.process_index, set()).add(index[0].start or 0)
    return (len(rows) == process_count and sum(len(r) for r in rows.values()) == ways
            and len({len(r) for r in rows.values()}) == 1)


def _spread_over_processes(sizes: list[int], devices) -> np.ndarray:
    """The same number of devices from every process, laid out so that the processes split the
    batch axes (each then holds its own rows, as the data pipeline feeds them) and the other
    axes stay inside a process."""
    by_process: dict[int, list] = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    count, size = len(by_process), math.prod(sizes)
    problem = (f"mesh {dict(zip(MESH_AXES, sizes))} ({size} devices) over {count} processes "
               f"with {len(devices)} devices")
    if size % count or size // count > min(len(local) for local in by_process.values()):
        raise ConfigError(f"{problem}: each process must hold the same number of the mesh's "
                          f"devices, so the mesh size must be a multiple of {count}")
    across, left = [], count  # processes per mesh axis, batch axes first
    for axis, n in zip(MESH_AXES, sizes):
        across.append(math.gcd(left, n) if axis in BATCH_AXES else 1)
        left //= across[-1]
    if left > 1:
        ways = math.prod(n for axis, n in zip(MESH_AXES, sizes) if axis in BATCH_AXES)
        raise ConfigError(f"{problem}: each process reads its own rows of every batch, so the "
                          f"batch axes (data x fsdp x expert = {ways}) must divide by {count}")
    within = [n // a for n, a in zip(sizes, across)]
    chosen = [d for local in by_process.values() for d in local[:size // count]]
    grid = np.array(chosen, dtype=object).reshape(*across, *within)
    # mesh axis i = (which process, which of its devices): its coordinate is a * within + w
    order = [k for i in range(len(sizes)) for k in (i, len(sizes) + i)]
    return grid.transpose(order).reshape(sizes)


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

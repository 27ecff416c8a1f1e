"""`foundations compile`: compile the train step ahead of time for a mesh you do not have.

With `libtpu` importable, `--topology v5p-128` compiles for that TPU slice on this CPU-only machine
(as MaxText's train_compile does, through `jax.experimental.topologies`); `--topology cpu-64`
compiles for 64 simulated CPU devices instead. Either way it reports the per-device memory of the
compiled executable (`memory_analysis()`) and its FLOPs per step, so a config that would not fit
is found before a slice is rented.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

from foundations.config import ConfigError

# accelerator family -> (topology prefix, TensorCores per chip, chip config, HBM GiB per chip)
TPU_FAMILIES = {
    "v4": ("v4", 2, "megacore", 32),
    "v5p": ("v5p", 2, "megacore", 95),
    "v5e": ("v5e", 1, "default", 16),
    "v5litepod": ("v5e", 1, "default", 16),
    "v6e": ("v6e", 1, "default", 32),
}


def tpu_shape(family: str, chips: int) -> tuple[int, ...]:
    """The physical chip grid of a slice: 3-D tori (v4, v5p) grow from 2x2x1 (64 chips: 4x4x4),
    2-D grids (v5e, v6e) from 1x1 (16 chips: 4x4), doubling the smallest side each time."""
    shape = [2, 2, 1] if TPU_FAMILIES[family][2] == "megacore" else [1, 1]
    while math.prod(shape) < chips:
        smallest = len(shape) - 1 - shape[::-1].index(min(shape))
        shape[smallest] *= 2
    if math.prod(shape) != chips:
        raise ConfigError(f"--topology: {chips} chips is not a {family} slice size")
    return tuple(shape) if shape == [2, 2, 1] else tuple(sorted(shape))


def parse_topology(name: str) -> dict:
    """'v5p-128' -> TPU slice of 64 chips (v5p counts TensorCores); 'cpu-8' -> 8 CPU devices."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
    if not match or (match.group(1) not in TPU_FAMILIES and match.group(1) != "cpu"):
        raise ConfigError(f"--topology {name!r}: expected cpu-N or one of "
                          f"{', '.join(f'{f}-N' for f in TPU_FAMILIES)}, e.g. v5p-128")
    family, count = match.group(1), int(match.group(2))
    if family == "cpu":
        return {"platform": "cpu", "devices": count, "name": name}
    prefix, cores, chip_config, hbm = TPU_FAMILIES[family]
    chips = max(count // cores, 1)
    shape = tpu_shape(family, chips)
    return {"platform": "tpu", "devices": chips, "name": name, "chip_config": chip_config,
            "topology": f"{prefix}:{'x'.join(map(str, shape))}", "hbm_gib": hbm}


def offline_tpu_environment(accelerator_type: str) -> None:
    """What libtpu would read from a TPU VM's metadata server, set for this host alone: without
    them it prints a screen of initialisation errors when it loads, although an ahead-of-time
    compile needs none of them. A value already in the environment wins."""
    os.environ["TPU_SKIP_MDS_QUERY"] = "1"  # no metadata server here: don't look for one
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)  # e.g. v5p-32
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # no chip is opened: another libtpu process (a training run, a second compile) may hold the
    # chips' lockfile without this compile needing to wait for it or fail on it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: dict):
    """The devices to compile for: a TPU topology description, or this process's CPU devices."""
    import jax
    if topology["platform"] == "cpu":
        if jax.device_count() < topology["devices"]:
            raise ConfigError(f"--topology {topology['name']}: this process has "
                              f"{jax.device_count()} CPU devices (set XLA_FLAGS="
                              f"--xla_force_host_platform_device_count before JAX starts)")
        return jax.devices()[:topology["devices"]]
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"--topology {topology['name']} needs the libtpu package (pip install "
                          "-e '.[tpu]', or 'jax[tpu]'); without it use "
                          f"--topology cpu-{topology['devices']} for a simulated CPU mesh")
    from jax.experimental.topologies import get_topology_desc
    offline_tpu_environment(topology["name"])
    dims = [int(d) for d in topology["topology"].split(":")[1].split("x")]
    host = (2, 2, 1) if len(dims) == 3 else tuple(min(2, d) for d in dims)
    desc = get_topology_desc(platform="tpu", topology_name=topology["topology"],
                             chip_config_name=topology["chip_config"],
                             chips_per_host_bounds=host, num_slices=1)
    return desc.devices


def compile_train_step(config, topology: dict) -> dict:
    """Lowers and compiles one train step of `config` on `topology`; returns memory and FLOPs."""
    import jax
    from foundations.parallel.mesh import make_mesh
    from foundations.train.trainer import Trainer

    devices = topology_devices(topology)
    mesh = make_mesh(config.mesh, devices)
    if mesh.size != len(devices):
        raise ConfigError(f"mesh {dict(mesh.shape)} uses {mesh.size} of the {len(devices)} "
                          f"devices of {topology['name']}; make the mesh sizes multiply to "
                          f"{len(devices)} (or set one to -1)")
    trainer = Trainer(config, mesh)
    tc = config.train
    lowered = trainer.lower_train_step()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise ConfigError(f"does not fit on {topology['name']} with mesh {dict(mesh.shape)}: "
                          f"{str(e).splitlines()[0]}") from None
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    per_device = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                  - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    tokens = tc.batch_size * config.data.seq_len
    report = {
        "topology": topology["name"], "platform": topology["platform"],
        "devices": len(devices), "mesh": dict(mesh.shape),
        "parameters": trainer.counts.total,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "bytes_per_device": per_device,
        "flops_per_device": float(cost.get("flops", 0.0)),
        "model_flops_per_step": trainer.flops_per_token * tokens,
    }
    if "hbm_gib" in topology:
        report["hbm_gib"] = topology["hbm_gib"]
        report["fits"] = per_device <= topology["hbm_gib"] * 2**30
    return report


def format_report(r: dict) -> str:
    gib = 2**30
    lines = [
        f"{r['topology']} ({r['platform']}, {r['devices']} devices), mesh {r['mesh']}, "
        f"{r['parameters'] / 1e6:.1f}M parameters",
        f"memory per device: {r['bytes_per_device'] / gib:.2f} GiB (arguments "
        f"{r['argument_bytes'] / gib:.2f}, outputs {r['output_bytes'] / gib:.2f}, aliased "
        f"{r['alias_bytes'] / gib:.2f}, temporaries {r['temp_bytes'] / gib:.2f})",
        f"FLOPs per step: {r['model_flops_per_step']:.3e} model FLOPs in total (this family's "
        f"count, foundations/flops.py); XLA's count {r['flops_per_device']:.3e} per device sees a "
        "scanned layer once",
    ]
    if "fits" in r:
        lines.append(f"{'fits' if r['fits'] else 'does NOT fit'} in {r['hbm_gib']} GiB of HBM "
                     "per chip")
    return "\n".join(lines)


def _compile_command(args) -> None:
    """CLI: sets up the devices before JAX starts, then compiles and prints the report."""
    from foundations.config import load_config
    topology = parse_topology(args.topology)
    config = load_config(args.config, args.overrides)
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if topology["platform"] == "cpu":
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                       f"platform_device_count={topology['devices']}").strip()
    report = compile_train_step(config, topology)
    print(json.dumps(report) if args.json else format_report(report))


def add_compile_parser(commands) -> None:
    p = commands.add_parser("compile", help="compile the train step for a TPU topology or a "
                                            "simulated CPU mesh; report memory and FLOPs")
    p.add_argument("config", help="YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. mesh.fsdp=-1")
    p.add_argument("--topology", required=True, help="v5p-128, v4-32, v5e-16, v6e-64, cpu-8, ...")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_compile_command)

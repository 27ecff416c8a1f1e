"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from the config or environment.

Every process runs the same `foundations train` command. Explicit settings (the `distributed`
config section, else $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID) win; otherwise
Cloud TPU VM slices and SLURM jobs with several tasks are detected and JAX finds the peers itself.
One process needs no initialization. After it, each process feeds only its own rows of each batch
(data/pipeline.py), process 0 alone writes logs and metrics, and Orbax writes checkpoints from all
processes together. JAX's coordination service exchanges heartbeats: when a process dies, the
others stop with an error after `heartbeat_timeout_s` instead of waiting in a collective forever.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import jax

from foundations.config import ConfigError, DistributedConfig


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer") from None


def explicit_settings(cfg: DistributedConfig) -> tuple[str, int, int] | None:
    """(coordinator, process count, process id) from the config, else the environment; None when
    neither names more than one process."""
    address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    count = cfg.num_processes or _env_int("JAX_NUM_PROCESSES") or 0
    index = cfg.process_id if cfg.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    if count <= 1 and not address:
        return None
    if not address or count < 1 or index is None:
        raise ConfigError("distributed: set all of distributed.coordinator_address, "
                          "distributed.num_processes and distributed.process_id (or "
                          "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID); got "
                          f"{address or '-'}, {count or '-'}, {'-' if index is None else index}")
    if ":" not in address:
        raise ConfigError(f"distributed.coordinator_address={address!r}: expected host:port")
    if not 0 <= index < count:
        raise ConfigError(f"distributed.process_id={index} is not in [0, {count})")
    return address, count, index


def detected_cluster() -> str | None:
    """'tpu' on a Cloud TPU VM, 'slurm' inside a SLURM step with several tasks, else None."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    has_chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    if has_chips and importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return None


def initialize(cfg: DistributedConfig) -> bool:
    """Joins the other processes of this run (once, before any other use of JAX); returns whether
    the run is multi-process."""
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    timeouts = dict(initialization_timeout=cfg.init_timeout_s,
                    heartbeat_timeout_seconds=cfg.heartbeat_timeout_s)
    settings = explicit_settings(cfg)
    if settings is not None:
        address, count, index = settings
        jax.distributed.initialize(address, count, index, **timeouts)
    elif cfg.auto and detected_cluster():
        jax.distributed.initialize(**timeouts)  # JAX reads the TPU metadata / SLURM variables
    else:
        return False
    return jax.process_count() > 1


def describe() -> str:
    """One line about this process: 'process 1 of 2, 4 local devices of 8'."""
    return (f"process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} local devices of {jax.device_count()}")

"""Orbax checkpoints of the whole training state plus the grain iterator position.

One `CheckpointManager` per run directory: asynchronous saves every N steps, the last K kept.
Restoring takes an abstract state whose leaves carry the *target* shardings, so a checkpoint
written on one mesh shape loads onto another.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from foundations.config import CheckpointConfig


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back."""


def checkpoint_manager(run_dir: str | Path, cfg: CheckpointConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True,
                                           enable_async_checkpointing=cfg.async_save)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**items))


def abstract_like(state, shardings):
    """ShapeDtypeStructs of `state` carrying `shardings`: the target layout of a restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
    """Loads `step` onto the shardings in `abstract_state`; moves `data_iterator` to its position."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
        path = Path(manager.directory) / str(step)
        raise CheckpointError(f"cannot restore checkpoint {path}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return restored["state"]

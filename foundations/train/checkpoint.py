"""Orbax checkpoints of the whole training state plus the grain iterator position.

One `CheckpointManager` per run directory: asynchronous saves every N steps, the last K kept.
Restoring takes an abstract state whose leaves carry the *target* shardings, so a checkpoint
written on one mesh shape loads onto another.

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once it is
complete, so a process killed mid-save (even `kill -9`) leaves the last complete step as
`latest_step()`; `set_aside_incomplete` moves the unfinished directory out of the way.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grain
import orbax.checkpoint as ocp

from foundations.config import CheckpointConfig, CheckpointError, ConfigError
from foundations.run import quiet_failures, short_cause


def checkpoint_manager(run_dir: str | Path, cfg: CheckpointConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, create=True,
                                           enable_async_checkpointing=cfg.async_save)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options)


INCOMPLETE = "incomplete_checkpoints"  # a run directory's folder for saves that never finished


def set_aside_incomplete(run_dir: str | Path) -> list[Path]:
    """Moves the unfinished saves in run_dir/checkpoints (left by a process killed while saving)
    to run_dir/incomplete_checkpoints, so that nothing is deleted; returns their new paths."""
    checkpoints, aside = Path(run_dir) / "checkpoints", Path(run_dir) / INCOMPLETE
    moved = []
    for path in sorted(checkpoints.glob(f"*{ocp.path.atomicity_types.TMP_DIR_SUFFIX}*")):
        target = aside / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(exist_ok=True)
        shutil.move(path, target)
        moved.append(target)
    return moved


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**items))


def restore_latest(run_dir: str | Path, cfg: CheckpointConfig, abstract_state):
    """The run's newest checkpoint on the shardings in `abstract_state`; a one-line error if
    it has none."""
    manager = checkpoint_manager(run_dir, cfg)
    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"{Path(run_dir) / 'checkpoints'} holds no checkpoint")
    state = restore(manager, step, abstract_state)
    manager.close()
    return state


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
    """Loads `step` onto the shardings in `abstract_state`; moves `data_iterator` to its position."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    path = Path(manager.directory) / str(step)
    try:
        with quiet_failures():
            restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; name the checkpoint and the cause
        if "not compatible with the stored shape" in str(e):  # intact, but another model's
            raise CheckpointError(f"checkpoint {path} was written by a model of other shapes "
                                  f"({short_cause(e)}); it is left in place") from e
        earlier = [s for s in manager.all_steps() if s < step]
        advice = (f"move it aside to resume from step {max(earlier)}" if earlier
                  else "move it aside to start afresh")
        raise CheckpointError(f"cannot restore checkpoint {path} ({short_cause(e)}); it is left "
                              f"in place: {advice}") from e
    return restored["state"]

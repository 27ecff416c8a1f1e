"""Orbax checkpoints of the whole training state plus the grain iterator position.

One `CheckpointManager` per run directory: asynchronous saves every N steps, the last K kept.
Restoring takes an abstract state whose leaves carry the *target* shardings, so a checkpoint
written on one mesh shape loads onto another.

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once it is
complete, so a process killed mid-save (even `kill -9`) leaves the last complete step as
`latest_step()`; `set_aside_incomplete` moves the unfinished directory out of the way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grain
import orbax.checkpoint as ocp

from foundations.config import CheckpointConfig, CheckpointError, ConfigError


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
        with _quiet_failures():
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


@contextlib.contextmanager
def _quiet_failures(settle_s: float = 0.3, limit_s: float = 5.0):
    """Holds back what is written to stderr (fd 2) inside the block; replays it if the block
    succeeds. A damaged checkpoint fails many of orbax's parallel reads, and each failing read
    prints a page of traceback from a background thread (asyncio's log, tensorstore's callbacks
    into a closed event loop), burying the one error that matters. On failure this waits until
    those threads fall silent (settle_s without output, limit_s at most), then drops their
    output; the exception itself propagates."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            deadline, size = time.monotonic() + limit_s, -1
            while size != os.fstat(held.fileno()).st_size and time.monotonic() < deadline:
                size = os.fstat(held.fileno()).st_size
                time.sleep(settle_s)
            raise
        else:
            sys.stderr.flush()
            held.seek(0)
            os.write(saved, held.read())
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def short_cause(error: Exception, limit: int = 240) -> str:
    """The first line of an orbax/tensorstore error without the JSON spec it appends."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = text.split(" [tensorstore_spec")[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(error).__name__}: {text}"

"""`train.init_from`: start a new run from the parameters of another run's checkpoint.

Only the parameters are read (orbax partial restore): the new run keeps its fresh optimizer
state, step 0 and its own schedule. They are restored straight onto the new run's shardings, so
the other run's mesh does not matter. Every parameter must exist in both runs with the same
shape: settings that keep the shapes (a longer `max_seq_len` with RoPE, rope scaling, dropout,
an objective with the same heads) are fine; anything else is refused naming the first parameter
that differs.
"""

from __future__ import annotations

from pathlib import Path

import jax

from foundations.config import ConfigError
from foundations.run import (CHECKPOINTS, checkpoint_steps, has_head, restore_model_params,
                             stored_params)


def _shapes(tree) -> dict[str, tuple]:
    """{'blocks/attention/query/kernel': shape, ...} of a tree of arrays or array metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in flat}


def check_same_shapes(stored: dict[str, tuple], wanted: dict[str, tuple], source: str) -> None:
    """A ConfigError naming the first parameter that is missing, extra or of another shape."""
    for name, shape in wanted.items():
        if name not in stored:
            raise ConfigError(f"train.init_from: {source} has no parameter {name} {shape} "
                              "(a model of another architecture)")
        if stored[name] != shape:
            raise ConfigError(f"train.init_from: parameter {name} is {stored[name]} in {source} "
                              f"but {shape} in this run")
    extra = sorted(set(stored) - set(wanted))
    if extra:
        raise ConfigError(f"train.init_from: {source} has parameter {extra[0]} {stored[extra[0]]}"
                          " that this run's model lacks (a model of another architecture)")


def params_from_run(run_dir: str | Path, step: int | None, trainer, wanted=None):
    """The parameters of `run_dir`'s checkpoint `step` (None: its latest), laid out on
    `trainer`'s parameter shardings (or on those of `wanted`, a tree of ShapeDtypeStructs)."""
    run_dir = Path(run_dir)
    directory = run_dir.absolute() / CHECKPOINTS
    if not directory.is_dir():
        raise ConfigError(f"train.init_from: {run_dir} is not a run directory with checkpoints")
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ConfigError(f"train.init_from: {directory} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ConfigError(f"train.init_from: {run_dir} has no checkpoint of step {step} "
                          f"(it has {', '.join(map(str, sorted(steps)))})")
    wanted = trainer.abstract_state["params"] if wanted is None else wanted
    stored = stored_params(run_dir, step)  # a run with a value head starts others from its model
    check_same_shapes(_shapes(stored["model"] if has_head(stored, wanted) else stored),
                      _shapes(wanted), f"{directory / str(step)}")
    return restore_model_params(run_dir, step, wanted)

"""A run directory, read and written in one place: config.yaml, tokenizer/, checkpoints/, .lock.

`load_run` is how eval, generate, convert and prompting read a run: the parameters only (an
orbax partial restore of the saved training state), so no optimizer state is built or read.
`write_run` writes a run that holds parameters only (convert, merge). A directory has one
writer at a time: `writing(run_dir)` holds an fcntl lock on RUN/.lock naming its holder, and a
second writer is refused before it writes anything. `check_resumable` is the policy for which
settings a resumed run may change (a moved tokenizer is compared by tokenizers.same_tokenizer,
as prepared shards are). Resuming training itself lives in train/; this module imports nothing
from train/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from foundations.config import (CheckpointError, Config, ConfigError, flat_settings,
                                load_config, replace, save_config)
from foundations.models import adapters
from foundations.tokenizers import same_tokenizer

CONFIG = "config.yaml"
RUN_TOKENIZER = "tokenizer"  # a run directory's copy of a trained tokenizer
LOCK = ".lock"               # held by the run directory's one writer
CHECKPOINTS = "checkpoints"


# ------------------------------------------------------------------ the config and tokenizer

def read_config(run_dir: str | Path, overrides=()) -> Config:
    """The run's config.yaml (with `overrides`); a tokenizer path that does not resolve from
    here is replaced by the run's own copy of it."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG})")
    config = load_config(run_dir / CONFIG, list(overrides))
    kept = run_dir / RUN_TOKENIZER
    if config.data.tokenizer != "byte" and not Path(config.data.tokenizer).is_dir() \
            and kept.is_dir():
        config = replace(config, {"data.tokenizer": str(kept)})
    return config


def context_length(config: Config) -> int:
    """The longest sequence a run's model reads at once: its training window (and for learned
    positions, no more than the table)."""
    if config.model.positions.kind == "learned":
        return min(config.data.seq_len, config.model.max_seq_len)
    return config.data.seq_len


def keep_tokenizer(config: Config, run_dir: Path) -> None:
    """Copies a trained tokenizer into the run directory, so that eval and generate find it
    wherever they run from (config.yaml keeps the path as it was given)."""
    spec = config.data.tokenizer
    if spec != "byte" and not (Path(run_dir) / RUN_TOKENIZER).exists():
        shutil.copytree(spec, Path(run_dir) / RUN_TOKENIZER)


# ------------------------------------------------------------------ resuming: what may change

# Settings a resumed run may change: they do not alter what the checkpoint's arrays mean.
RESUMABLE_MODEL_KEYS = ("model.attention_impl", "model.dtype", "model.remat", "model.dropout",
                        "model.scan_unroll", "model.moe.dispatch")


def changed_settings(saved: Config, config: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) for every setting in which `config` differs from
    `saved` (a run's config.yaml, loaded with load_config)."""
    old, new = flat_settings(saved), flat_settings(config)
    return [(key, old.get(key), value) for key, value in new.items() if old.get(key) != value]


def incompatible_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The changes that make a run's checkpoints meaningless for the new config: the model's
    shape and family, the tokenizer and the objective."""
    def refused(name: str) -> bool:
        return ((name.startswith("model.") and name not in RESUMABLE_MODEL_KEYS)
                or name in ("data.tokenizer", "objective.kind"))
    return [change for change in changes if refused(change[0])]


def check_resumable(config: Config, run_dir: Path) -> list:
    """The settings that changed since the run in run_dir was started (to log); a ConfigError
    when a change (model shape or family, tokenizer, objective) makes its checkpoints unusable."""
    saved_file = Path(run_dir) / CONFIG
    if not saved_file.is_file():
        return []
    changes = [c for c in changed_settings(load_config(saved_file), config)
               if not (c[0] == "data.tokenizer"   # the same tokenizer, moved
                       and same_tokenizer(c[2], Path(run_dir) / RUN_TOKENIZER))]
    refused = incompatible_changes(changes)
    if refused:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in refused)
        raise ConfigError(f"{run_dir} holds checkpoints of another model ({listed}); use a new "
                          "--run-dir, or the run's own settings (its config.yaml) to resume it")
    return changes


# ------------------------------------------------------------------ parameters

def abstract_params(config: Config, tokenizer, mesh, specs: bool = False):
    """ShapeDtypeStructs of the model's parameters, sharded on `mesh` by their logical axes
    (what the model's init would make, computed without making it); with `specs`, also their
    logical PartitionSpecs."""
    from foundations.parallel.mesh import logical_shardings
    boxed = jax.eval_shape(lambda rng: _init(config, tokenizer, rng), jax.random.PRNGKey(0))
    logical = nn.get_partition_spec(boxed)
    shardings = logical_shardings(logical, mesh)
    wanted = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
    return (wanted, logical) if specs else wanted


def _init(config: Config, tokenizer, rng):
    """The model's boxed parameters as training initialises them from `rng` (train/trainer.py
    _init_params: parameter values do not depend on the dummy batch's rows)."""
    from foundations.models.families import build_model
    from foundations.objectives import make_objective
    objective = make_objective(config, tokenizer)
    dummy = objective.model_args(objective.prepare(
        np.zeros((1, config.data.seq_len + 1), np.int32), 0))
    return build_model(config).init({"params": rng, "sample": rng}, *dummy)["params"]


def _manager(run_dir: Path, create: bool = False) -> ocp.CheckpointManager:
    """A manager that reads the saved state as a tree (so parts of it suffice)."""
    import grain
    options = ocp.CheckpointManagerOptions(create=create)
    handlers = {"state": ocp.PyTreeCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(run_dir.absolute() / CHECKPOINTS, options=options,
                                 item_handlers=handlers)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the run's complete checkpoints, oldest first."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    with _manager(Path(run_dir)) as manager:
        return sorted(manager.all_steps())


@contextlib.contextmanager
def _reading(run_dir: Path, step: int):
    """Guards a read of checkpoint `step`: orbax's failures (a damaged checkpoint fails in the
    metadata read or in the array reads, with many exception types) become one CheckpointError
    naming the checkpoint, the cause and a way forward; the checkpoint is left in place."""
    try:
        with quiet_failures():
            yield
    except Exception as e:
        earlier = [n for n in checkpoint_steps(run_dir) if n < step]
        advice = (f"move it aside to resume from step {max(earlier)}" if earlier
                  else "move it aside to start afresh")
        raise CheckpointError(f"cannot restore checkpoint {run_dir / CHECKPOINTS / str(step)} "
                              f"({short_cause(e)}); it is left in place: {advice}") from e


def stored_params(run_dir: str | Path, step: int):
    """The metadata (shapes, dtypes) of the parameters in checkpoint `step`."""
    with _reading(Path(run_dir), step), _manager(Path(run_dir)) as manager:
        return manager.item_metadata(step)["state"]["params"]


def has_head(stored, wanted) -> bool:
    """Whether a checkpoint's parameters hold a head beside the model ({"model", "head"}: the
    reward model's, PPO's value head) where `wanted` is the model's tree alone."""
    return set(stored) == {"model", "head"} and "model" not in wanted


def restore_model_params(run_dir: str | Path, step: int, wanted):
    """restore_params of the model alone (`wanted`: the model's tree), whatever head the run
    trained beside it."""
    if has_head(stored_params(run_dir, step), wanted):
        return restore_params(run_dir, step, {"model": wanted})["model"]
    return restore_params(run_dir, step, wanted)


def restore_params(run_dir: str | Path, step: int, wanted):
    """The parameters of checkpoint `step`, restored onto the shardings of `wanted` (a tree of
    ShapeDtypeStructs); nothing else of the saved state is read."""
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), wanted)
    with _reading(Path(run_dir), step), _manager(Path(run_dir)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": wanted},
                                         restore_args={"params": restore_args},
                                         partial_restore=True)))
    params = restored["state"]["params"]
    # a partial restore leaves what the checkpoint lacks as the ShapeDtypeStructs it was given
    missing = [adapters.path_name(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(params)[0]
               if isinstance(leaf, jax.ShapeDtypeStruct)]
    if missing:
        raise CheckpointError(f"checkpoint {Path(run_dir) / CHECKPOINTS / str(step)} holds no "
                              f"parameter {missing[0]} (of {len(missing)} missing): it is not "
                              "a checkpoint of this model")
    return params


@dataclasses.dataclass
class Run:
    """A run's latest model as eval, generate, convert and prompting use it: for an adapter run
    (LoRA, prompt or prefix tuning) the base with its adapters applied (`load_run`)."""
    directory: Path
    config: Config
    tokenizer: Any
    model: nn.Module   # the plain model (any row count; what init and generation use)
    params: Any
    step: int
    mesh: Any
    method: str = "full"   # models/adapters.py method: how the run was tuned


SINGLE_DEVICE = {f"mesh.{axis}": 1 for axis in
                 ("data", "fsdp", "tensor", "stage", "expert", "microbatches")}


def load_run(run_dir: str | Path, overrides=(), single_device: bool = True) -> Run:
    """The latest checkpoint's parameters of a finished or running run (no optimizer state, no
    training data: it works wherever the run's text files are).

    An adapter run's checkpoint holds its adapters only: they are applied to its base (the
    train.init_from run's parameters, or the random init it started from) as post-training
    applies them (models/adapters.py): LoRA folded into the kernels, a soft prompt as the
    model's extra embedding rows (a Decoder with soft_prompt=P, which prepends it), prefixes
    beside the attention kernels. By default they are restored onto one device, whatever mesh
    trained it; pass `single_device=False` (and mesh.* overrides) to restore onto a mesh of all
    devices."""
    from foundations.tokenizers import configured_tokenizer
    from foundations.models.families import build_model
    from foundations.parallel.mesh import make_mesh
    run_dir = Path(run_dir)
    config = read_config(run_dir, overrides)
    if single_device:
        config = replace(config, SINGLE_DEVICE)
    tokenizer = configured_tokenizer(config.data.tokenizer)
    mesh = make_mesh(config.mesh, jax.devices()[:1] if single_device else None)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ConfigError(f"{run_dir / CHECKPOINTS} holds no checkpoint")
    how = adapters.method(config)
    if how == "full":
        params = restore_model_params(run_dir, steps[-1],
                                      abstract_params(config, tokenizer, mesh))
        return Run(run_dir, config, tokenizer, build_model(config), params, steps[-1], mesh)
    model, params = _adapted(run_dir, steps[-1], how, config, tokenizer, mesh)
    return Run(run_dir, config, tokenizer, model, params, steps[-1], mesh, how)


def _adapted(run_dir: Path, step: int, how: str, config: Config, tokenizer, mesh):
    """(model, parameters) of adapter run `run_dir`'s checkpoint `step`: its base with the
    adapters of method `how` applied (the checkpoint's params[how])."""
    from foundations.models.families import build_model
    from foundations.parallel.mesh import replicated
    wanted, specs = abstract_params(config, tokenizer, mesh, specs=True)
    key = how
    stored = stored_params(run_dir, step)
    if key not in stored:
        raise CheckpointError(f"{run_dir / CHECKPOINTS / str(step)} holds no {key} adapters, "
                              f"though its config.yaml sets {adapters.SETTINGS[how]}")
    tuned = restore_params(run_dir, step, {key: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated(mesh)),
        stored[key])})[key]
    base = base_params(run_dir, config, tokenizer, wanted)
    model = build_model(config)
    if how == "lora":
        lora = config.lora
        targets = adapters.lora_targets(specs, lora.targets)
        return model, adapters.apply_lora(base, tuned, targets, lora.alpha / lora.rank)
    if how == "prompt":
        p = config.prompt_tuning.num_tokens
        model = build_model(replace(config, {"model.vocab_size": config.model.vocab_size + p}))
        return model.clone(soft_prompt=p), adapters.with_soft_prompt(base, tuned)
    return model, adapters.with_prefix(base, tuned)


def base_params(run_dir: Path, config: Config, tokenizer, wanted):
    """The frozen base an adapter run trained on: its train.init_from run's parameters (at
    train.init_step, else its latest), or without one the random init of train.seed that
    post-training drew (post/trainer.py _load_base)."""
    source = config.train.init_from
    if not source:
        init = jax.jit(lambda rng: nn.unbox(_init(config, tokenizer, rng)),
                       out_shardings=jax.tree.map(lambda x: x.sharding, wanted))
        return init(jax.random.PRNGKey(config.train.seed))
    steps = checkpoint_steps(source)
    step = config.train.init_step if config.train.init_step is not None else \
        (max(steps) if steps else None)
    if step not in steps:
        raise ConfigError(f"{run_dir} was tuned on train.init_from={source}, which holds no "
                          f"checkpoint {'' if step is None else step} (run it from where that "
                          "path resolves, or set train.init_from=PATH)")
    return restore_model_params(source, step, wanted)


def write_run(run_dir: str | Path, config: Config, params, step: int = 0) -> Path:
    """Writes a run that holds parameters only: config.yaml, the tokenizer's copy and a
    checkpoint {step, params} that load_run and train.init_from read like any run's."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINTS).exists():
        raise ConfigError(f"{run_dir} already holds checkpoints; choose a new directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(run_dir.absolute() / CHECKPOINTS, options=options) as manager:
        state = {"step": jnp.asarray(step, jnp.int32), "params": params}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    save_config(config, run_dir / CONFIG)
    keep_tokenizer(config, run_dir)
    return run_dir


@contextlib.contextmanager
def quiet_failures(settle_s: float = 0.3, limit_s: float = 5.0):
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


# ------------------------------------------------------------------ one writer

class RunInUse(ConfigError):
    """Another live process writes this run directory."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since "
            f"{holder.get('since')}")


class RunLock:
    """An fcntl lock on RUN/.lock whose content names its holder (host, pid, start time)."""

    def __init__(self, run_dir: str | Path, log=print):
        self.path = Path(run_dir) / LOCK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not self._try_lock():
            holder = _holder(self.path)
            if not holder.get("pid") or holder.get("host") != socket.gethostname() \
                    or _alive(int(holder["pid"])):
                os.close(self.fd)
                raise RunInUse(f"run directory {run_dir} is in use by {_describe(holder)}")
            # a dead process's lock still held (by a child it forked): a fresh lock file
            os.close(self.fd)
            fresh = self.path.with_name(f"{LOCK}.{os.getpid()}")
            self.fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            if not self._try_lock():
                raise RunInUse(f"run directory {run_dir} is in use by {_describe(holder)}")
            os.replace(fresh, self.path)
            stale = holder
        else:
            stale = _holder(self.path)
        if stale:
            log(f"took over the lock of run directory {run_dir}: {_describe(stale)} is no "
                "longer running")
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "since": datetime.datetime.now().astimezone().isoformat(
                           timespec="seconds"),
                       "command": " ".join(sys.argv)}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.holder).encode(), 0)
        os.fsync(self.fd)

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def release(self) -> None:
        """Empties the lock file (a clean exit leaves no holder) and unlocks it."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def writing(run_dir: str | Path, log=print):
    """Holds run_dir's writer lock for the block (on process 0 only in a multi-host run); a
    RunInUse error naming the holder when another live process has it (on every process of a
    multi-host run, so that none goes on alone)."""
    lock, refused = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(run_dir, log)
        except RunInUse as e:
            refused = e
    if jax.process_count() > 1:   # every process takes part in the broadcast
        shared = _refusal_of_process_0(refused)
        refused = refused or shared
    if refused is not None:
        raise refused
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _refusal_of_process_0(refused: RunInUse | None, limit: int = 4096) -> RunInUse | None:
    """Process 0's refusal (its message, naming the holder), given to every process of a
    multi-host run as bytes in one broadcast, so that each exits with the same line."""
    from jax.experimental import multihost_utils
    text = np.zeros(limit, np.uint8)
    message = str(refused or "").encode()[:limit]
    text[:len(message)] = np.frombuffer(message, np.uint8)
    message = bytes(np.asarray(multihost_utils.broadcast_one_to_all(text))).rstrip(b"\0")
    return RunInUse(message.decode(errors="replace")) if message else None

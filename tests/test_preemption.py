"""Pre-emption and crashes with real processes: SIGTERM stops a run after a step with a checkpoint
and exit 0, `kill -9` during an asynchronous save loses only the steps since the last complete
checkpoint, two processes stop at the same step, and a diverging run stops naming the step.
A resumed run's losses equal those of one run straight through, bit for bit."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
import yaml

from foundations.config import load_config
from foundations.train.checkpoint import INCOMPLETE
from foundations.train.loop import train
from foundations.train.metrics import MetricsWriter, read_metrics
from foundations.train.preemption import StopSignals

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24


def write_config(path: Path, corpus: Path, **sections) -> Path:
    """A tiny run of STEPS steps, every step logged, checkpoints only at the end."""
    config = {
        "model": {"num_layers": 2, "d_model": 32, "num_heads": 4, "max_seq_len": 32},
        "data": {"seq_len": 32, "train_files": [str(corpus)], "val_fraction": 0.1},
        "train": {"batch_size": 8, "steps": STEPS, "log_every": 1, "eval_every": 0,
                  "eval_batches": 1, "sample_tokens": 0},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 0, "async_save": False},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
    }
    for section, values in sections.items():
        config[section].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def environment() -> dict:
    """This checkout first on the path; compiled steps shared with this process's cache."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def start_training(config: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "foundations.cli", "train", str(config),
               "--run-dir", str(run_dir), "--no-progress"]
    return subprocess.Popen(command, env=environment(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    """Waits for `proc` (killing its group if it overruns); returns its output."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text()


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.005)


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"loss"') if path.exists() else 0


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def saved_steps(run_dir: Path) -> list:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """The tiny run straight through, in this process: its config file and its losses."""
    config = write_config(tmp_path_factory.mktemp("config") / "tiny.yaml", corpus)
    run_dir = tmp_path_factory.mktemp("straight")
    train(load_config(config), run_dir, progress=False)
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return config, losses(run_dir)


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_exits_0_and_the_rerun_resumes_exactly(reference, tmp_path):
    config, straight = reference
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    proc = start_training(config, run_dir, log)
    wait_until(lambda: logged_steps(run_dir) >= 2, proc, log)
    proc.send_signal(signal.SIGTERM)
    output = finish(proc, log)
    assert proc.returncode == 0, output[-3000:]
    stopped = re.search(r"foundations train: stopped after step (\d+) \(SIGTERM\); checkpoint "
                        r"(\S+); run the same command again to resume", output)
    assert stopped, output[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < STEPS
    assert Path(stopped.group(2)) == run_dir / "checkpoints" / str(step)
    assert saved_steps(run_dir) == [step]  # checkpoint.every=0: only the stop wrote one
    assert max(losses(run_dir)) == step

    log = tmp_path / "second.log"
    output = finish(start_training(config, run_dir, log), log)
    assert f"resumed from {run_dir / 'checkpoints' / str(step)}" in output, output[-3000:]
    assert losses(run_dir) == straight


@pytest.mark.slow
def test_kill_9_during_an_async_save_resumes_from_the_last_complete_checkpoint(
        reference, corpus, tmp_path):
    _, straight = reference
    config = write_config(tmp_path / "async.yaml", corpus,
                          checkpoint={"every": 2, "async_save": True, "keep": 2})
    run_dir, log = tmp_path / "run", tmp_path / "first.log"
    checkpoints = run_dir / "checkpoints"

    def saving_after_a_complete_one():
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        return any(n.isdigit() for n in names) and any("tmp" in n for n in names)

    proc = start_training(config, run_dir, log)
    wait_until(saving_after_a_complete_one, proc, log)
    proc.send_signal(signal.SIGKILL)
    finish(proc, log)
    half_written = [p.name for p in checkpoints.iterdir() if not p.name.isdigit()]
    assert half_written, "the kill came after the save had finished"
    complete = saved_steps(run_dir)[-1]
    assert max(losses(run_dir)) > complete  # steps after the last checkpoint are lost ...

    log = tmp_path / "second.log"
    proc = start_training(config, run_dir, log)
    output = finish(proc, log)
    assert proc.returncode == 0, output[-3000:]
    assert "a save that never finished (the run was killed during it) moved to" in output
    assert f"resumed from {checkpoints / str(complete)}" in output, output[-3000:]
    assert losses(run_dir) == straight  # ... and trained again to the same losses
    kept = sorted(p.name.rsplit("-", 2)[0] for p in (run_dir / INCOMPLETE).iterdir())
    assert kept == sorted(half_written)  # set aside, not deleted


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(corpus, tmp_path):
    config = write_config(tmp_path / "two.yaml", corpus, mesh={"data": 4, "fsdp": 2})
    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    env = {**environment(), "PYTHON": sys.executable, "DEVICES": "4"}
    env.pop("XLA_FLAGS", None)  # the launcher sets the device count per process
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "multihost_local.sh"), "2",
                             str(config), "--run-dir", str(run_dir)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_until(lambda: logged_steps(run_dir) >= 2, proc, log, timeout=180)
    victim = int(re.search(r"\[launch\] process 1: pid (\d+)", log.read_text()).group(1))
    os.kill(victim, signal.SIGTERM)  # process 1 only: process 0 learns of it from the others
    output = finish(proc, log, timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "[launch] process 0 exited normally" in output
    assert "[launch] process 1 exited normally" in output
    found = re.findall(r"\[(\d)\] foundations train: stopped after step (\d+) \(([^)]*)\)",
                       output)
    stops = {process: (int(step), reason) for process, step, reason in found}
    assert sorted(stops) == ["0", "1"], output[-3000:]
    step = stops["1"][0]
    assert stops == {"1": (step, "SIGTERM"), "0": (step, "a signal to another process")}
    assert saved_steps(run_dir) == [step] and step < STEPS
    data_dir = run_dir / "checkpoints" / str(step) / "data"
    assert {p.name for p in data_dir.glob("process_*")} == {"process_0-of-2.json",
                                                            "process_1-of-2.json"}


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    MetricsWriter(tmp_path, resume_step=0).close()  # starting afresh: none of those steps stay
    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n')
    MetricsWriter(tmp_path, resume_step=1).close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 5.0}]


def signalled(stop: StopSignals, signum: int) -> bool:
    """Sends `signum` to this process; whether `stop` heard it (Python runs handlers soon after)."""
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5
    while stop.received is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return stop.agreed()


def test_signals_ask_to_stop_a_second_sigint_aborts_and_the_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stop:
        assert not stop.agreed()
        assert signalled(stop, signal.SIGTERM) and stop.reason == "SIGTERM"
        assert signalled(stop, signal.SIGINT) and stop.reason == "SIGTERM"  # the first one counts
    with pytest.raises(KeyboardInterrupt):
        with StopSignals() as stop:
            assert signalled(stop, signal.SIGINT) and stop.reason == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: abort
            time.sleep(5)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_diverging_run_stops_naming_the_step(tiny_config, tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf|-inf) at step 3; "
                                                 r"lower optimizer.lr"):
        train(tiny_config("optimizer.lr=1e9"), tmp_path, progress=False)

"""A run directory has one writer: RUN/.lock, tried with real processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from foundations.config import save_config
from foundations.run import LOCK, RunInUse, RunLock

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import os, sys, time
from foundations.run import RunLock
lock = RunLock(sys.argv[1])
if sys.argv[2] == "fork":   # the writer exits; a child it forked keeps the lock's descriptor
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    print("held", flush=True)
    os._exit(0)
print("held", flush=True)
time.sleep(120)
"""


def holder(run_dir: Path, mode: str = "sleep") -> subprocess.Popen:
    """A process that takes run_dir's lock through run.py and keeps it (mode "sleep"), or
    whose forked child keeps it after the process itself exits (mode "fork")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), mode],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_a_second_train_on_a_locked_run_exits_2_naming_the_holder(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text('{"step": 10, "loss": 3.0}\n')
    config_file = tmp_path / "tiny.yaml"
    save_config(tiny_config(), config_file)
    first = holder(run_dir)
    try:
        assert first.stdout.readline().strip() == "held"
        script = shutil.which("foundations") or str(Path(sys.executable).parent / "foundations")
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        second = subprocess.run([script, "train", str(config_file), "--run-dir", str(run_dir),
                                 "--no-progress"], capture_output=True, text=True, env=env,
                                timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"foundations train: error: run directory {run_dir} is in use by "
                               f"pid {first.pid} on host {socket.gethostname()} since 20")
    assert metrics.read_text() == '{"step": 10, "loss": 3.0}\n'
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK, "metrics.jsonl"]


def test_a_killed_writers_lock_is_taken_over_and_logged(tmp_path):
    first = holder(tmp_path)
    assert first.stdout.readline().strip() == "held"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == first.pid  # left behind
    messages = []
    lock = RunLock(tmp_path, log=messages.append)
    assert len(messages) == 1
    assert messages[0].startswith(f"took over the lock of run directory {tmp_path}: pid "
                                  f"{first.pid} on host {socket.gethostname()} since 20")
    assert messages[0].endswith("is no longer running")
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(RunInUse, match=f"in use by pid {os.getpid()} "):
        RunLock(tmp_path)   # held: a second writer, even in the same process, is refused
    lock.release()
    messages.clear()
    RunLock(tmp_path, log=messages.append).release()   # released cleanly: nothing to take over
    assert messages == []


def test_a_dead_writers_lock_still_held_by_its_child_is_taken_over(tmp_path):
    first = holder(tmp_path, "fork")
    child = int(first.stdout.readline())
    try:
        assert first.stdout.readline().strip() == "held"
        first.wait()   # the writer is gone; its forked child still holds the descriptor
        messages = []
        lock = RunLock(tmp_path, log=messages.append)
        assert len(messages) == 1 and f"pid {first.pid} on host" in messages[0]
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)

"""Multi-host training with real processes: 2 processes x 4 CPU devices (gloo) reach the same
losses as 1 process x 8 devices; when one process dies the other stops within a bounded time."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from foundations.config import ConfigError, DistributedConfig, load_config
from foundations.parallel.distributed import explicit_settings
from foundations.train.loop import train
from foundations.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "multihost_local.sh"


def write_config(path: Path, corpus: Path, steps: int) -> Path:
    config = {
        "model": {"num_layers": 2, "d_model": 32, "num_heads": 4, "max_seq_len": 32},
        "data": {"seq_len": 32, "train_files": [str(corpus)]},
        "train": {"batch_size": 8, "steps": steps, "log_every": 1, "eval_every": 0,
                  "eval_batches": 1, "sample_tokens": 0},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 0, "async_save": False},
        "mesh": {"data": 4, "fsdp": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def launch(log: Path, num_processes: int, config: Path, *args: str) -> subprocess.Popen:
    """Starts the launcher in its own session, its output going to `log`."""
    env = {**os.environ, "PYTHON": sys.executable, "DEVICES": "4", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("XLA_FLAGS", None)  # the launcher sets the device count per process
    return subprocess.Popen(["bash", str(LAUNCH), str(num_processes), str(config), *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_two_processes_reach_the_same_loss_as_one(corpus, tmp_path):
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=3)
    log = tmp_path / "launch.log"
    proc = launch(log, 2, config_file, "--run-dir", str(tmp_path / "two"))
    try:  # meanwhile the reference: this process, 8 devices
        train(load_config(config_file), tmp_path / "one", progress=False)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "[1] process 1 of 2, 4 local devices of 8" in output
    two = [r for r in read_metrics(tmp_path / "two") if "loss" in r]
    one = [r for r in read_metrics(tmp_path / "one") if "loss" in r]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)
    # one writer of logs; the checkpoint holds each process's data-iterator position
    assert "[1] step 3: val_loss" not in output and "[0] step 3: val_loss" in output
    data_dir = tmp_path / "two" / "checkpoints" / "3" / "data"
    assert {p.name for p in data_dir.glob("process_*")} == {"process_0-of-2.json",
                                                            "process_1-of-2.json"}


def test_a_dead_process_stops_the_others(corpus, tmp_path):
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=100_000)
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    proc = launch(log, 2, config_file, "--run-dir", str(run_dir),
                  "distributed.heartbeat_timeout_s=5")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:  # until training starts
            if "[0] model:" in log.read_text():
                break
            time.sleep(0.5)
        output = log.read_text()
        assert "[0] model:" in output, output[-3000:]
        victim = int(re.search(r"\[launch\] process 1: pid (\d+)", output).group(1))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=90)
        waited = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode != 0
    assert waited < 60, f"the surviving process took {waited:.0f}s to stop"
    assert "another task died" in output and "stopped sending heartbeats" in output
    assert "[launch] process 0 failed" in output and "[launch] process 1 failed" in output


def test_distributed_settings_from_config_and_environment(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert explicit_settings(DistributedConfig()) is None
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert explicit_settings(DistributedConfig()) == ("10.0.0.2:1234", 4, 3)
    assert explicit_settings(DistributedConfig(process_id=0)) == ("10.0.0.2:1234", 4, 0)
    monkeypatch.setenv("JAX_PROCESS_ID", "4")
    with pytest.raises(ConfigError, match=r"distributed.process_id=4 is not in \[0, 4\)"):
        explicit_settings(DistributedConfig())
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ConfigError, match="set all of distributed.coordinator_address"):
        explicit_settings(DistributedConfig())
    cfg = load_config(None, ["distributed.coordinator_address=host", "distributed.num_processes=2",
                             "distributed.process_id=0"])
    with pytest.raises(ConfigError, match="expected host:port"):
        explicit_settings(cfg.distributed)

"""Multi-host training with real processes: 2 processes x 4 CPU devices (gloo) reach the same
losses as 1 process x 8 devices, on the whole mesh or a smaller one; a mesh that cannot split over
the processes is one line from each; when one process dies the other stops within a bounded
time; process 0 alone holds the run directory's lock, and a second run on it is refused by
every process."""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from jax.sharding import Mesh

from foundations.config import ConfigError, DistributedConfig, MeshConfig, load_config
from foundations.parallel.distributed import explicit_settings
from foundations.parallel.mesh import MESH_AXES, feeds_own_rows, make_mesh
from foundations.run import LOCK
from foundations.train.loop import train
from foundations.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "multihost_local.sh"


def write_config(path: Path, corpus: Path, steps: int, mesh: dict | None = None) -> Path:
    config = {
        "model": {"num_layers": 2, "d_model": 32, "num_heads": 4, "max_seq_len": 32},
        "data": {"seq_len": 32, "train_files": [str(corpus)]},
        "train": {"batch_size": 8, "steps": steps, "log_every": 1, "eval_every": 0,
                  "eval_batches": 1, "sample_tokens": 0},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 0, "async_save": False},
        "mesh": mesh or {"data": 4, "fsdp": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def launch(log: Path, num_processes: int, config: Path, *args: str,
           command: str = "train") -> subprocess.Popen:
    """Starts the launcher in its own session, its output going to `log`."""
    env = {**os.environ, "PYTHON": sys.executable, "DEVICES": "4", "PYTHONUNBUFFERED": "1",
           "COMMAND": command,
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("XLA_FLAGS", None)  # the launcher sets the device count per process
    return subprocess.Popen(["bash", str(LAUNCH), str(num_processes), str(config), *args],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_two(tmp_path: Path, config: Path, *args: str) -> subprocess.Popen:
    return launch(tmp_path / "launch.log", 2, config, *args)


def wait(proc: subprocess.Popen, tmp_path: Path, timeout: int = 420) -> tuple[int, str]:
    """Waits for the launcher (killing it after `timeout` s); (exit status, its output)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, (tmp_path / "launch.log").read_text()


def logged_losses(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: 3 steps in this process on 8 devices (data 4 x fsdp 2), trained on the
    first call (made while a launcher runs, so the two share the time) and kept; its metrics."""
    @functools.cache
    def losses() -> list[dict]:
        tmp = tmp_path_factory.mktemp("one_process")
        train(load_config(write_config(tmp / "tiny.yaml", corpus, steps=3)), tmp / "run",
              progress=False)
        return logged_losses(tmp / "run")
    return losses


def assert_same_losses(one: list[dict], two: list[dict]) -> None:
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)


@pytest.mark.slow  # real processes
def test_two_processes_reach_the_same_loss_as_one(corpus, tmp_path, one_process):
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=3)
    proc = start_two(tmp_path, config_file, "--run-dir", str(tmp_path / "two"))
    one = one_process()
    status, output = wait(proc, tmp_path)
    assert status == 0, output[-3000:]
    assert "[1] process 1 of 2, 4 local devices of 8" in output
    assert_same_losses(one, logged_losses(tmp_path / "two"))
    # one writer of logs; the checkpoint holds each process's data-iterator position
    assert "[1] step 3: val_loss" not in output and "[0] step 3: val_loss" in output
    data_dir = tmp_path / "two" / "checkpoints" / "3" / "data"
    assert {p.name for p in data_dir.glob("process_*")} == {"process_0-of-2.json",
                                                            "process_1-of-2.json"}


@pytest.mark.slow  # real processes
def test_sft_on_two_processes_equals_one(corpus, tmp_path):
    """Post-training commands start jax.distributed as `train` does: the same SFT losses."""
    from foundations.post.stages import Stage
    from foundations.post.synthetic import write_addition
    data = write_addition(tmp_path / "addition", count=64, seed=0)
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=3)
    sft = [f"sft.train_file={data['sft']}", "train.eval_batches=1"]
    proc = launch(tmp_path / "launch.log", 2, config_file, *sft, "--run-dir",
                  str(tmp_path / "two"), command="sft")
    train(load_config(config_file, sft), tmp_path / "one", progress=False,
          stage=Stage("sft", log=lambda _: None))
    status, output = wait(proc, tmp_path)
    assert status == 0, output[-3000:]
    assert "[1] process 1 of 2, 4 local devices of 8" in output
    assert_same_losses(logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two"))


@pytest.mark.slow  # real processes
def test_a_smaller_mesh_takes_devices_from_every_process(corpus, tmp_path, one_process):
    """data 2 x tensor 2 on 2 x 4 devices: 2 devices of each process, the processes splitting
    the batch; the losses are those of the whole mesh in one process."""
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=3,
                               mesh={"data": 2, "tensor": 2})
    proc = start_two(tmp_path, config_file, "--run-dir", str(tmp_path / "two"))
    one = one_process()
    status, output = wait(proc, tmp_path)
    assert status == 0, output[-3000:]
    assert "'data': 2, 'fsdp': 1, 'tensor': 2" in output
    assert_same_losses(one, logged_losses(tmp_path / "two"))


@pytest.mark.slow  # real processes
def test_a_mesh_that_does_not_split_over_the_processes_is_one_line_from_each(corpus, tmp_path):
    """tensor=2 alone would replicate every batch over both processes, which each read only
    their own rows: refused by each, before anything is compiled."""
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=2, mesh={"tensor": 2})
    proc = start_two(tmp_path, config_file, "--run-dir", str(tmp_path / "run"))
    status, output = wait(proc, tmp_path, timeout=120)
    assert status == 2 and "Traceback" not in output, output[-3000:]
    for i in (0, 1):
        errors = [line for line in output.splitlines()
                  if line.startswith(f"[{i}] foundations train: error: ")]
        assert len(errors) == 1, output[-3000:]
        assert "'tensor': 2" in errors[0] and "(2 devices) over 2 processes with 8 devices" \
            in errors[0] and "batch axes (data x fsdp x expert = 1) must divide by 2" \
            in errors[0], errors[0]


@dataclass(frozen=True)
class FakeDevice:
    """Stands for a CPU device of one of several processes, for laying out meshes."""
    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"


TWO_HOSTS = [FakeDevice(i, i // 4) for i in range(8)]  # 2 processes x 4 devices


def device_ids(mesh: Mesh) -> np.ndarray:
    return np.vectorize(lambda d: d.id)(mesh.devices).squeeze()


@pytest.mark.parametrize("sizes, ids", [
    ({"data": 2, "tensor": 2}, [[0, 1], [4, 5]]),  # tensor inside a process
    ({"stage": 2, "data": 2}, [[0, 4], [1, 5]]),   # both stages in each process
    ({"fsdp": 2, "expert": 2}, [[0, 1], [4, 5]]),
    ({"stage": 2, "data": 2, "fsdp": 2}, [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]),  # all 8
])
def test_the_processes_split_the_batch(sizes, ids):
    mesh = make_mesh(MeshConfig(**sizes), TWO_HOSTS)
    assert device_ids(mesh).tolist() == ids
    assert feeds_own_rows(mesh, 2)
    # the first devices in order (one process's layout) leave process 1 out of a smaller mesh,
    # and split the whole mesh between the processes by stage, not by batch rows
    first = TWO_HOSTS[:mesh.size]
    in_order = Mesh(np.array(first, dtype=object).reshape(mesh.devices.shape), MESH_AXES)
    assert not feeds_own_rows(in_order, 2)


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3}, r"mesh \{.*'data': 3.*\} \(3 devices\) over 2 processes with 8 devices: each "
                  r"process must hold the same number of the mesh's devices"),
    ({"tensor": 2}, r"\(2 devices\) over 2 processes with 8 devices: each process reads its own "
                    r"rows of every batch, so the batch axes \(data x fsdp x expert = 1\) must "
                    r"divide by 2"),
])
def test_a_mesh_that_cannot_feed_every_process_is_refused(sizes, message):
    with pytest.raises(ConfigError, match=message):
        make_mesh(MeshConfig(**sizes), TWO_HOSTS)


@pytest.mark.slow  # real processes
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


def wait_for(proc: subprocess.Popen, ready, timeout: int = 180) -> None:
    """Waits until `ready()`, the launcher ends or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.5)


@pytest.mark.slow  # real processes
def test_a_two_process_run_has_one_writer(corpus, tmp_path):
    """Process 0 alone takes RUN/.lock (it names process 0's pid), so the run does not refuse
    itself; a second 2-process run on the same directory is refused by each of its processes in
    one line naming that holder (exit 2, nothing trained); the first then stops on SIGTERM with a
    checkpoint and leaves the lock free."""
    config_file = write_config(tmp_path / "tiny.yaml", corpus, steps=100_000)
    run_dir = tmp_path / "run"
    first_log = tmp_path / "first.log"
    first = launch(first_log, 2, config_file, "--run-dir", str(run_dir))
    try:
        wait_for(first, lambda: "[0] model:" in first_log.read_text())
        output = first_log.read_text()
        assert "[0] model:" in output, output[-3000:]
        pids = [int(pid) for pid in re.findall(r"\[launch\] process \d: pid (\d+)", output)]
        holder = json.loads((run_dir / LOCK).read_text())
        assert (holder["pid"], holder["host"]) == (pids[0], socket.gethostname())
        assert [p.name for p in run_dir.glob(LOCK + "*")] == [LOCK]
        second = launch(tmp_path / "launch.log", 2, config_file, "--run-dir", str(run_dir))
        status, refused = wait(second, tmp_path, timeout=180)
        wait_for(first, lambda: (run_dir / "metrics.jsonl").is_file())   # in the training loop
        for pid in pids:   # pre-empted: both stop after the same step, with a checkpoint
            os.kill(pid, signal.SIGTERM)
        first.wait(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert status == 2 and "Traceback" not in refused and "model:" not in refused, refused[-3000:]
    for i in (0, 1):   # (gloo's own lines, printed in pieces, may come before it on its line)
        errors = [line.split("foundations train: error: ")[1] for line in refused.splitlines()
                  if line.startswith(f"[{i}] ") and "foundations train: error: " in line]
        assert len(errors) == 1, refused[-3000:]
        assert errors[0].startswith(f"run directory {run_dir} is in use by pid {pids[0]} on "
                                    f"host {socket.gethostname()} since 20"), errors[0]
    output = first_log.read_text()
    assert first.returncode == 0, output[-3000:]
    assert "[0] foundations train: stopped after step" in output, output[-3000:]
    assert (run_dir / LOCK).read_text() == ""   # released


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

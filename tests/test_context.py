"""Context extension: RoPE position interpolation and NTK-aware theta against hand computation;
a tiny warm start at twice the length trains, and context-ppl scores both runs at both lengths."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from foundations.cli import main as cli
from foundations.models.positions import apply_rope, scaled_rope
from foundations.train.loop import train

ROPE = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
        "model.use_bias=false", "schedule.warmup_steps=0"]


def rotate(x, position, scaling="none", factor=1.0, theta=100.0):
    positions, theta = scaled_rope(jnp.array([[position]]), 4, theta, scaling, factor)
    return np.asarray(apply_rope(jnp.asarray(x, jnp.float32)[None, None, None], positions,
                                 theta))[0, 0, 0]


@pytest.mark.parametrize("position, factor", [(3, 2.0), (10, 4.0), (7, 1.5)])
def test_linear_interpolation_by_s_at_p_is_plain_rope_at_p_over_s(position, factor):
    """head_dim 4, theta 100: pairs (x0, x2) and (x1, x3) turn by p/s * 1 and p/s * 100^-1/2."""
    x = [1.0, 2.0, 0.5, -1.0]
    a, b = position / factor, position / factor / 10.0
    expected = [1.0 * math.cos(a) - 0.5 * math.sin(a), 2.0 * math.cos(b) + 1.0 * math.sin(b),
                0.5 * math.cos(a) + 1.0 * math.sin(a), -1.0 * math.cos(b) + 2.0 * math.sin(b)]
    np.testing.assert_allclose(rotate(x, position, "linear", factor), expected, atol=1e-6)


def test_ntk_scaling_raises_theta_by_factor_to_the_d_over_d_minus_2():
    """D = 4, factor 2: theta * 2^(4/2) = 4 theta; the lowest frequency 1/sqrt(theta) halves,
    the highest (1) is unchanged, positions are untouched."""
    positions, theta = scaled_rope(jnp.array([[5]]), 4, 100.0, "ntk", 2.0)
    assert theta == pytest.approx(400.0) and int(positions[0, 0]) == 5
    x = [1.0, 2.0, 0.5, -1.0]
    a, b = 5.0, 5.0 / 20.0    # frequencies 1 and 400^-1/2 = 1/20
    expected = [1.0 * math.cos(a) - 0.5 * math.sin(a), 2.0 * math.cos(b) + 1.0 * math.sin(b),
                0.5 * math.cos(a) + 1.0 * math.sin(a), -1.0 * math.cos(b) + 2.0 * math.sin(b)]
    np.testing.assert_allclose(rotate(x, 5, "ntk", 2.0), expected, atol=1e-6)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus):
    from conftest import TINY
    from foundations.config import load_config
    run = tmp_path_factory.mktemp("context") / "base"
    train(load_config(None, TINY + ROPE + [f"data.train_files=[{corpus}]", "train.steps=3"]), run,
          progress=False)
    return run


@pytest.mark.slow  # two trainings and the context-ppl command
def test_a_warm_start_at_twice_the_length_trains_and_both_are_scored(base_run, tiny_config,
                                                                     corpus, tmp_path, capsys):
    extended = tmp_path / "linear_2x"
    long = ["model.max_seq_len=64", "data.seq_len=64", f"train.init_from={base_run}"]
    summary = train(tiny_config(*ROPE, *long, "model.positions.scaling=linear",
                                "model.positions.factor=2", "train.steps=2", "train.seed=1"),
                    extended,
                    progress=False)
    assert summary["step"] == 2
    # it started from the base: 2 AdamW steps (lr 0, then 5e-4 while warming up) move no
    # parameter by more than ~1e-3; a fresh init (another seed, std 0.02) would differ by ~0.05
    from foundations.run import load_run
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        jax.tree.leaves(load_run(base_run).params), jax.tree.leaves(load_run(extended).params))]
    assert max(moved) < 2e-3, max(moved)
    capsys.readouterr()
    table_file = tmp_path / "table.json"
    assert cli(["context-ppl", str(corpus), "--run-dir", str(base_run), "--run-dir",
                str(extended), "--lengths", "32", "64",
                "--max-batches", "2", "--json", str(table_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "ppl@32", "ppl@64"] and len(lines) == 3
    table = json.loads(table_file.read_text())
    assert list(table) == [str(base_run), str(extended)]
    # every cell is what `foundations eval` says of the same text in windows of that length
    # (the base reading 64 tokens, the extended run reading 32)
    for run, own in ((base_run, 32), (extended, 64)):
        for length in (32, 64):
            assert cli(["eval", str(corpus), "--run-dir", str(run), "--batch-size", "8",
                        "--max-batches", "2", "--override", f"data.seq_len={length}",
                        "--override", f"model.max_seq_len={max(own, length)}"]) == 0
            said = capsys.readouterr().out
            loss = float(said.split("loss ")[1].split(",")[0])
            assert math.log(table[str(run)][str(length)]) == pytest.approx(loss, abs=1e-4), said
    assert cli(["context-ppl", str(corpus), "--run-dir", str(base_run), "--lengths", "0"]) == 2
    assert "--lengths must be positive" in capsys.readouterr().err

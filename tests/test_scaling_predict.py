"""`foundations fit RESULTS --predict C`: the compute-optimal allocation of the fitted (or a given)
law at C, the nearest size of the ladder with its steps, and the predicted loss with an interval."""

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

from foundations.cli import main
from foundations.scaling.grid import load_grid, plan_runs
from foundations.scaling.synthetic import TRUE_LAW, law_loss, optimal_n, write_sweep

# Hoffmann et al. 2022, Approach 3 (their eq. 10)
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
LAW = ",".join(f"{k}={v}" for k, v in CHINCHILLA.items())
GUTENBERG = Path(__file__).parents[1] / "experiments" / "scaling" / "gutenberg.yaml"


def predicted(capsys, *args):
    assert main(["fit", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_published_chinchilla_fit_gives_hoffmann_allocation(capsys):
    alpha, beta, A, B = (CHINCHILLA[k] for k in ("alpha", "beta", "A", "B"))
    a = beta / (alpha + beta)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    budgets = [1e21, 5.76e23, 1e25]   # 5.76e23: Gopher's and Chinchilla's compute
    out = [predicted(capsys, "--predict", str(C), "--law", LAW) for C in budgets]
    for C, p in zip(budgets, out):
        assert p["compute"] == C
        assert p["n_opt"] == pytest.approx(G * (C / 6) ** a, rel=1e-9)
        assert p["d_opt"] == pytest.approx(C / 6 / p["n_opt"], rel=1e-9)
        assert 6 * p["n_opt"] * p["d_opt"] == pytest.approx(C, rel=1e-9)
        assert p["loss"] == pytest.approx(
            1.69 + A / p["n_opt"] ** alpha + B / p["d_opt"] ** beta, rel=1e-9)
        assert p["loss_interval"] is None   # a given law has no bootstrap
    slope = np.polyfit(np.log(budgets), np.log([p["n_opt"] for p in out]), 1)[0]
    assert slope == pytest.approx(0.45, abs=0.005) and p["a"] == pytest.approx(a)
    # the law at Chinchilla's compute: tens of billions of parameters on trillions of tokens
    assert 1e10 < out[1]["n_opt"] < 1e11 and 1e12 < out[1]["d_opt"] < 1e13


def test_fitted_sweep_predicts_beyond_itself_with_an_interval(tmp_path, capsys):
    results = write_sweep(tmp_path, with_probe=False)
    C = 3e17   # 3x the sweep's largest budget
    p = predicted(capsys, str(results), "--predict", str(C), "--bootstrap", "20")
    assert p["n_opt"] == pytest.approx(optimal_n(C), rel=0.3)
    lo, hi = p["loss_interval"]
    assert lo <= p["loss"] <= hi
    true_optimum = law_loss(optimal_n(C), C / 6 / optimal_n(C), TRUE_LAW)
    assert p["loss"] == pytest.approx(true_optimum, rel=0.02)
    size = p["size"]   # from the results' sizes; tokens per step from their curves
    assert size["name"].startswith("s") and p["steps"] >= 1
    assert size["loss_interval"][0] <= size["loss"] <= size["loss_interval"][1]
    assert not (tmp_path / "fit.json").exists()   # --predict plans, it does not rewrite the fit
    assert main(["fit", str(results), "--predict", str(C), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "compute-optimal N" in text and "nearest size" in text


def test_ladder_from_the_sweep_file_gives_a_size_and_its_steps(capsys):
    C = 3e12
    p = predicted(capsys, "--predict", str(C), "--law", LAW, "--grid", str(GUTENBERG))
    size = p["size"]
    assert isinstance(size["num_layers"], int) and isinstance(size["d_model"], int)
    assert isinstance(p["steps"], int) and p["steps"] >= 1
    assert 6 * size["n"] * size["tokens"] == pytest.approx(C, rel=0.05)   # it spends C
    assert abs(math.log(size["n"] / p["n_opt"])) <= math.log(16)
    # the printed command plans exactly that run on the sweep's recipe: its size, steps and batch
    args = shlex.split(p["command"])
    assert args[:2] == ["foundations", "sweep"] and args[2] == str(GUTENBERG)
    overrides = [a for a in args[3:] if "=" in a]
    (run,) = plan_runs(*load_grid(GUTENBERG, overrides))
    assert (run.config.model.num_layers, run.config.model.d_model) == (
        size["num_layers"], size["d_model"])
    assert run.config.train.steps == p["steps"]
    assert run.config.train.batch_size == size["batch_size"]
    assert run.tokens == size["tokens"] and run.flops == pytest.approx(C, rel=0.05)


def test_predict_refuses_what_it_cannot_do(capsys):
    assert main(["fit", "--predict", "1e20"]) == 2                   # no results, no law
    assert main(["fit", "--predict", "1e20", "--law", "E=1"]) == 2   # an incomplete law
    assert main(["fit", "--predict", "-1", "--law", LAW]) == 2
    degenerate = LAW.replace("alpha=0.34", "alpha=-0.5")
    assert degenerate != LAW
    capsys.readouterr()
    assert main(["fit", "--predict", "1e20", "--law", degenerate]) == 2
    assert "no compute-optimal allocation (alpha=-0.5" in capsys.readouterr().err

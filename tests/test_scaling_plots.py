"""The fit and plot commands end to end on a synthetic sweep in tmp_path."""

import argparse
import json

import pytest

from foundations.scaling import load_results
from foundations.scaling.cli import add_fit_parser, add_plot_parser
from foundations.scaling.plots import plot_probe_accuracy
from foundations.scaling.synthetic import optimal_n, write_sweep

FIGURES = ["loss_vs_compute", "isoflop", "optimal_allocation", "predicted_vs_observed"]


def run_cli(argv):
    """Parse the way the main CLI will: our add_*_parser functions, then args.func(args)."""
    parser = argparse.ArgumentParser(prog="foundations")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(subparsers)
    add_plot_parser(subparsers)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_plot_writes_png_and_svg(tmp_path):
    results = write_sweep(tmp_path / "sweep")
    out = tmp_path / "figures"
    assert run_cli(["plot", results, "--out", out, "--bootstrap", "3"]) == 0
    for name in FIGURES + ["probe_accuracy"]:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert b"<svg" in svg.read_bytes()[:2000], name


def test_probe_figure_only_when_probe_measured(tmp_path):
    results = write_sweep(tmp_path / "sweep", with_probe=False, fmt="csv")
    assert plot_probe_accuracy(load_results(results), {"size_column": "n_params"}, tmp_path) == []
    assert not list(tmp_path.glob("*.png"))


def test_fit_writes_json_and_report(tmp_path, capsys):
    results = write_sweep(tmp_path / "sweep")
    out = tmp_path / "report" / "fit.json"
    assert run_cli(["fit", results, "--out", out, "--bootstrap", "5"]) == 0
    report = capsys.readouterr().out
    for heading in ("Approach 3", "Approach 2", "Compute-optimal allocation", "Extrapolation", "alpha ="):
        assert heading in report
    fit = json.loads(out.read_text())
    assert set(fit["chinchilla"]["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert fit["chinchilla"]["ci"]["alpha"]["lo"] <= fit["chinchilla"]["params"]["alpha"] <= \
        fit["chinchilla"]["ci"]["alpha"]["hi"]
    assert 0.45 < fit["isoflop"]["fit"]["a"] < 0.58
    # Hoffmann et al. eq. 4 by hand from the fitted law: N_opt = G (C/6)^(beta/(alpha+beta)),
    # G = (alpha A / (beta B))^(1/(alpha+beta)), D_opt = C / (6 N_opt); and near the true law's
    p = fit["chinchilla"]["params"]
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    for row in fit["compute_optimal"]:
        n_opt = G * (row["C"] / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))
        assert row["N_opt"] == pytest.approx(n_opt, rel=1e-9)
        assert row["D_opt"] == pytest.approx(row["C"] / (6 * n_opt), rel=1e-9)
        assert row["tokens_per_param"] == pytest.approx(row["C"] / (6 * n_opt ** 2), rel=1e-9)
        assert row["N_opt"] == pytest.approx(optimal_n(row["C"]), rel=0.1)
    # the synthetic sweep's largest budget (1e17) is held out and predicted from the others
    assert fit["extrapolation"]["held_out_budget"] == pytest.approx(1e17)
    assert fit["extrapolation"]["mean_abs_relative_error"] < 0.015
    assert "samples" not in fit["chinchilla"]

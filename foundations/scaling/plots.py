"""Figures for a sweep: loss curves vs compute with the fitted frontier, IsoFLOP parabolas, N_opt and D_opt
vs compute with confidence bands, predicted vs observed loss, and the probe accuracy if the sweep has one.

Each figure is written as PNG (to look at) and SVG (to put in a paper) with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from foundations.scaling import fit as F  # noqa: E402
from foundations.scaling.results import columns, load_curve  # noqa: E402

CMAP = "viridis"


def _save(fig, out_dir, name):
    """Write name.png and name.svg; return both paths."""
    paths = [Path(out_dir) / f"{name}.{ext}" for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


SIZE_LABELS = {"n_params": "non-embedding parameters N",
               "n_compute": "N = training FLOPs per token / 6"}


def _size_colorbar(fig, ax, norm, label):
    sm = plt.cm.ScalarMappable(norm=norm, cmap=CMAP)
    fig.colorbar(sm, ax=ax, label=label)


def chinchilla_label(params):
    """'L = 1.82 + 478/N^0.347 + 2143/D^0.367' for legends."""
    return (f"L = {params['E']:.3f} + {params['A']:.4g}/N$^{{{params['alpha']:.3f}}}$"
            f" + {params['B']:.4g}/D$^{{{params['beta']:.3f}}}$")


def plot_loss_vs_compute(rows, analysis, out_dir):
    """Every run's curve against C = 6 N tokens (its validation losses where the run recorded more than
    one, else its training loss), the final losses, and the fitted frontier."""
    N, D, final = columns(rows, analysis["size_column"], "tokens", analysis["loss_column"])
    norm = LogNorm(N.min(), N.max() * 1.0001)
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    val_curves = 0
    for row, n in zip(rows, N):
        try:
            curve = load_curve(row["curve_path"])
        except OSError:
            continue
        validated = [p for p in curve if "val_loss" in p]
        points, key = (validated, "val_loss") if len(validated) > 1 else (curve, "loss")
        val_curves += key == "val_loss"
        tokens = np.array([p["tokens"] for p in points], dtype=float)
        loss = np.array([p[key] for p in points], dtype=float)
        keep = tokens > 0
        ax.plot(6 * n * tokens[keep], loss[keep], color=plt.get_cmap(CMAP)(norm(n)), lw=0.8, alpha=0.6)
    flops = 6 * N * D
    ax.scatter(flops, final, c=N, cmap=CMAP, norm=norm, s=18, edgecolors="k", linewidths=0.4, zorder=3,
               label=f"final {analysis['loss_column']}")
    fit3 = analysis["chinchilla"]
    if "params" in fit3:
        C = np.geomspace(np.nanmin(flops) / 10, np.nanmax(flops) * 10, 200)
        frontier = F.compute_optimal(fit3["params"], C)["loss"]
        ax.plot(C, frontier, "k--", lw=1.8, label=f"compute-optimal frontier of\n{chinchilla_label(fit3['params'])}")
    ax.set(xscale="log", yscale="log", xlabel="training compute C = 6·N·tokens (FLOPs)", ylabel="loss (nats/token)",
           title=f"Loss vs compute: {'validation' if val_curves == len(rows) else 'training'} curves"
                 f"{'' if val_curves in (0, len(rows)) else f' ({val_curves} of them validation)'}"
                 ", coloured by model size")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    _size_colorbar(fig, ax, norm, SIZE_LABELS[analysis["size_column"]])
    return _save(fig, out_dir, "loss_vs_compute")


def _profile_resamples(N, loss, C, log_n, n_boot=50, seed=0):
    """One budget's parabola refitted on bootstrap resamples of its runs, evaluated at log_n."""
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot):
        idx = rng.choice(len(N), size=len(N), replace=True)
        profile = F.isoflop_profile(N[idx], loss[idx], C)
        if profile is not None:
            curves.append(np.polyval(profile["coeffs"], log_n))
    return curves


def plot_isoflop(rows, analysis, out_dir):
    """Final loss vs N for each IsoFLOP budget, the fitted parabola in log N with its 95% bootstrap
    band (the budget's runs resampled), and its minimum."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    N, loss, budget = columns(rows, analysis["size_column"], analysis["loss_column"], "budget")
    iso = analysis["isoflop"]
    budgets = np.unique(budget[np.isfinite(budget)])
    if len(budgets) == 0:
        plt.close(fig)
        return []
    norm = LogNorm(budgets.min(), budgets.max() * 1.0001)
    profiles = {p["budget"]: p for p in iso.get("fit", {}).get("profiles", [])}
    for C in budgets:
        color = plt.get_cmap("plasma")(0.85 * norm(C))
        mask = budget == C
        ax.scatter(N[mask], loss[mask], color=color, s=22, zorder=3, label=f"C = {C:.1e} FLOPs")
        if C in profiles:
            p = profiles[C]
            log_n = np.linspace(np.log(N[mask].min()) - 0.3, np.log(N[mask].max()) + 0.3, 100)
            ax.plot(np.exp(log_n), np.polyval(p["coeffs"], log_n), color=color, lw=1.2)
            _fill_band(ax, np.exp(log_n), _profile_resamples(N[mask], loss[mask], C, log_n), color, 0.15)
            ax.scatter([p["N_opt"]], [p["loss_opt"]], marker="*", s=160, color=color, edgecolors="k", zorder=4)
    title = "IsoFLOP profiles: parabola in log N per budget, ★ = its minimum N_opt(C)"
    if "fit" in iso:
        title += f"\nN_opt ∝ C^{iso['fit']['a']:.3f},  D_opt ∝ C^{iso['fit']['b']:.3f}"
    ax.set(xscale="log", xlabel=SIZE_LABELS[analysis["size_column"]], ylabel=f"final {analysis['loss_column']} (nats/token)",
           title=title)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, out_dir, "isoflop")


def _fill_band(ax, x, curves, color, alpha):
    """Shades the 2.5-97.5 percentile band of bootstrap curves, ignoring degenerate (NaN) ones."""
    if not len(curves):
        return
    curves = np.array(curves, dtype=np.float64)
    curves = curves[np.isfinite(curves).all(axis=1) & (curves > 0).all(axis=1)]
    if len(curves):
        ax.fill_between(x, *np.percentile(curves, [2.5, 97.5], axis=0), color=color, alpha=alpha)


def _interval_text(ci, name):
    return f" [{ci[name]['lo']:.3f}, {ci[name]['hi']:.3f}]" if name in ci else ""


def plot_optimal_allocation(rows, analysis, out_dir):
    """N_opt(C) and D_opt(C): IsoFLOP minima, the Approach-2 power laws and the Approach-3 closed form, 95% bands."""
    N, D = columns(rows, analysis["size_column"], "tokens")
    flops = 6 * N * D
    C = np.geomspace(np.nanmin(flops) / 10, np.nanmax(flops) * 100, 100)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    iso, fit3 = analysis["isoflop"], analysis["chinchilla"]
    for ax, key, symbol in ((axes[0], "N_opt", "N"), (axes[1], "D_opt", "D")):
        exponent = "a" if key == "N_opt" else "b"
        if "fit" in iso:
            points = iso["fit"]["profiles"]
            ax.scatter([p["budget"] for p in points], [p[key] for p in points], color="C0", zorder=3,
                       label="IsoFLOP minima")
            coef = iso["fit"]["N_coef" if key == "N_opt" else "D_coef"]
            ax.plot(C, F.isoflop_optimal(iso["fit"], C)[key], color="C0",
                    label=f"Approach 2: {symbol}_opt = {coef:.3g}·C^{iso['fit'][exponent]:.3f}"
                          f"{_interval_text(iso['ci'], exponent)}")
            if iso.get("samples"):
                _fill_band(ax, C, [F.isoflop_optimal(s, C)[key] for s in iso["samples"]], "C0", 0.2)
        if "params" in fit3:
            a3 = fit3["a"] if key == "N_opt" else fit3["b"]
            ci_text = _interval_text(fit3["ci"], exponent)
            optimal = F.compute_optimal(fit3["params"], C)[key]
            if np.isfinite(optimal).all():
                ax.plot(C, optimal, color="C3", ls="--",
                        label=f"Approach 3: {symbol}_opt ∝ C^{a3:.3f}{ci_text}")
            else:  # e.g. a negative fitted exponent: the closed form has no real solution
                ax.plot([], [], " ", label="Approach 3: degenerate fit, no compute-optimal curve")
            if fit3.get("samples"):
                _fill_band(ax, C, [F.compute_optimal(s, C)[key] for s in fit3["samples"]], "C3", 0.15)
        has_data = any(np.isfinite(line.get_ydata()).any() for line in ax.lines
                       if len(line.get_ydata())) or len(ax.collections) > 0
        ax.set(xscale="log", yscale="log" if has_data else "linear",
               xlabel="training compute C (FLOPs)",
               ylabel="optimal parameters N_opt" if key == "N_opt" else "optimal tokens D_opt",
               title=f"Compute-optimal {'model size' if key == 'N_opt' else 'data'} (bands: 95% bootstrap)")
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out_dir, "optimal_allocation")


def plot_predicted_vs_observed(rows, analysis, out_dir):
    """Approach-3 prediction against each run's observed final loss (points on the diagonal are fitted
    well), and the held-out runs as predicted by the fit that did not see them."""
    fit3 = analysis["chinchilla"]
    if "params" not in fit3:
        return []
    N, D, loss = columns(rows, analysis["size_column"], "tokens", analysis["loss_column"])
    predicted = F.predict_loss(fit3["params"], N, D)
    rms_log = float(np.sqrt(np.mean((np.log(predicted) - np.log(loss)) ** 2)))
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    norm = LogNorm(N.min(), N.max() * 1.0001)
    ax.scatter(loss, predicted, c=N, cmap=CMAP, norm=norm, s=22, edgecolors="k", linewidths=0.4,
               label="every run, fit on all")
    ext = analysis["extrapolation"]
    if "observed" in ext:
        held_out = (f"C = {ext['held_out_budget']:.1e}" if "held_out_budget" in ext
                    else "the largest size")
        ax.scatter(ext["observed"], ext["predicted"], marker="*", s=140, c=ext["N"], cmap=CMAP, norm=norm,
                   edgecolors="r", linewidths=0.8, zorder=4,
                   label=f"held out ({held_out}), predicted: mean |error| "
                         f"{100 * ext['mean_abs_relative_error']:.2f}%")
    lo, hi = min(loss.min(), predicted.min()), max(loss.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="predicted = observed")
    ax.set(xlabel=f"observed final {analysis['loss_column']} (nats/token)", ylabel="predicted L(N, D)",
           title="Approach 3 fit: predicted vs observed")
    ax.text(0.03, 0.97, f"{chinchilla_label(fit3['params'])}\nRMS log error = {rms_log:.4f}",
            transform=ax.transAxes, va="top", fontsize=8, bbox={"fc": "white", "alpha": 0.8})
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.2)
    _size_colorbar(fig, ax, norm, SIZE_LABELS[analysis["size_column"]])
    return _save(fig, out_dir, "predicted_vs_observed")


def plot_probe_accuracy(rows, analysis, out_dir):
    """The probe against compute and against validation loss, in its exact-match metric (with 95%
    intervals where the sweep recorded them) and its continuous one (only when measured)."""
    with_probe = [r for r in rows if r.get("probe_acc") is not None]
    if not with_probe:
        return []
    N, D, acc, val_loss = columns(with_probe, analysis["size_column"], "tokens", "probe_acc",
                                  analysis["loss_column"])
    C = 6 * N * D
    lo, hi, logprob = columns(with_probe, "probe_acc_lo", "probe_acc_hi", "probe_logprob")
    metrics = [("exact match (share of words)", acc, (acc - lo, hi - acc))]
    if np.isfinite(logprob).all():
        metrics.append(("log-probability per token of the right word", logprob, None))
    fig, axes = plt.subplots(len(metrics), 2, figsize=(13, 4.5 * len(metrics)), layout="constrained",
                             squeeze=False)
    norm = LogNorm(N.min(), N.max() * 1.0001)
    colors = plt.get_cmap(CMAP)(norm(N))
    for row_axes, (name, values, errors) in zip(axes, metrics):
        for ax, x, xlabel in ((row_axes[0], C, "training compute C = 6ND (FLOPs)"),
                              (row_axes[1], val_loss, f"final {analysis['loss_column']} (nats/token)")):
            if errors is not None and np.isfinite(errors).all():
                ax.errorbar(x, values, yerr=errors, fmt="none", ecolor="0.6", lw=0.8, zorder=2)
            ax.scatter(x, values, c=colors, s=22, edgecolors="k", linewidths=0.4, zorder=3)
            ax.set(xscale="log" if x is C else "linear", xlabel=xlabel, ylabel=name,
                   title=f"Probe, {name.split(' (')[0]}, vs {'compute' if x is C else 'loss'}")
            ax.grid(True, which="both", alpha=0.2)
        row_axes[1].invert_xaxis()  # lower loss to the right, as compute grows to the right
    _size_colorbar(fig, axes[:, 1].tolist(), norm, SIZE_LABELS[analysis["size_column"]])
    return _save(fig, out_dir, "probe_accuracy")


def plot_all(rows, analysis, out_dir):
    """Every figure that the data allows; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    paths += plot_loss_vs_compute(rows, analysis, out_dir)
    paths += plot_isoflop(rows, analysis, out_dir)
    paths += plot_optimal_allocation(rows, analysis, out_dir)
    paths += plot_predicted_vs_observed(rows, analysis, out_dir)
    paths += plot_probe_accuracy(rows, analysis, out_dir)
    return paths

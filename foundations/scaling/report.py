"""Run every fit on a sweep's results table and turn the outcome into a readable report (and JSON).

analyse() is shared by `foundations fit` and `foundations plot`; each fit that cannot run on the data
(too few sizes, no IsoFLOP budgets, ...) records why instead of stopping the others.
"""

from __future__ import annotations

import math

import numpy as np

from foundations.scaling import fit as F
from foundations.scaling.results import columns, size_column


def _lowest_loss_per_value(x, loss):
    """For each distinct x, the lowest loss seen there: the envelope used for L(N) and L(D)."""
    values = np.unique(x)
    return values, np.array([loss[x == v].min() for v in values])


def report_budgets(C_observed, extra_decades=2):
    """A few budgets for the allocation table: every decade from the smallest run to 100x the largest."""
    lo = math.floor(math.log10(np.nanmin(C_observed)))
    hi = math.ceil(math.log10(np.nanmax(C_observed))) + extra_decades
    return [10.0 ** k for k in range(lo, hi + 1)]


def _band(samples, fn, C):
    """2.5/97.5 percentile band of fn(sample, C) over bootstrap samples; None without samples."""
    if not samples:
        return None
    curves = np.array([fn(s, C) for s in samples], dtype=np.float64)
    curves = curves[np.isfinite(curves).all(axis=1)]  # degenerate replicates give NaN
    if len(curves) == 0:
        return None
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def _try(fn):
    """Run one fit; a ValueError becomes {"error": message} so the rest of the report still runs."""
    try:
        return fn()
    except (ValueError, TypeError, np.linalg.LinAlgError) as err:
        return {"error": str(err)}


def analyse(rows, loss_column="val_loss", n_boot=100, seed=0, n_held_out=1):
    """All fits, bootstrap intervals, allocation table and extrapolation check for loaded results rows."""
    n_column = size_column(rows)
    N, D, loss, budget = columns(rows, n_column, "tokens", loss_column, "budget")
    flops = 6 * N * D
    out = {"loss_column": loss_column, "size_column": n_column, "n_runs": len(rows), "n_bootstrap": n_boot,
           "seed": seed}

    def chinchilla():
        if len(np.unique(N)) < 2 or len(np.unique(D)) < 2 or len(N) < 5:
            raise ValueError("L(N, D) needs >= 5 runs with >= 2 distinct N and >= 2 distinct D")
        params = F.fit_chinchilla(N, D, loss)
        samples, ci = F.bootstrap_chinchilla(N, D, loss, n_boot=n_boot, seed=seed, full_fit=params)
        for s in samples:
            s["a"] = s["beta"] / (s["alpha"] + s["beta"])
            s["b"] = 1 - s["a"]
        a = params["beta"] / (params["alpha"] + params["beta"])
        return {"params": params, "a": a, "b": 1 - a, "ci": F.confidence_intervals(samples),
                "n_points": len(N), "samples": samples}
    out["chinchilla"] = _try(chinchilla)

    def one_variable(x, fit_fn):
        xs, best = _lowest_loss_per_value(x, loss)
        if len(xs) < 3:
            raise ValueError(f"needs >= 3 distinct values, got {len(xs)}")
        params = fit_fn(xs, best)
        _, ci = F.bootstrap_power_law(xs, best, fit_fn, params, n_boot=n_boot, seed=seed)
        return {"params": params, "ci": ci, "x": xs.tolist(), "loss": best.tolist()}
    out["loss_vs_n"] = _try(lambda: one_variable(N, F.fit_loss_vs_n))
    out["loss_vs_d"] = _try(lambda: one_variable(D, F.fit_loss_vs_d))

    def isoflop():
        has_budget = np.isfinite(budget)
        if not has_budget.any():
            raise ValueError("no run has an IsoFLOP budget")
        args = [N[has_budget], loss[has_budget], budget[has_budget]]
        result = F.fit_isoflop(*args)
        # ci: residual bootstrap (edge replicates dropped); ci_point: runs resampled within budgets
        samples, ci, info = F.bootstrap_isoflop(*args, n_boot=n_boot, seed=seed)
        _, ci_point = F.bootstrap(F.fit_isoflop, args, n_boot=n_boot, seed=seed, groups=budget[has_budget])
        for name, key in (("ci", "a_width"), ("ci_point", "a_width_point")):
            interval = {"ci": ci, "ci_point": ci_point}[name].get("a")
            info[key] = interval["hi"] - interval["lo"] if interval else None
        return {"fit": result, "ci": ci, "ci_point": ci_point, "bootstrap": info, "samples": samples}
    out["isoflop"] = _try(isoflop)

    budgets = report_budgets(flops)
    table = []
    fit3, fit2 = out["chinchilla"], out["isoflop"]
    band3 = band2 = None
    if "params" in fit3:
        opt = F.compute_optimal(fit3["params"], budgets)
        band3 = _band(fit3["samples"], lambda s, C: F.compute_optimal(s, C)["N_opt"], np.array(budgets))
    if "fit" in fit2:
        opt2 = F.isoflop_optimal(fit2["fit"], budgets)
        band2 = _band(fit2["samples"], lambda s, C: F.isoflop_optimal(s, C)["N_opt"], np.array(budgets))
    for i, C in enumerate(budgets):
        entry = {"C": C}
        if "params" in fit3:
            entry.update(N_opt=float(opt["N_opt"][i]), D_opt=float(opt["D_opt"][i]),
                         tokens_per_param=float(opt["tokens_per_param"][i]), loss=float(opt["loss"][i]))
            if band3:
                entry.update(N_opt_lo=float(band3[0][i]), N_opt_hi=float(band3[1][i]))
        if "fit" in fit2:
            entry.update(isoflop_N_opt=float(opt2["N_opt"][i]), isoflop_D_opt=float(opt2["D_opt"][i]),
                         isoflop_tokens_per_param=float(opt2["tokens_per_param"][i]))
            if band2:
                entry.update(isoflop_N_opt_lo=float(band2[0][i]), isoflop_N_opt_hi=float(band2[1][i]))
        table.append(entry)
    out["compute_optimal"] = table
    if "params" in fit3:   # start the held-out fit from the full fit too: same answer, a quarter of the time
        init = [F.chinchilla_theta(fit3["params"])]
        fit_fn = lambda n, d, l: F.fit_chinchilla(n, d, l, top_k=8, extra_inits=init)  # noqa: E731
    else:
        fit_fn = F.fit_chinchilla
    out["extrapolation"] = _try(lambda: F.extrapolation_check(N, D, loss, n_held_out=n_held_out, fit_fn=fit_fn,
                                                              budget=budget))
    return out


def to_json(analysis):
    """The analysis without bootstrap sample lists (kept in memory for plots, too long for the file)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "samples"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(analysis)


# -----------------------------------------------------------------------------
# The readable report

def _with_ci(name, value, ci):
    """'alpha = 0.347  [0.33, 0.36]' with the 95% bootstrap interval when there is one."""
    interval = ci.get(name)
    text = f"{value:.4g}"
    return f"{text}  [{interval['lo']:.4g}, {interval['hi']:.4g}]" if interval else text


def format_report(analysis):
    """Human-readable text of analyse()'s output."""
    lines = [f"Scaling-law fits on {analysis['n_runs']} runs (loss column: {analysis['loss_column']}); "
             f"[95% bootstrap intervals, {analysis['n_bootstrap']} resamples]",
             f"N = {analysis['size_column']}, C = 6·N·D", ""]

    def section(title, result, names, formula):
        lines.append(f"{title}: {formula}")
        if "error" in result:
            lines.append(f"  skipped: {result['error']}")
        else:
            params, ci = result.get("params") or result["fit"], result["ci"]
            for name in names:
                lines.append(f"  {name:>7} = {_with_ci(name, params[name], ci)}")
        lines.append("")

    fit3 = analysis["chinchilla"]
    section("Approach 3, L(N, D)", fit3, ["E", "A", "B", "alpha", "beta"],
            "E + A/N^alpha + B/D^beta  (Huber on log L, L-BFGS-B from a grid)")
    if "params" in fit3:
        lines.insert(-1, f"  implied N_opt ~ C^{_with_ci('a', fit3['a'], fit3['ci'])},  "
                             f"D_opt ~ C^{_with_ci('b', fit3['b'], fit3['ci'])}")
    lines.append("L(N) and L(D) below use the lowest final loss at each N (each D): trust them only where the sweep")
    lines.append("has runs with data (parameters) to spare at every N (D); on IsoFLOP-only sweeps use L(N, D) above.")
    section("L(N), lowest loss at each N", analysis["loss_vs_n"], ["E", "A", "alpha"], "E + A/N^alpha")
    section("L(D), lowest loss at each D", analysis["loss_vs_d"], ["E", "B", "beta"], "E + B/D^beta")
    section("Approach 2, IsoFLOP parabolas", analysis["isoflop"], ["a", "b"], "N_opt ~ C^a, D_opt ~ C^b")
    if "fit" in analysis["isoflop"]:
        iso = analysis["isoflop"]
        info = iso.get("bootstrap")
        if info:
            lines.insert(-1, f"    intervals: residual bootstrap, {info['kept']} of {info['replicates']} replicates "
                             f"kept ({info['dropped_edge']} with a minimum at the edge of a budget's sizes, "
                             f"{info['dropped_failed']} without a fit)")
        point = iso.get("ci_point", {}).get("a")
        if point:
            lines.insert(-1, f"    point bootstrap (runs resampled within budgets): a in "
                             f"[{point['lo']:.4g}, {point['hi']:.4g}], width {point['hi'] - point['lo']:.3g}")
        for p in analysis["isoflop"]["fit"]["profiles"]:
            lines.insert(-1, f"    C = {p['budget']:.3g}: N_opt = {p['N_opt']:.4g}, D_opt = {p['D_opt']:.4g}, "
                             f"min loss = {p['loss_opt']:.4f}")

    lines.append("Compute-optimal allocation (C in FLOPs = 6ND)")
    header = f"  {'C':>9}  {'N_opt (A3)':>22}  {'D_opt (A3)':>10}  {'D/N':>6}  {'loss':>6}  {'N_opt (A2)':>10}  {'D/N (A2)':>8}"
    lines.append(header)
    for row in analysis["compute_optimal"]:
        n3 = (f"{row['N_opt']:.3g} [{row['N_opt_lo']:.2g},{row['N_opt_hi']:.2g}]" if "N_opt_lo" in row
              else f"{row['N_opt']:.3g}" if "N_opt" in row else "-")
        d3 = f"{row['D_opt']:.3g}" if "D_opt" in row else "-"
        tpp = f"{row['tokens_per_param']:.1f}" if "tokens_per_param" in row else "-"
        l3 = f"{row['loss']:.3f}" if "loss" in row else "-"
        n2 = f"{row['isoflop_N_opt']:.3g}" if "isoflop_N_opt" in row else "-"
        tpp2 = f"{row['isoflop_tokens_per_param']:.1f}" if "isoflop_tokens_per_param" in row else "-"
        lines.append(f"  {row['C']:>9.0e}  {n3:>22}  {d3:>10}  {tpp:>6}  {l3:>6}  {n2:>10}  {tpp2:>8}")
    lines.append("")

    ext = analysis["extrapolation"]
    if "held_out_budget" in ext:
        lines.append(f"Extrapolation: fit L(N, D) on every budget but the largest "
                     f"(C = {ext['held_out_budget']:.2g}), predict its runs")
    else:
        lines.append("Extrapolation: fit L(N, D) without the largest size(s), predict them")
    if "error" in ext:
        lines.append(f"  skipped: {ext['error']}")
    else:
        for n, d, obs, pred, err in zip(ext["N"], ext["D"], ext["observed"], ext["predicted"], ext["relative_error"]):
            lines.append(f"  N = {n:.3g}, D = {d:.3g}: observed {obs:.4f}, predicted {pred:.4f} ({100 * err:+.2f}%)")
        lines.append(f"  mean |relative error| = {100 * ext['mean_abs_relative_error']:.2f}%, "
                     f"max = {100 * ext['max_abs_relative_error']:.2f}%")
        optimum = ext.get("compute_optimal", {})
        if "observed_loss" in optimum:
            lines.append(f"  compute-optimal loss: observed (IsoFLOP vertex) {optimum['observed_loss']:.4f}, "
                         f"predicted {optimum['predicted_loss']:.4f} ({100 * optimum['relative_error']:+.2f}%)")
        elif optimum:
            lines.append(f"  compute-optimal loss: predicted {optimum['predicted_loss']:.4f} "
                         "(the held-out profile has no vertex to compare with)")
    return "\n".join(lines)

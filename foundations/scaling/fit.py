"""Scaling-law fits: L(N), L(D), the Chinchilla L(N, D) (Approach 3), IsoFLOP profiles (Approach 2).

Every fit here is written out by hand on top of numpy and scipy.optimize, because writing them is the lesson.
Losses are fitted in log space with a Huber penalty, as Hoffmann et al. 2022 (Chinchilla) do.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import math
import os

import numpy as np
import scipy
from scipy.optimize import minimize

HUBER_DELTA = 1e-3

# Hoffmann et al.'s initialisation grid for Approach 3: 5 * 5 * 5 * 6 * 6 = 4500 starts.
CHINCHILLA_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.01, 5.0),
    "b": np.arange(0.0, 25.01, 5.0),
}
# Every other value of it, for bootstrap replicates (which also start from the full-data optimum): 243 starts.
BOOTSTRAP_GRID = {k: v[::2] for k, v in CHINCHILLA_GRID.items()}
# The same grid for the one-variable laws L(X) = E + A / X^alpha: 5 * 5 * 6 = 150 starts.
POWER_LAW_GRID = {k: CHINCHILLA_GRID[k] for k in ("alpha", "e", "a")}

LBFGS_OPTIONS = {"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-8, "maxcor": 20}  # scipy defaults stop early


# -----------------------------------------------------------------------------
# The objective: sum of Huber losses of log-loss residuals, with its analytic gradient.
# A law is log L = LSE(e, a_1 - alpha_1 log X_1, a_2 - alpha_2 log X_2, ...); params are
# theta = [a_1..a_k, e, alpha_1..alpha_k], vectorised over a leading batch of parameter vectors.

def huber(r, delta=HUBER_DELTA):
    """Quadratic within delta, linear outside: robust to outliers, smooth at zero."""
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def log_loss_objective(theta, log_x, log_loss, delta=HUBER_DELTA):
    """Sum over points of Huber(predicted log L - observed log L), for a batch of theta (batch, 2k+1)."""
    k = log_x.shape[0]
    predicted = np.broadcast_to(theta[:, k, None], (len(theta), log_x.shape[1]))     # e
    for i in range(k):                                                                 # LSE with a_i - alpha_i log X_i
        predicted = np.logaddexp(predicted, theta[:, i, None] - theta[:, k + 1 + i, None] * log_x[i])
    return huber(predicted - log_loss[None], delta).sum(axis=1)


def log_loss_objective_and_grad(theta, log_x, log_loss, delta=HUBER_DELTA):
    """Objective and its gradient for one theta (2k+1,); d LSE / d term is the softmax weight.

    Plain numpy (no scipy.special) because this runs ~100 times per L-BFGS start.
    """
    k = log_x.shape[0]
    terms = np.empty((k + 1, log_x.shape[1]))
    terms[:k] = theta[:k, None] - theta[k + 1:, None] * log_x
    terms[k] = theta[k]
    top = terms.max(axis=0)
    exp_terms = np.exp(terms - top)
    total = exp_terms.sum(axis=0)
    residual = top + np.log(total) - log_loss
    weighted = exp_terms * (np.clip(residual, -delta, delta) / total)   # softmax weight * Huber'(r)
    grad = np.empty(2 * k + 1)
    grad[:k + 1] = weighted.sum(axis=1)
    grad[k + 1:] = -(weighted[:k] * log_x).sum(axis=1)
    abs_r = np.abs(residual)
    value = np.where(abs_r <= delta, 0.5 * residual * residual, delta * (abs_r - 0.5 * delta)).sum()
    return value, grad


def _grid_thetas(grid, k):
    """Every combination of a grid like CHINCHILLA_GRID as theta rows [a.., e, alpha..]."""
    a_names, alpha_names = ("a", "b")[:k], ("alpha", "beta")[:k]
    names = [*a_names, "e", *alpha_names]
    return np.array(list(itertools.product(*(grid[name] for name in names))), dtype=np.float64)


@contextlib.contextmanager
def single_threaded_blas():
    """Pin scipy's bundled OpenBLAS to one thread while L-BFGS-B runs.

    L-BFGS-B's tiny (5-dimensional) BLAS calls gain nothing from threads, and on a busy 2-core machine
    OpenBLAS's thread hand-offs made each start ~40x slower (measured: 0.9 s vs 0.02 s). No-op if not found.
    """
    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs", "*openblas*.so*"))
    try:
        lib = ctypes.CDLL(libs[0])
        get_threads, set_threads = lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads
    except (IndexError, OSError, AttributeError):
        yield
        return
    previous = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(previous)


def fit_log_lse(log_x, log_loss, grid, top_k=32, extra_inits=(), delta=HUBER_DELTA):
    """Minimise the Huber objective from a grid of starts, keep the best; returns (theta, objective).

    All grid starts are scored in one vectorised pass; L-BFGS-B (analytic gradient) then runs from
    the top_k of them (plus extra_inits); top_k=0 runs all. On the Chinchilla data the best 8, 32 and
    all 4500 starts reach the same optimum (to 7 digits), the last taking ~150x longer.
    """
    log_x = np.atleast_2d(np.asarray(log_x, dtype=np.float64))
    log_loss = np.asarray(log_loss, dtype=np.float64)
    if not (np.all(np.isfinite(log_x)) and np.all(np.isfinite(log_loss))):
        raise ValueError("N, D and loss must be positive and finite")
    starts = _grid_thetas(grid, log_x.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        scores = log_loss_objective(starts, log_x, log_loss, delta)
    scores = np.where(np.isfinite(scores), scores, np.inf)
    chosen = starts[np.argsort(scores, kind="stable")[: top_k if top_k else len(starts)]]
    if len(extra_inits):
        chosen = np.concatenate([np.atleast_2d(np.asarray(extra_inits, dtype=np.float64)), chosen])
    best_theta, best_value = None, np.inf
    with single_threaded_blas():
        for theta0 in chosen:
            result = minimize(log_loss_objective_and_grad, theta0, args=(log_x, log_loss, delta),
                              jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
            if np.isfinite(result.fun) and result.fun < best_value:
                best_theta, best_value = result.x, float(result.fun)
    if best_theta is None:
        raise ValueError("no start converged to a finite objective")
    return best_theta, best_value


# -----------------------------------------------------------------------------
# The laws

def fit_chinchilla(N, D, loss, top_k=32, extra_inits=(), grid=CHINCHILLA_GRID, delta=HUBER_DELTA):
    """Fit L(N, D) = E + A/N^alpha + B/D^beta as Chinchilla Approach 3; points used exactly as given."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x = np.log(np.stack([np.asarray(N, np.float64), np.asarray(D, np.float64)]))
        log_loss = np.log(np.asarray(loss, np.float64))
    theta, _ = fit_log_lse(log_x, log_loss, grid, top_k=top_k, extra_inits=extra_inits, delta=delta)
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def chinchilla_theta(params):
    """The optimiser's coordinates [a, b, e, alpha, beta] of a fitted {E, A, B, alpha, beta}."""
    return np.array([math.log(params["A"]), math.log(params["B"]), math.log(params["E"]),
                     params["alpha"], params["beta"]])


def predict_loss(params, N, D):
    """L(N, D) of a Chinchilla fit."""
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def fit_power_law_with_floor(x, loss, top_k=16, extra_inits=(), delta=HUBER_DELTA):
    """Fit L(x) = E + A / x^alpha (same Huber-on-log-loss method, 150-start grid); returns {E, A, alpha}."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x, log_loss = np.log(np.asarray(x, np.float64))[None], np.log(np.asarray(loss, np.float64))
    theta, _ = fit_log_lse(log_x, log_loss, POWER_LAW_GRID, top_k=top_k, extra_inits=extra_inits, delta=delta)
    a, e, alpha = (float(v) for v in theta)
    return {"E": math.exp(e), "A": math.exp(a), "alpha": alpha}


def fit_loss_vs_n(N, loss, **kwargs):
    """L(N) = E + A / N^alpha."""
    return fit_power_law_with_floor(N, loss, **kwargs)


def fit_loss_vs_d(D, loss, **kwargs):
    """L(D) = E + B / D^beta (returned with the names B and beta)."""
    fit = fit_power_law_with_floor(D, loss, **kwargs)
    return {"E": fit["E"], "B": fit["A"], "beta": fit["alpha"]}


def fit_power_law(x, y):
    """Least squares line in log-log space: y = coef * x^exponent; returns {coef, exponent}."""
    log_x, log_y = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
    design = np.stack([np.ones_like(log_x), log_x], axis=1)
    (log_coef, exponent), *_ = np.linalg.lstsq(design, log_y, rcond=None)
    return {"coef": float(math.exp(log_coef)), "exponent": float(exponent)}


# -----------------------------------------------------------------------------
# Approach 2: IsoFLOP profiles

def isoflop_profile(N, loss, C, min_points=3):
    """One budget's parabola of loss in log N and its vertex, or None when it has fewer than
    min_points distinct sizes, opens downwards (no minimum) or is so flat that the vertex is out of
    float range."""
    log_n = np.log(np.asarray(N, np.float64))
    if len(np.unique(log_n)) < min_points:
        return None
    design = np.stack([log_n ** 2, log_n, np.ones_like(log_n)], axis=1)
    (c2, c1, c0), *_ = np.linalg.lstsq(design, np.asarray(loss, np.float64), rcond=None)
    if c2 <= 0:
        return None
    log_n_opt = -c1 / (2 * c2)
    if not abs(log_n_opt) < 700:  # a nearly flat profile: N_opt would over- or underflow
        return None
    return {"budget": float(C), "coeffs": [float(c2), float(c1), float(c0)],
            "N_opt": float(math.exp(log_n_opt)), "D_opt": float(C / (6 * math.exp(log_n_opt))),
            "loss_opt": float(c0 - c1 * c1 / (4 * c2))}


def fit_isoflop(N, loss, budget, min_points=3):
    """Per budget C, a parabola of loss in log N and its vertex N_opt(C); then N_opt ~ C^a, D_opt ~ C^b.

    D_opt = C / (6 N_opt). Budgets without a usable profile (isoflop_profile) are skipped and
    listed. Needs at least two usable budgets.
    """
    N, loss, budget = (np.asarray(v, np.float64) for v in (N, loss, budget))
    profiles, skipped = [], []
    for C in np.unique(budget[np.isfinite(budget)]):
        in_budget = budget == C
        profile = isoflop_profile(N[in_budget], loss[in_budget], C, min_points)
        if profile is None:
            skipped.append(float(C))
        else:
            profiles.append(profile)
    if len(profiles) < 2:
        raise ValueError(f"IsoFLOP fit needs >= 2 budgets with >= {min_points} sizes and a minimum; "
                         f"got {len(profiles)} usable, skipped {skipped}")
    budgets = [p["budget"] for p in profiles]
    n_law = fit_power_law(budgets, [p["N_opt"] for p in profiles])
    d_law = fit_power_law(budgets, [p["D_opt"] for p in profiles])
    return {"a": n_law["exponent"], "N_coef": n_law["coef"], "b": d_law["exponent"], "D_coef": d_law["coef"],
            "profiles": profiles, "skipped_budgets": skipped}


# -----------------------------------------------------------------------------
# Compute-optimal allocation

def compute_optimal(params, C):
    """N_opt, D_opt and D/N at compute C = 6ND for a Chinchilla fit (closed form, Hoffmann et al. eq. 4)."""
    C = np.asarray(C, np.float64)
    alpha, beta = params["alpha"], params["beta"]
    # numpy float64: a degenerate fit (e.g. a negative exponent) gives NaN, not a complex number
    with np.errstate(invalid="ignore"):
        G = np.float64(alpha * params["A"] / (beta * params["B"])) ** (1 / (alpha + beta))
    N_opt = G * (C / 6) ** (beta / (alpha + beta))
    D_opt = (C / 6) / N_opt
    return {"N_opt": N_opt, "D_opt": D_opt, "tokens_per_param": D_opt / N_opt,
            "loss": predict_loss(params, N_opt, D_opt), "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def isoflop_optimal(isoflop, C):
    """N_opt, D_opt and D/N at compute C from the Approach-2 power laws."""
    C = np.asarray(C, np.float64)
    N_opt, D_opt = isoflop["N_coef"] * C ** isoflop["a"], isoflop["D_coef"] * C ** isoflop["b"]
    return {"N_opt": N_opt, "D_opt": D_opt, "tokens_per_param": D_opt / N_opt}


# -----------------------------------------------------------------------------
# Uncertainty and validation

def bootstrap(fit_fn, arrays, n_boot=100, seed=0, groups=None):
    """Refit on n_boot resamples (points drawn with replacement) and return (samples, intervals).

    fit_fn(*arrays) -> dict of floats. groups (optional, one label per point) resamples within each
    group, so e.g. every IsoFLOP budget keeps its size. Replicates whose fit raises, or gives a value
    that is not finite, are dropped.
    intervals[name] = {"lo": 2.5th percentile, "hi": 97.5th, "std": ...}.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    if groups is None:
        group_indices = [np.arange(n)]
    else:
        groups = np.asarray(groups)
        group_indices = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    samples = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in group_indices])
        try:
            fit = fit_fn(*(a[idx] for a in arrays))
        except (ValueError, OverflowError, np.linalg.LinAlgError):
            continue  # a degenerate resample (e.g. a profile with no minimum) has no fit
        values = {k: v for k, v in fit.items() if isinstance(v, float)}
        if all(math.isfinite(v) for v in values.values()):  # NaN would poison every percentile
            samples.append(values)
    return samples, confidence_intervals(samples)


def _parabola_fit(log_n, loss):
    """Least-squares parabola of loss in log N: (fitted values, leverages)."""
    design = np.stack([log_n ** 2, log_n, np.ones_like(log_n)], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, loss, rcond=None)
    leverage = np.einsum("ij,ji->i", design, np.linalg.pinv(design))   # diag of the hat matrix
    return design @ coeffs, leverage


def bootstrap_isoflop(N, loss, budget, n_boot=100, seed=0, min_points=3):
    """Approach 2's interval by a residual bootstrap (Porian et al. 2024): the runs stay where they
    are, and each replicate adds residuals, drawn with replacement, to every budget's fitted parabola
    before refitting fit_isoflop.

    The residuals are those of each budget's parabola, scaled by 1/sqrt(1 - leverage) (a 3-parameter
    fit to 4-6 points shrinks them; Davison & Hinkley 1997, eq. 6.9), centred and pooled over the
    budgets (per budget there are too few to resample). A replicate is dropped when a budget whose
    full-data vertex lies inside its sizes loses it: the vertex falls outside [smallest N, largest N]
    of that budget, or the parabola has no minimum. Returns (samples, intervals, info) with
    info = {"kind", "replicates", "kept", "dropped_edge", "dropped_failed"}.
    """
    N, loss, budget = (np.asarray(v, np.float64) for v in (N, loss, budget))
    log_n = np.log(N)
    full = fit_isoflop(N, loss, budget, min_points)
    interior = {}   # budget -> (log N range) for budgets whose full-data vertex is inside its sizes
    for p in full["profiles"]:
        in_budget = log_n[budget == p["budget"]]
        if in_budget.min() < math.log(p["N_opt"]) < in_budget.max():
            interior[p["budget"]] = (in_budget.min(), in_budget.max())
    fitted = loss.copy()
    pool, members = [], []
    for C in np.unique(budget[np.isfinite(budget)]):
        idx = np.flatnonzero(budget == C)
        if len(np.unique(log_n[idx])) < min_points:
            continue            # never fitted: its losses stay as they are
        values, leverage = _parabola_fit(log_n[idx], loss[idx])
        fitted[idx] = values
        members.append(idx)
        free = leverage < 1 - 1e-9          # a point the parabola goes through has no residual
        pool.append((loss[idx] - values)[free] / np.sqrt(1 - leverage[free]))
    pool = np.concatenate(pool) if pool else np.zeros(0)
    pool = pool - pool.mean() if len(pool) else np.zeros(1)
    rng = np.random.default_rng(seed)
    samples, dropped_edge, dropped_failed = [], 0, 0
    for _ in range(n_boot):
        resampled = fitted.copy()
        for idx in members:
            resampled[idx] = fitted[idx] + rng.choice(pool, size=len(idx), replace=True)
        try:
            fit = fit_isoflop(N, resampled, budget, min_points)
        except (ValueError, OverflowError, np.linalg.LinAlgError):
            dropped_failed += 1
            continue
        vertices = {p["budget"]: math.log(p["N_opt"]) for p in fit["profiles"]}
        if any(not (C in vertices and lo < vertices[C] < hi) for C, (lo, hi) in interior.items()):
            dropped_edge += 1
            continue
        values = {k: v for k, v in fit.items() if isinstance(v, float)}
        if all(math.isfinite(v) for v in values.values()):
            samples.append(values)
        else:
            dropped_failed += 1
    info = {"kind": "residual", "replicates": n_boot, "kept": len(samples),
            "dropped_edge": dropped_edge, "dropped_failed": dropped_failed}
    return samples, confidence_intervals(samples), info


def confidence_intervals(samples, level=0.95):
    """Percentile intervals and standard deviations of each parameter over bootstrap samples."""
    if not samples:
        return {}
    tail = 100 * (1 - level) / 2
    out = {}
    for name in samples[0]:
        values = np.array([s[name] for s in samples])
        with np.errstate(over="ignore"):  # a wild replicate (A ~ 1e66) makes the std inf, as it is
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name] = {"lo": float(np.percentile(values, tail)), "hi": float(np.percentile(values, 100 - tail)),
                     "std": std}
    return out


def bootstrap_chinchilla(N, D, loss, n_boot=100, seed=0, top_k=2, full_fit=None):
    """Bootstrap Approach 3 cheaply: each replicate starts from the full-data optimum plus the best top_k
    of the coarser BOOTSTRAP_GRID."""
    full_fit = full_fit or fit_chinchilla(N, D, loss)
    init = chinchilla_theta(full_fit)
    return bootstrap(lambda n, d, l: fit_chinchilla(n, d, l, top_k=top_k, extra_inits=[init], grid=BOOTSTRAP_GRID),
                     [N, D, loss], n_boot=n_boot, seed=seed)


def bootstrap_power_law(x, loss, fit_fn, full_fit, n_boot=100, seed=0, top_k=2):
    """Bootstrap fit_loss_vs_n or fit_loss_vs_d the same cheap way (full-data optimum + top_k starts)."""
    A, alpha = (full_fit["A"], full_fit["alpha"]) if "A" in full_fit else (full_fit["B"], full_fit["beta"])
    init = [math.log(A), math.log(full_fit["E"]), alpha]
    return bootstrap(lambda xs, ls: fit_fn(xs, ls, top_k=top_k, extra_inits=[init]),
                     [x, loss], n_boot=n_boot, seed=seed)


def extrapolation_check(N, D, loss, n_held_out=1, fit_fn=fit_chinchilla, budget=None):
    """Fit L(N, D) without part of the runs and predict those: the point of a scaling law.

    With IsoFLOP budgets (at least three), the largest budget is held out: its runs' losses are
    predicted, and so is its compute-optimal loss, against the vertex of its own IsoFLOP parabola.
    Without budgets, the n_held_out largest model sizes are held out instead."""
    N, D, loss = (np.asarray(v, np.float64) for v in (N, D, loss))
    budget = np.full(len(N), np.nan) if budget is None else np.asarray(budget, np.float64)
    budgets = np.unique(budget[np.isfinite(budget)])
    out = {}
    if len(budgets) >= 3:
        held_out = budget == budgets[-1]
        out["held_out_budget"] = float(budgets[-1])
    else:
        sizes = np.unique(N)
        if len(sizes) <= n_held_out + 1:
            raise ValueError(f"need more than {n_held_out + 1} distinct model sizes to hold out {n_held_out}")
        held_out = N >= sizes[-n_held_out]
        out["held_out_sizes"] = [float(s) for s in sizes[-n_held_out:]]
    params = fit_fn(N[~held_out], D[~held_out], loss[~held_out])
    predicted = predict_loss(params, N[held_out], D[held_out])
    relative_error = (predicted - loss[held_out]) / loss[held_out]
    out.update({"params": params, "N": N[held_out].tolist(), "D": D[held_out].tolist(),
                "observed": loss[held_out].tolist(), "predicted": predicted.tolist(),
                "relative_error": relative_error.tolist(),
                "mean_abs_relative_error": float(np.mean(np.abs(relative_error))),
                "max_abs_relative_error": float(np.max(np.abs(relative_error)))})
    if "held_out_budget" in out:
        C = out["held_out_budget"]
        optimum = {"predicted_loss": float(compute_optimal(params, C)["loss"])}
        profile = isoflop_profile(N[held_out], loss[held_out], C)
        if profile is not None:  # without a vertex only the runs are compared
            optimum["observed_loss"] = profile["loss_opt"]
            optimum["relative_error"] = (optimum["predicted_loss"] - profile["loss_opt"]) / profile["loss_opt"]
        out["compute_optimal"] = optimum
    return out

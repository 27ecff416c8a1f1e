"""`foundations fit RESULTS --predict C`: plan the next, bigger run from a fitted law.

For a compute budget C (FLOPs, C = 6·N·D with the fit's N), the Approach-3 law
L(N, D) = E + A/N^alpha + B/D^beta gives the compute-optimal N_opt = G·(C/6)^a, D_opt = C/(6·N_opt)
with a = beta/(alpha+beta) and G = (alpha·A/(beta·B))^(1/(alpha+beta)) (Hoffmann et al. 2022, eq. 4),
and its loss. The interval is the 2.5–97.5 percentile of the same prediction over the fit's
bootstrap replicates (the fit's uncertainty only: a single run's seed noise comes on top). The size
ladder (the sweep file's sizes, or the sizes in the results) gives the nearest trainable size, the
steps that spend C at that size, and that run's predicted loss.
"""

from __future__ import annotations

import math
import re

import numpy as np

from foundations.scaling import fit as F

LAW_KEYS = ("E", "A", "B", "alpha", "beta")


def parse_law(text: str) -> dict:
    """'E=1.69,A=406.4,B=410.7,alpha=0.34,beta=0.28' -> the law's parameters."""
    law = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in LAW_KEYS:
            raise ValueError(f"--law {text!r}: expected {','.join(k + '=...' for k in LAW_KEYS)}")
        law[key.strip()] = float(value)
    missing = [k for k in LAW_KEYS if k not in law]
    if missing:
        raise ValueError(f"--law {text!r}: missing {', '.join(missing)}")
    return law


def ladder_from_grid(sweep_file, n_column: str = "n_compute") -> list[dict]:
    """The sweep file's sizes: name, depth, width, the N the fit uses and tokens per step."""
    from foundations.config import config_from_tree
    from foundations.flops import param_counts, train_flops_per_token
    from foundations.scaling.grid import grid_sizes, load_grid, size_name, size_settings

    base, grid = load_grid(sweep_file)
    ladder = []
    for size in grid_sizes(grid):
        config = config_from_tree(size_settings(base, grid, size))
        m = config.model
        counts = param_counts(m, config.objective)
        n = {"n_compute": train_flops_per_token(m, config.data.seq_len, config.objective) / 6,
             "n_params": counts.non_embedding}[n_column]
        ladder.append({"name": size_name(m.num_layers, m.d_model), "num_layers": m.num_layers,
                       "d_model": m.d_model, "n": float(n), "batch_size": config.train.batch_size,
                       "tokens_per_step": config.train.batch_size * config.data.seq_len})
    return ladder


def ladder_from_results(rows, n_column: str) -> list[dict]:
    """The sizes the results hold (depth and width read from names like L3_d48; tokens per step
    from a run's curve, where it has one)."""
    from foundations.scaling.results import ResultsError, load_curve

    ladder = {}
    for row in rows:
        if row["size"] in ladder:
            continue
        match = re.fullmatch(r"L(\d+)_d(\d+)", row["size"])
        entry = {"name": row["size"], "num_layers": int(match[1]) if match else None,
                 "d_model": int(match[2]) if match else None, "n": float(row[n_column]),
                 "tokens_per_step": None}
        try:
            last = load_curve(row["curve_path"])[-1]
            if last["step"] > 0:
                entry["tokens_per_step"] = last["tokens"] / last["step"]
        except (OSError, ResultsError, IndexError, KeyError):
            pass
        ladder[row["size"]] = entry
    return sorted(ladder.values(), key=lambda e: e["n"])


def _interval(values) -> list[float] | None:
    values = np.asarray([v for v in values if math.isfinite(v)], np.float64)
    if len(values) < 2:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def predict(params: dict, C: float, samples=(), ladder=()) -> dict:
    """The compute-optimal allocation and loss at C, with bootstrap intervals where `samples`
    (replicates' parameters) are given, and the nearest size of `ladder` with its steps."""
    opt = F.compute_optimal(params, C)
    out = {"compute": float(C), "n_opt": float(opt["N_opt"]), "d_opt": float(opt["D_opt"]),
           "tokens_per_param": float(opt["tokens_per_param"]), "a": float(opt["a"]),
           "loss": float(opt["loss"]), "law": {k: float(params[k]) for k in LAW_KEYS},
           "n_bootstrap": len(samples)}
    with np.errstate(all="ignore"):
        replicas = [F.compute_optimal(s, C) for s in samples]
        out["loss_interval"] = _interval([float(r["loss"]) for r in replicas])
        out["n_opt_interval"] = _interval([float(r["N_opt"]) for r in replicas])
    if ladder:
        size = min(ladder, key=lambda e: abs(math.log(e["n"] / out["n_opt"])))
        tokens = C / (6 * size["n"])
        steps = None
        if size["tokens_per_step"]:
            steps = max(1, round(tokens / size["tokens_per_step"]))
            tokens = steps * size["tokens_per_step"]
        with np.errstate(all="ignore"):
            out["size"] = {"name": size["name"], "num_layers": size["num_layers"],
                           "d_model": size["d_model"], "batch_size": size.get("batch_size"),
                           "n": size["n"], "tokens": float(tokens),
                           "loss": float(F.predict_loss(params, size["n"], tokens)),
                           "loss_interval": _interval(
                               [float(F.predict_loss(s, size["n"], tokens)) for s in samples])}
        out["steps"] = steps
    return out


def train_command(sweep_file, p: dict, out_dir: str | None = None) -> str:
    """The `foundations sweep` command that trains exactly the planned run (the nearest ladder
    size for p['steps'] steps) on the sweep file's recipe: the grid narrowed to that one size and
    the budget those steps spend, so lr, batch, warmup and validation are the sweep's own; its
    results.jsonl then holds the run's validation loss, measured as every sweep run's is."""
    size = p["size"]
    budget = 6 * size["n"] * size["tokens"]
    out_dir = out_dir or f"runs/predict_C{p['compute']:.3g}".replace("+", "")
    return (f"foundations sweep {sweep_file} --out {out_dir} --bootstrap -1 "
            f"'grid.budgets=[{budget!r}]' "
            f"'grid.sizes=[[{size['num_layers']},{size['d_model']},{size['batch_size']}]]' "
            f"grid.sizes_per_budget=0 grid.min_steps=1 grid.max_steps={p['steps']} "
            f"grid.min_tokens_per_param=0 grid.max_tokens_per_param=0")


def format_prediction(p: dict) -> str:
    def interval(values, fmt):
        return f"  [{fmt.format(values[0])}, {fmt.format(values[1])}]" if values else ""

    lines = [f"At C = {p['compute']:.3g} FLOPs (C = 6·N·D), L(N, D) = "
             + " + ".join([f"{p['law']['E']:.4g}", f"{p['law']['A']:.4g}/N^{p['law']['alpha']:.3g}",
                           f"{p['law']['B']:.4g}/D^{p['law']['beta']:.3g}"]),
             f"  compute-optimal N = {p['n_opt']:.4g}{interval(p['n_opt_interval'], '{:.3g}')}, "
             f"D = {p['d_opt']:.4g} tokens (D/N = {p['tokens_per_param']:.1f}; N_opt ~ C^{p['a']:.3f})",
             f"  predicted loss = {p['loss']:.4f}{interval(p['loss_interval'], '{:.4f}')}"
             + (f"  (95% bootstrap interval, {p['n_bootstrap']} replicates)" if p["loss_interval"]
                else "  (no bootstrap: no interval)")]
    size = p.get("size")
    if size:
        steps = f", {p['steps']} steps" if p.get("steps") else " (tokens per step unknown: no steps)"
        lines.append(f"  nearest size on the ladder: {size['name']} (N = {size['n']:.4g}){steps}, "
                     f"{size['tokens']:.4g} tokens: predicted loss {size['loss']:.4f}"
                     f"{interval(size['loss_interval'], '{:.4f}')}")
    if p.get("command"):
        lines.append(f"  train it on the sweep's recipe:\n    {p['command']}")
    return "\n".join(lines)

"""A fake sweep drawn from a known Chinchilla law: results table + metrics.jsonl curves, for tests and demos.

Try the commands without training anything: write_sweep("/tmp/sweep"), then `foundations plot` on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRUE_LAW = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.36}
SIZE_LADDER = np.geomspace(2e5, 1e8, 10)
BUDGETS = (1e15, 3e15, 1e16, 3e16, 1e17)


def law_loss(N, D, law=TRUE_LAW):
    return law["E"] + law["A"] / np.asarray(N) ** law["alpha"] + law["B"] / np.asarray(D) ** law["beta"]


def optimal_n(C, law=TRUE_LAW):
    """Closed-form N_opt(C) of the law, to centre each IsoFLOP profile."""
    alpha, beta = law["alpha"], law["beta"]
    G = (alpha * law["A"] / (beta * law["B"])) ** (1 / (alpha + beta))
    return G * (C / 6) ** (beta / (alpha + beta))


def synthetic_points(noise=0.005, seed=0, sizes_per_budget=7, budgets=BUDGETS, law=TRUE_LAW):
    """(N, D, loss, budget) arrays: for each budget the sizes of the ladder nearest its optimum, D = C/(6N)."""
    rng = np.random.default_rng(seed)
    N, D, budget = [], [], []
    for C in budgets:
        nearest = np.argsort(np.abs(np.log(SIZE_LADDER) - np.log(optimal_n(C, law))))[:sizes_per_budget]
        for n in np.sort(SIZE_LADDER[nearest]):
            N.append(n), D.append(C / (6 * n)), budget.append(C)
    N, D, budget = np.array(N), np.array(D), np.array(budget)
    loss = law_loss(N, D, law) * np.exp(noise * rng.standard_normal(len(N)))
    return N, D, loss, budget


def write_sweep(out_dir, with_probe=True, fmt="jsonl", noise=0.005, seed=0):
    """Write results.jsonl (or .csv) and runs/<id>/metrics.jsonl under out_dir; returns the results path."""
    out_dir = Path(out_dir)
    N, D, loss, budget = synthetic_points(noise=noise, seed=seed)
    rows = []
    for i, (n, d, l, c) in enumerate(zip(N, D, loss, budget)):
        run_id = f"run{i:03d}"
        curve = Path("runs") / run_id / "metrics.jsonl"
        (out_dir / curve).parent.mkdir(parents=True, exist_ok=True)
        with open(out_dir / curve, "w") as f:
            for step in range(1, 21):
                tokens = int(d * step / 20)
                record = {"step": step * 10, "loss": float(law_loss(n, tokens) + 0.01), "tokens": tokens}
                if step % 5 == 0:
                    record["val_loss"] = float(law_loss(n, tokens))
                f.write(json.dumps(record) + "\n")
        row = {"run_id": run_id, "size": f"s{int(np.argmin(np.abs(SIZE_LADDER - n)))}", "n_params": int(n),
               "n_params_total": int(n) + 65536, "tokens": int(d), "flops_6nd": float(6 * n * int(d)),
               "flops": float(6.6 * n * int(d)), "train_loss": float(l + 0.01), "val_loss": float(l),
               "budget": float(c), "curve": str(curve), "wall_time_s": 1.0 + n * 1e-7}
        if with_probe:
            from foundations.scaling.probe import wilson_interval
            acc = float(1 / (1 + np.exp((l - 5.5) / 0.3)))
            lo, hi = wilson_interval(round(200 * acc), 200)
            row.update(probe_acc=acc, probe_acc_lo=lo, probe_acc_hi=hi, probe_logprob=float(-0.6 * l))
        rows.append(row)
    if fmt == "jsonl":
        path = out_dir / "results.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = out_dir / "results.csv"
        names = list(rows[0])
        path.write_text(",".join(names) + "\n" + "".join(",".join(str(r[k]) for k in names) + "\n" for r in rows))
    return path

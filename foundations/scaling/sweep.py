"""`foundations sweep`: train every run of a scaling grid through the ordinary trainer.

Runs go one after another (or every N-th with --shard I/N, for several processes or hosts over
one shared directory). A finished run leaves result.json in its directory and is skipped next
time; an interrupted one resumes from its checkpoint. After each run the results table
(results.jsonl: one row per finished run) and a status view (status.txt) are rewritten. Once
every run is done, the command fits the laws and draws the figures (scaling/cli.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from foundations.config import ConfigError
from foundations.scaling.grid import describe, load_grid, plan_runs


def final_train_loss(run_dir: Path) -> float:
    from foundations.train.metrics import read_metrics
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    return losses[-1]


def result_row(spec, run_dir: Path, out_dir: Path, summary: dict, wall_time: float) -> dict:
    row = {"run_id": spec.run_id, "size": spec.size, "n_params": spec.n_params,
           "n_params_total": spec.n_params_total, "n_compute": spec.n_compute, "tokens": spec.tokens,
           "flops_6nd": spec.flops_6nd, "flops": spec.flops,
           "train_loss": final_train_loss(run_dir), "val_loss": summary["val_loss"],
           "budget": spec.budget, "curve": str((run_dir / "metrics.jsonl").relative_to(out_dir)),
           "wall_time_s": round(wall_time, 2)}
    row.update({k: v for k, v in summary.items() if k.startswith("probe_")})
    return row


def write_tables(runs, out_dir: Path, running: str | None = None) -> list[dict]:
    """Rewrites results.jsonl (finished runs, in plan order) and status.txt (every run)."""
    rows, status = [], []
    for spec in runs:
        result_file = out_dir / "runs" / spec.run_id / "result.json"
        if result_file.exists():
            row = json.loads(result_file.read_text())
            rows.append(row)
            status.append(f"done     {spec.run_id:<22} val_loss {row['val_loss']:.4f}  "
                          f"{row['wall_time_s']:7.1f} s")
        else:
            state = "running" if spec.run_id == running else "pending"
            status.append(f"{state:<8} {spec.run_id:<22} {spec.config.train.steps} steps")
    (out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = f"{len(rows)}/{len(runs)} runs done\n"
    (out_dir / "status.txt").write_text(header + "\n".join(status) + "\n")
    return rows


def run_sweep(sweep_file, out_dir, overrides=(), shard: tuple[int, int] = (0, 1),
              progress: bool = False, stop_after_runs: int | None = None) -> list[dict]:
    """Trains the grid's runs that are not finished yet; returns the results rows.

    `stop_after_runs` ends the sweep after that many newly finished runs (tests use it to
    stand for an interruption)."""
    from foundations.data.pipeline import load_text_data
    from foundations.scaling.probe import next_word_probe
    from foundations.train import log, train

    base, grid = load_grid(sweep_file, list(overrides))
    runs = plan_runs(base, grid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.txt").write_text(describe(runs) + "\n")
    log(describe(runs))
    data = load_text_data(runs[0].config.data)  # every run reads the same text
    val_text = data.tokenizer.decode(data.val_tokens)

    def probe(trainer, state, data):
        if not grid.probe_examples:
            return {}
        return next_word_probe(trainer, state["params"], data.tokenizer, val_text,
                               grid.probe_examples)

    index, count = shard
    finished_now = 0
    for i, spec in enumerate(runs):
        run_dir = out_dir / "runs" / spec.run_id
        if i % count != index or (run_dir / "result.json").exists():
            continue
        write_tables(runs, out_dir, running=spec.run_id)
        log(f"[{i + 1}/{len(runs)}] {spec.run_id}: N={spec.n_params:,} D={spec.tokens:,} "
            f"({spec.config.train.steps} steps)")
        start = time.perf_counter()
        summary = train(spec.config, run_dir, progress=progress, data=data, after_training=probe)
        row = result_row(spec, run_dir, out_dir, summary, time.perf_counter() - start)
        (run_dir / "result.json").write_text(json.dumps(row))
        finished_now += 1
        if stop_after_runs is not None and finished_now >= stop_after_runs:
            break
    rows = write_tables(runs, out_dir)
    log((out_dir / "status.txt").read_text())
    return rows


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def _sweep_command(args) -> None:
    if args.plan:   # the grid only: nothing is trained or written
        print(describe(plan_runs(*load_grid(args.sweep, list(args.overrides)))))
        return
    if not args.out:
        raise ConfigError("foundations sweep: --out DIR is required (or --plan to list the grid)")
    rows = run_sweep(args.sweep, args.out, args.overrides, _parse_shard(args.shard),
                     progress=args.progress)
    results = Path(args.out) / "results.jsonl"
    planned = len(plan_runs(*load_grid(args.sweep, list(args.overrides))))
    print(f"results: {results} ({len(rows)} of {planned} runs)")
    if len(rows) < planned or args.bootstrap < 0:
        return  # another shard is still running, or no report was asked for
    from foundations.scaling.cli import write_report
    written = write_report(results, Path(args.out) / "plots", n_boot=args.bootstrap)
    print((Path(args.out) / "fit.txt").read_text())
    print("wrote " + ", ".join(str(p) for p in written))


def add_sweep_parser(commands) -> None:
    p = commands.add_parser("sweep", help="train a scaling grid (resumable)")
    p.add_argument("sweep", help="sweep YAML, e.g. experiments/scaling/gutenberg.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value or grid.key=value")
    p.add_argument("--out", help="sweep directory (results.jsonl, runs/); needed unless --plan")
    p.add_argument("--plan", action="store_true",
                   help="print the planned runs (size, D, D/N, steps, batch, lr) and stop")
    p.add_argument("--shard", default="0/1", help="run every N-th run starting at I (I/N)")
    p.add_argument("--progress", action="store_true", help="a progress bar per run")
    p.add_argument("--bootstrap", type=int, default=100,
                   help="when every run is done: fit (fit.json, fit.txt) and plot (plots/) with "
                        "this many bootstrap resamples; -1: no fit or plots")
    p.set_defaults(func=_sweep_command)

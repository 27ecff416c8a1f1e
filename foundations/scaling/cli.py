"""`foundations fit RESULTS` and `foundations plot RESULTS --out DIR`: the main CLI adds these subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _add_common(parser, optional_results=False):
    parser.add_argument("results", type=Path, nargs="?" if optional_results else None,
                        help="the sweep's results.jsonl or results.csv")
    parser.add_argument("--loss", default="val_loss", choices=["val_loss", "train_loss"],
                        help="which final loss to fit (default: val_loss)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def add_fit_parser(subparsers):
    """Add `fit RESULTS [--out FILE.json] [--bootstrap N]`."""
    parser = subparsers.add_parser("fit", help="fit scaling laws to a sweep's results and print a report")
    _add_common(parser, optional_results=True)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the fit as JSON (default: fit.json next to RESULTS)")
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for intervals (default 100)")
    parser.add_argument("--predict", type=float, default=None, metavar="C",
                        help="instead of the report: the compute-optimal N and D at C FLOPs, the nearest "
                             "size of the ladder with its steps, and the predicted loss with a bootstrap "
                             "interval (writes no fit.json)")
    parser.add_argument("--json", action="store_true", help="with --predict: print one JSON object")
    parser.add_argument("--grid", type=Path, default=None, metavar="SWEEP.yaml",
                        help="with --predict: the size ladder of this sweep file (default: the sizes in RESULTS)")
    parser.add_argument("--law", default=None, metavar="E=..,A=..,B=..,alpha=..,beta=..",
                        help="with --predict: use this L(N, D) (e.g. a published fit) instead of fitting "
                             "RESULTS (which then only gives the ladder, and is optional)")
    parser.set_defaults(func=run_fit)
    return parser


def add_plot_parser(subparsers):
    """Add `plot RESULTS --out DIR`."""
    parser = subparsers.add_parser("plot", help="plot loss curves, fitted laws and compute-optimal allocation")
    _add_common(parser)
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNG and SVG figures")
    parser.add_argument("--bootstrap", type=int, default=50,
                        help="bootstrap resamples for the confidence bands (default 50)")
    parser.set_defaults(func=run_plot)
    return parser


def run_predict(args):
    """`fit --predict C`: fit Approach 3 (with its bootstrap) or take --law, and plan a run at C."""
    from foundations.scaling import fit as F
    from foundations.scaling.predict import (format_prediction, ladder_from_grid, ladder_from_results,
                                             parse_law, predict, train_command)
    from foundations.scaling.results import ResultsError, columns, load_results, size_column

    if args.predict <= 0:
        raise ResultsError(f"--predict {args.predict}: the compute budget must be > 0 FLOPs")
    rows = load_results(args.results) if args.results is not None else []
    n_column = size_column(rows) if rows else "n_compute"
    samples = []
    if args.law:
        try:
            params = parse_law(args.law)
        except ValueError as err:
            raise ResultsError(str(err)) from None
    else:
        N, D, loss = columns(rows, n_column, "tokens", args.loss)
        params = F.fit_chinchilla(N, D, loss)
        if args.bootstrap:
            samples, _ = F.bootstrap_chinchilla(N, D, loss, n_boot=args.bootstrap, seed=args.seed,
                                                full_fit=params)
    if not (params["alpha"] > 0 and params["beta"] > 0):
        raise ResultsError(f"--predict: the fitted L(N, D) has no compute-optimal allocation "
                           f"(alpha={params['alpha']:.3g}, beta={params['beta']:.3g}; both must be "
                           f"> 0); see the fit's report, or pass a law with --law")
    ladder = (ladder_from_grid(args.grid, n_column) if args.grid is not None
              else ladder_from_results(rows, n_column) if rows else [])
    prediction = predict(params, args.predict, samples, ladder)
    if args.grid is not None and prediction.get("steps"):
        prediction["command"] = train_command(args.grid, prediction)
    print(json.dumps(prediction) if args.json else format_prediction(prediction))
    return 0


def run_fit(args):
    """Load, fit, print the report, write the JSON (with --predict: plan a run instead)."""
    from foundations.scaling.report import analyse, format_report, to_json
    from foundations.scaling.results import ResultsError, load_results

    if args.results is None and not (args.predict is not None and args.law):
        raise ResultsError("fit needs RESULTS (a results.jsonl or .csv), unless --predict comes with --law")
    if args.predict is not None:
        return run_predict(args)
    if args.json or args.grid or args.law:
        raise ResultsError("--json, --grid and --law go with --predict C")
    rows = load_results(args.results)
    analysis = analyse(rows, loss_column=args.loss, n_boot=args.bootstrap, seed=args.seed)
    print(format_report(analysis))
    out = args.out or Path(args.results).parent / "fit.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(analysis), indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def run_plot(args):
    """Load, fit, draw every figure into --out."""
    from foundations.scaling.plots import plot_all
    from foundations.scaling.report import analyse
    from foundations.scaling.results import load_results

    rows = load_results(args.results)
    analysis = analyse(rows, loss_column=args.loss, n_boot=args.bootstrap, seed=args.seed)
    for path in plot_all(rows, analysis, args.out):
        print(f"wrote {path}")
    return 0


def write_report(results: Path, plots_dir: Path, loss_column: str = "val_loss",
                 n_boot: int = 100, seed: int = 0) -> list[Path]:
    """One analysis of a results table -> fit.json and fit.txt (the printed report) beside it,
    and every figure into plots_dir: what `foundations sweep` leaves when the grid is done."""
    from foundations.scaling.plots import plot_all
    from foundations.scaling.report import analyse, format_report, to_json
    from foundations.scaling.results import load_results

    rows = load_results(results)
    analysis = analyse(rows, loss_column=loss_column, n_boot=n_boot, seed=seed)
    fit_json, fit_txt = Path(results).parent / "fit.json", Path(results).parent / "fit.txt"
    fit_json.write_text(json.dumps(to_json(analysis), indent=2) + "\n")
    fit_txt.write_text(format_report(analysis) + "\n")
    return [fit_json, fit_txt, *plot_all(rows, analysis, plots_dir)]


def main(argv=None):
    """Stand-alone entry point (python -m foundations.scaling.cli fit|plot ...) until the main CLI lands."""
    parser = argparse.ArgumentParser(prog="foundations")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(subparsers)
    add_plot_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

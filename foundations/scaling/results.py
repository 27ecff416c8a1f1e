"""Read the sweep's results table (results.jsonl or results.csv) and each run's metrics.jsonl curve.

Errors name the file, the line and the column, so a broken sweep output is quick to find.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from foundations.data.files import jsonl_records

# column -> type; the sweep writes exactly these (plus optional ones below).
RESULT_COLUMNS = {
    "run_id": str, "size": str, "n_params": int, "n_params_total": int, "tokens": int,
    "flops_6nd": float, "flops": float, "train_loss": float, "val_loss": float,
    "budget": float, "curve": str, "wall_time_s": float,
}
NULLABLE_COLUMNS = {"budget"}
OPTIONAL_COLUMNS = {"probe_acc": float, "probe_acc_lo": float, "probe_acc_hi": float,
                    "probe_logprob": float, "n_compute": float}


class ResultsError(ValueError):
    """A results table or curve file that cannot be read; the message says where."""


def _convert(value, kind, where):
    """Coerce one cell to int/float/str; CSV gives strings, JSON gives numbers."""
    try:
        if kind is str:
            return str(value)
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError(f"{value!r} is not an integer")
            return int(as_float)
        out = float(value)
        if math.isnan(out):
            raise ValueError("NaN")
        return out
    except (TypeError, ValueError) as err:
        raise ResultsError(f"{where}: cannot read {value!r} as {kind.__name__} ({err})") from None


def _check_row(raw, path, line_no):
    """Validate one row's columns and types; returns a clean dict."""
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}, line {line_no}: expected a JSON object, got {type(raw).__name__}")
    row = {}
    for column, kind in RESULT_COLUMNS.items():
        where = f"{path}, line {line_no}, column {column!r}"
        if column not in raw:
            raise ResultsError(f"{where}: missing (have: {', '.join(sorted(raw))})")
        value = raw[column]
        if column in NULLABLE_COLUMNS and value in (None, "", "null", "None"):
            row[column] = None
            continue
        row[column] = _convert(value, kind, where)
    for column, kind in OPTIONAL_COLUMNS.items():
        if raw.get(column) not in (None, "", "null", "None"):
            row[column] = _convert(raw[column], kind, f"{path}, line {line_no}, column {column!r}")
    return row


def load_results(path) -> list[dict]:
    """Load results.jsonl (one JSON object a line) or results.csv (header + rows), chosen by suffix.

    Each row also gets "curve_path": the absolute path of its metrics.jsonl (curve is relative to the file).
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file")
    rows = []
    if path.suffix == ".jsonl":
        for line_no, raw in jsonl_records(path, path.read_text(), ResultsError):
            rows.append(_check_row(raw, path, line_no))
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ResultsError(f"{path}, line 1 (header): missing column(s) {', '.join(missing)}")
            for raw in reader:
                if None in raw or None in raw.values():
                    raise ResultsError(f"{path}, line {reader.line_num}: wrong number of fields")
                rows.append(_check_row(raw, path, reader.line_num))
    else:
        raise ResultsError(f"{path}: expected a .jsonl or .csv results file")
    if not rows:
        raise ResultsError(f"{path}: no runs in the results file")
    for row in rows:
        row["curve_path"] = str((path.parent / row["curve"]).resolve())
    return rows


def load_curve(path) -> list[dict]:
    """Load one run's metrics.jsonl: dicts with at least step, loss, tokens (val_loss where validation ran)."""
    path = Path(path)
    points = []
    for line_no, record in jsonl_records(path, path.read_text(), ResultsError):
        for column in ("step", "loss", "tokens"):
            if column not in record:
                raise ResultsError(f"{path}, line {line_no}, column {column!r}: missing")
        points.append(record)
    return points


def size_column(rows) -> str:
    """The N of every fit and figure, chosen once per table: `n_compute` (training FLOPs per token / 6,
    so C = 6·N·D holds exactly, output head and attention included) where the sweep recorded it, else
    `n_params` (non-embedding parameters, as published tables give N)."""
    return "n_compute" if rows and all(r.get("n_compute") is not None for r in rows) else "n_params"


def columns(rows, *names):
    """Pull columns out of loaded rows as float arrays (None -> NaN): N, D = columns(rows, "n_params", "tokens")."""
    return [np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows]) for name in names]

"""Context extension, measured: the perplexity of runs at several window lengths.

A RoPE model trained at length L reads 2L after `model.positions.scaling` (linear position
interpolation or NTK-aware theta, models/positions.py) and a short fine-tune started with
`train.init_from` (the parameters keep their shapes). The table compares the base run and the
extended runs at the old and the new length (experiments/context/ has the recipe).
"""

from __future__ import annotations

from pathlib import Path

from foundations.config import ConfigError
from foundations.run import load_run, read_config


def perplexity_at(run_dir: str | Path, files: list[str], length: int, batch_size: int = 8,
                  max_batches: int = 0, overrides: list[str] = ()) -> float:
    """The validation perplexity of run_dir's latest checkpoint on `files`, read in windows of
    `length` tokens (its RoPE positions run to length - 1)."""
    from foundations.data.files import expand_files
    from foundations.data.text import tokenize_files
    from foundations.train.score import score_run
    model = read_config(run_dir, overrides).model
    if model.positions.kind == "learned" and length > model.max_seq_len:
        raise ConfigError(f"{run_dir}: a learned position table of model.max_seq_len="
                          f"{model.max_seq_len} cannot read {length} tokens")
    longest = max(length, model.max_seq_len)
    run = load_run(run_dir, [*overrides, f"data.seq_len={length}",
                             f"model.max_seq_len={longest}"])
    tokens, n_bytes = tokenize_files(expand_files(files), run.tokenizer)
    try:   # windows side by side, as `foundations eval` scores a text
        result = score_run(run, tokens, n_bytes / len(tokens), batch_size, length, max_batches)
    except ConfigError as e:
        raise ConfigError(f"{', '.join(files)}: {e}") from None
    if "ppl" not in result:
        raise ConfigError(f"{run_dir}: objective.kind={run.config.objective.kind} reports no "
                          "perplexity")
    return result["ppl"]


def perplexity_table(run_dirs: list[str], files: list[str], lengths: list[int],
                     batch_size: int = 8, max_batches: int = 0,
                     overrides: list[str] = ()) -> dict[str, dict[int, float]]:
    """{run: {length: perplexity}} for every run at every length."""
    if not lengths or min(lengths) < 1:
        raise ConfigError(f"--lengths must be positive window lengths (got {lengths})")
    return {str(run): {n: perplexity_at(run, files, n, batch_size, max_batches, overrides)
                       for n in lengths} for run in run_dirs}


def format_table(table: dict[str, dict[int, float]]) -> str:
    """A text table: one row per run, one perplexity column per length."""
    lengths = sorted({n for row in table.values() for n in row})
    width = max(len("run"), *map(len, table))
    lines = ["run".ljust(width) + "".join(f"  ppl@{n:<6}" for n in lengths)]
    for run, row in table.items():
        lines.append(run.ljust(width) + "".join(f"  {row[n]:<10.3f}" for n in lengths))
    return "\n".join(lines)

"""A scaling grid: model sizes crossed with compute budgets (IsoFLOP).

Sizes are either an explicit ladder, `grid.sizes: [[layers, d_model], [layers, d_model,
batch_size], ...]` (a fine ladder, ~1.5x apart, with a batch size per size), or, in older sweep
files, depths of one shape family (d_model = aspect_ratio * num_layers); heads are of head_dim.
For each FLOP budget C, every size whose token budget D = C / (training FLOPs per token) gives
between min_steps and max_steps optimizer steps, and D/N within [min_tokens_per_param,
max_tokens_per_param], is a candidate; sizes that miss are dropped (never truncated, so a budget
keeps both arms of its profile), and with sizes_per_budget only the candidates nearest D/N =
tokens_per_param are trained: the IsoFLOP design of Hoffmann et al. (2022), Approach 2. The FLOPs per token are the
family's exact count (foundations/flops.py: every matmul, the output head and attention scores), so
the runs of one budget really spend the same compute; each run records that count as n_compute =
FLOPs per token / 6 (C = 6·n_compute·D, the N the fits use) beside its non-embedding n_params.
Learning rate follows width: lr = lr_base * (lr_width / d). Each run's cosine runs to its own
length, with warmup_fraction of its steps as warmup.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from foundations.config import (Config, ConfigError, build_section, config_from_tree, knob,
                                parse_override, set_path)
from foundations.flops import param_counts, train_flops_per_token


@dataclass(frozen=True)
class GridConfig:
    """The `grid:` section of a sweep file."""
    sizes: tuple[tuple[int, ...], ...] = knob((), "model sizes: [layers, d_model] or [layers, "
                                              "d_model, batch_size]; empty: depths x aspect_ratio")
    depths: tuple[int, ...] = knob((1, 2, 3, 4, 5, 6, 7, 8), "model sizes, by depth (without sizes)")
    aspect_ratio: int = knob(16, "d_model / num_layers", "> 0")
    head_dim: int = knob(16, "head size of every size", "> 0")
    budgets: tuple[float, ...] = knob((1e12, 3e12), "FLOP budgets C (exact training FLOPs)")
    min_steps: int = knob(20, "sizes that would get fewer steps at a budget are left out", "> 0")
    max_steps: int = knob(3000, "... and so are sizes that would get more", "> 0")
    sizes_per_budget: int = knob(0, "per budget, the sizes nearest tokens_per_param (0: all)", ">= 0")
    tokens_per_param: float = knob(20.0, "D/N the sizes of a budget centre on (Chinchilla's 20)",
                                   "> 0")
    min_tokens_per_param: float = knob(0.0, "sizes whose D/N at a budget is below are left out "
                                            "(0: no bound)", ">= 0")
    max_tokens_per_param: float = knob(0.0, "... and so are those above (0: no bound)", ">= 0")
    lr_base: float = knob(3e-3, "learning rate at width lr_width", "> 0")
    lr_width: int = knob(64, "the width lr_base is for", "> 0")
    warmup_fraction: float = knob(0.1, "warmup, as a share of each run's steps", "[0, 1]")
    val_points: int = knob(0, "validation losses along each run, for the loss-vs-compute curves "
                              "(0: only the final one)", ">= 0")
    probe_examples: int = knob(200, "next-word probe on validation text; 0: no probe", ">= 0")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    size: str
    budget: float
    config: Config
    n_params: int                  # non-embedding (an MoE's: all experts)
    n_params_total: int
    n_compute: float               # training FLOPs per token / 6
    tokens: int
    flops_6nd: float
    flops: float                   # exact: train_flops_per_token (foundations/flops.py) · D


def load_grid(path: str | Path, overrides: list[str] = ()) -> tuple[dict, GridConfig]:
    """A sweep file has `base:` (the settings of an ordinary config) and `grid:` sections;
    overrides are `section.key=value` for the base config or `grid.key=value`. Returns the base
    settings (checked) and the grid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    tree = yaml.safe_load(path.read_text()) or {}
    unknown = set(tree) - {"base", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected base, grid")
    base, grid = tree.get("base") or {}, tree.get("grid") or {}
    for text in overrides:
        dotted, value = parse_override(text)
        set_path(grid if dotted[0] == "grid" else base, dotted[1:] if dotted[0] == "grid"
                 else dotted, value)
    config_from_tree(base)  # a bad base setting is reported before any planning
    return base, build_section(GridConfig, grid, "grid")


def grid_sizes(grid: GridConfig) -> list[tuple[int, int, int | None]]:
    """The ladder as (layers, d_model, batch_size or None for the base's), smallest first as
    written: grid.sizes, or else grid.depths with d_model = aspect_ratio * depth."""
    if not grid.sizes:
        return [(depth, grid.aspect_ratio * depth, None) for depth in grid.depths]
    out = []
    for i, size in enumerate(grid.sizes):
        if len(size) not in (2, 3) or min(size) <= 0:
            raise ConfigError(f"grid.sizes[{i}]={list(size)}: expected [layers, d_model] or "
                              "[layers, d_model, batch_size] of positive integers")
        out.append((size[0], size[1], size[2] if len(size) == 3 else None))
    return out


def size_name(layers: int, d_model: int) -> str:
    return f"L{layers}_d{d_model}"


def size_settings(base: dict, grid: GridConfig, size) -> dict:
    """The base settings with the model of this size (width, heads, derived sizes, lr, and the
    size's batch). `size` is (layers, d_model[, batch_size]) or, as before, a depth."""
    if isinstance(size, int):
        size = (size, grid.aspect_ratio * size, None)
    layers, d_model, batch_size = (*size, None)[:3]
    if d_model % grid.head_dim:
        raise ConfigError(f"grid: d_model {d_model} ({size_name(layers, d_model)}) is not a "
                          f"multiple of grid.head_dim={grid.head_dim}")
    tree = copy.deepcopy(base)
    settings = {"model.num_layers": layers, "model.d_model": d_model,
                "model.num_heads": d_model // grid.head_dim, "model.num_kv_heads": None,
                "model.head_dim": None, "model.d_ff": None,
                "optimizer.lr": grid.lr_base * grid.lr_width / d_model}
    if batch_size is not None:
        settings["train.batch_size"] = batch_size
    for dotted, value in settings.items():
        set_path(tree, dotted.split("."), value)
    return tree


def plan_runs(base: dict, grid: GridConfig) -> list[RunSpec]:
    """Every (size, budget) pair whose step count lies in [min_steps, max_steps] and whose D/N
    lies in [min_tokens_per_param, max_tokens_per_param] (where set); with
    grid.sizes_per_budget, only that many sizes per budget, those whose D/N is nearest
    grid.tokens_per_param (a guess at the optimum the profile should straddle)."""
    runs = []
    sizes = grid_sizes(grid)
    for budget in grid.budgets:
        in_budget = []
        for size in sizes:
            tree = size_settings(base, grid, size)
            set_path(tree, ["schedule", "warmup_steps"], 0)
            sized = config_from_tree(tree)
            counts = param_counts(sized.model, sized.objective)
            flops_per_token = train_flops_per_token(sized.model, sized.data.seq_len, sized.objective)
            tokens_per_step = sized.train.batch_size * sized.data.seq_len
            steps = round(budget / flops_per_token / tokens_per_step)
            if not grid.min_steps <= steps <= grid.max_steps:
                continue
            ratio = steps * tokens_per_step / (flops_per_token / 6)
            if (grid.min_tokens_per_param and ratio < grid.min_tokens_per_param
                    or grid.max_tokens_per_param and ratio > grid.max_tokens_per_param):
                continue
            set_path(tree, ["train", "steps"], steps)
            # a fraction below 1 is a share of the run (schedule.warmup_steps); 1: all of it
            warmup = (grid.warmup_fraction if 0 < grid.warmup_fraction < 1
                      else int(grid.warmup_fraction * steps))
            set_path(tree, ["schedule", "warmup_steps"], warmup)
            if grid.val_points:
                set_path(tree, ["train", "eval_every"], max(1, steps // grid.val_points))
            config = config_from_tree(tree)
            tokens = steps * tokens_per_step
            name = size_name(config.model.num_layers, config.model.d_model)
            in_budget.append(RunSpec(
                run_id=f"{name}_C{budget:.3g}".replace("+", ""), size=name, budget=budget,
                config=config,
                n_params=counts.non_embedding, n_params_total=counts.total,
                n_compute=flops_per_token / 6, tokens=tokens,
                flops_6nd=6.0 * counts.active * tokens, flops=flops_per_token * tokens))
        if grid.sizes_per_budget:
            distance = lambda r: abs(math.log(r.tokens / r.n_compute / grid.tokens_per_param))  # noqa: E731
            nearest = {r.run_id for r in sorted(in_budget, key=distance)[:grid.sizes_per_budget]}
            in_budget = [r for r in in_budget if r.run_id in nearest]
        runs += in_budget
    if not runs:
        raise ConfigError("grid: no (size, budget) pair gives between grid.min_steps and "
                          "grid.max_steps steps (within the D/N bounds); widen the budgets or "
                          "the ranges")
    return runs


def describe(runs: list[RunSpec]) -> str:
    """A table of the planned runs, for the user to read before spending the compute."""
    lines = [f"{'run':<22}{'N (non-emb)':>12}{'N total':>10}{'n_compute':>11}{'tokens':>11}"
             f"{'D/N':>7}{'steps':>7}{'exact C':>10}{'batch':>6}{'lr':>9}"]
    for r in runs:
        lines.append(f"{r.run_id:<22}{r.n_params:>12,}{r.n_params_total:>10,}{r.n_compute:>11,.0f}"
                     f"{r.tokens:>11,}{r.tokens / r.n_compute:>7.1f}{r.config.train.steps:>7}"
                     f"{r.flops:>10.2e}{r.config.train.batch_size:>6}{r.config.optimizer.lr:>9.2e}")
    total = sum(r.flops for r in runs)
    lines.append(f"{len(runs)} runs, {total:.2e} FLOPs in all (log10 = {math.log10(total):.1f})")
    return "\n".join(lines)

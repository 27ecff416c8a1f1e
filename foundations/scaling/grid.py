"""A scaling grid: model sizes of a fixed shape family crossed with compute budgets (IsoFLOP).

Sizes grow depth and width together (d_model = aspect_ratio * num_layers, heads of head_dim), so
one number, the depth, names a size. For each FLOP budget C, every size whose token budget
D = C / (6N) gives between min_steps and max_steps optimizer steps is trained: the IsoFLOP design
of Hoffmann et al. (2022), Approach 2. N is the non-embedding count a token passes through (an
MoE's k routed experts, not all E); each run also records its exact C, the family's own count
from models/flops.py. Learning rate follows width: lr = lr_base * (lr_width / d).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from foundations.config import (Config, ConfigError, apply_dict, resolved_model, set_field,
                                validate)
from foundations.models.flops import param_counts, train_flops_per_token


@dataclass
class GridConfig:
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    aspect_ratio: int = 16         # d_model / num_layers
    head_dim: int = 16
    budgets: list[float] = field(default_factory=lambda: [1e12, 3e12])   # FLOPs, 6·N·D
    min_steps: int = 20            # sizes that would get fewer steps at a budget are left out
    max_steps: int = 3000          # ... and so are sizes that would get more
    lr_base: float = 3e-3          # learning rate at width lr_width
    lr_width: int = 64
    warmup_fraction: float = 0.1   # of each run's steps
    probe_examples: int = 200      # next-word probe on validation text; 0: no probe


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    size: str
    budget: float
    config: Config
    n_params: int                  # non-embedding (an MoE's: all experts)
    n_params_total: int
    tokens: int
    flops_6nd: float
    flops: float                   # exact: train_flops_per_token (models/flops.py) · D


def load_grid(path: str | Path, overrides: list[str] = ()) -> tuple[Config, GridConfig]:
    """A sweep file has `base:` (an ordinary config) and `grid:` sections; overrides are
    `section.key=value` for the base config or `grid.key=value`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    tree = yaml.safe_load(path.read_text()) or {}
    unknown = set(tree) - {"base", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected base, grid")
    base = apply_dict(Config(), tree.get("base") or {}, source=f"{path}: base")
    grid = GridConfig()
    for key, value in (tree.get("grid") or {}).items():
        set_field(grid, "grid", key, value)
    from foundations.config import parse_override
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "grid":
            set_field(grid, "grid", key, value)
        else:
            apply_dict(base, {section: {key: value}}, source="override")
    validate(base)
    return base, grid


def size_config(base: Config, grid: GridConfig, depth: int) -> Config:
    d_model = grid.aspect_ratio * depth
    if d_model % grid.head_dim:
        raise ConfigError(f"grid: d_model {d_model} (depth {depth}) is not a multiple of "
                          f"grid.head_dim={grid.head_dim}")
    model = dataclasses.replace(base.model, num_layers=depth, d_model=d_model,
                                num_heads=d_model // grid.head_dim, num_kv_heads=0, head_dim=0,
                                d_ff=0)
    optimizer = dataclasses.replace(base.optimizer,
                                    lr=grid.lr_base * grid.lr_width / d_model)
    return dataclasses.replace(base, model=model, optimizer=optimizer)


def plan_runs(base: Config, grid: GridConfig) -> list[RunSpec]:
    """Every (size, budget) pair whose step count lies in [min_steps, max_steps]."""
    # imported here: data.pipeline pulls in grain and JAX, which the CLI must not start before
    # `foundations compile` has set XLA_FLAGS
    from foundations.data.pipeline import configured_tokenizer
    vocab = configured_tokenizer(base.data.tokenizer).vocab_size
    tokens_per_step = base.train.batch_size * base.data.seq_len
    runs = []
    for budget in grid.budgets:
        for depth in grid.depths:
            config = size_config(base, grid, depth)
            model = resolved_model(config, vocab)
            counts = param_counts(model, config.train)
            steps = round(budget / (6 * counts.active) / tokens_per_step)
            if not grid.min_steps <= steps <= grid.max_steps:
                continue
            schedule = dataclasses.replace(config.schedule,
                                           warmup_steps=max(1, int(grid.warmup_fraction * steps)))
            train = dataclasses.replace(config.train, steps=steps)
            config = dataclasses.replace(config, schedule=schedule, train=train)
            tokens = steps * tokens_per_step
            runs.append(RunSpec(
                run_id=f"L{depth}_d{model.d_model}_C{budget:.0e}".replace("+", ""),
                size=f"L{depth}_d{model.d_model}", budget=budget, config=config,
                n_params=counts.non_embedding, n_params_total=counts.total, tokens=tokens,
                flops_6nd=6.0 * counts.active * tokens,
                flops=train_flops_per_token(model, base.data.seq_len, config.train) * tokens))
    if not runs:
        raise ConfigError("grid: no (size, budget) pair gives between grid.min_steps and "
                          "grid.max_steps steps; widen the budgets or the step range")
    return runs


def describe(runs: list[RunSpec]) -> str:
    """A table of the planned runs, for the user to read before spending the compute."""
    lines = [f"{'run':<22}{'N (non-emb)':>12}{'N total':>10}{'tokens':>11}{'steps':>7}"
             f"{'6ND':>10}{'exact C':>10}{'lr':>9}"]
    for r in runs:
        lines.append(f"{r.run_id:<22}{r.n_params:>12,}{r.n_params_total:>10,}{r.tokens:>11,}"
                     f"{r.config.train.steps:>7}{r.flops_6nd:>10.2e}{r.flops:>10.2e}"
                     f"{r.config.optimizer.lr:>9.2e}")
    total = sum(r.flops for r in runs)
    lines.append(f"{len(runs)} runs, {total:.2e} FLOPs in all (log10 = {math.log10(total):.1f})")
    return "\n".join(lines)

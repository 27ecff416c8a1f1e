"""The scaling harness end to end: plan a grid, run it (interrupted and resumed), fit, plot."""

import json

import numpy as np
import pytest

from foundations.cli import main
from foundations.config import ConfigError
from foundations.scaling import probe
from foundations.scaling.grid import load_grid, plan_runs
from foundations.scaling.sweep import run_sweep


@pytest.fixture
def sweep_file(tmp_path, corpus):
    path = tmp_path / "mini.yaml"
    path.write_text(f"""
base:
  model: {{max_seq_len: 32}}
  data: {{train_files: ["{corpus}"], seq_len: 32, val_fraction: 0.2}}
  train: {{batch_size: 8, log_every: 5, eval_every: 0, eval_batches: 2, sample_tokens: 0}}
  checkpoint: {{every: 50, keep: 1, async_save: false}}
grid:
  depths: [1, 2, 3]
  budgets: [3.0e8, 9.0e8]
  min_steps: 2
  max_steps: 200
  probe_examples: 8
""")
    return path


def test_plan_is_isoflop(sweep_file):
    base, grid = load_grid(sweep_file)
    runs = plan_runs(base, grid)
    assert [r.run_id for r in runs] == ["L1_d16_C3e08", "L2_d32_C3e08", "L3_d48_C3e08",
                                        "L1_d16_C9e08", "L2_d32_C9e08", "L3_d48_C9e08"]
    for r in runs:  # D = C / (exact FLOPs per token), rounded to whole steps of 8 x 32 tokens
        assert r.tokens == r.config.train.steps * 256
        assert abs(r.flops - r.budget) <= 0.5 * r.flops / r.config.train.steps  # the nearest step
        assert r.flops == pytest.approx(6 * r.n_compute * r.tokens)
        assert r.flops > r.flops_6nd  # the exact count adds attention and the output head
    assert runs[0].config.optimizer.lr == pytest.approx(3e-3 * 64 / 16)


@pytest.mark.parametrize("family", ["mixtral", "t5"])
def test_plan_counts_the_base_family(sweep_file, family):
    """Budgets are exact FLOPs of the family: an MoE's count has the 1 of 8 experts a token
    passes through, T5's is below 6ND (the decoder reads only the span targets, about a fifth of
    each window)."""
    overrides = {"mixtral": ["model.moe.num_experts=8", "model.moe.experts_per_token=1"],
                 "t5": ["model.family=encdec", "objective.kind=span",
                        "model.positions.kind=t5_bias", "model.vocab_size=320"]}[family]
    runs = plan_runs(*load_grid(sweep_file, overrides))
    for r in runs:
        assert abs(r.flops - r.budget) <= 0.5 * r.flops / r.config.train.steps
        assert (r.flops > r.flops_6nd) == (family == "mixtral"), (r.flops, r.flops_6nd)


def test_plan_keeps_the_sizes_nearest_the_tokens_per_param_guess(sweep_file):
    every = plan_runs(*load_grid(sweep_file))
    kept = plan_runs(*load_grid(sweep_file, ["grid.sizes_per_budget=2", "grid.tokens_per_param=3"]))
    for budget in (3e8, 9e8):
        ratios = {r.run_id: r.tokens / r.n_compute for r in every if r.budget == budget}
        nearest = sorted(ratios, key=lambda run: abs(np.log(ratios[run] / 3)))[:2]
        assert sorted(r.run_id for r in kept if r.budget == budget) == sorted(nearest)


def test_val_points_spread_validation_over_each_run(sweep_file):
    for run in plan_runs(*load_grid(sweep_file, ["grid.val_points=4"])):
        assert run.config.train.eval_every == max(1, run.config.train.steps // 4)
    assert {r.config.train.eval_every for r in plan_runs(*load_grid(sweep_file))} == {0}


def test_bad_grid_key_is_named(sweep_file):
    with pytest.raises(ConfigError, match="unknown key 'grid.depth' \\(did you mean 'depths'"):
        load_grid(sweep_file, ["grid.depth=[1]"])


@pytest.mark.slow  # six training runs and the end-to-end sweep, fit and plot commands
def test_sweep_resumes_then_fits_and_plots(sweep_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    probed, real_probe = [], probe.next_word_probe  # the probe itself: test_probe.py

    def recording_probe(trainer, params, tokenizer, text, num_examples):
        probed.append((num_examples, real_probe(trainer, params, tokenizer, text, num_examples)))
        return probed[-1][1]
    monkeypatch.setattr(probe, "next_word_probe", recording_probe)
    rows = run_sweep(sweep_file, out, stop_after_runs=2)  # interrupted after two runs
    assert [r["run_id"] for r in rows] == ["L1_d16_C3e08", "L2_d32_C3e08"]
    assert (out / "status.txt").read_text().startswith("2/6 runs done")
    first = (out / "runs" / "L1_d16_C3e08" / "result.json").read_text()
    curve_before = (out / "runs" / "L1_d16_C3e08" / "metrics.jsonl").read_text()

    rows = run_sweep(sweep_file, out)
    assert len(rows) == 6 and (out / "status.txt").read_text().startswith("6/6 runs done")
    assert (out / "runs" / "L1_d16_C3e08" / "result.json").read_text() == first  # not redone
    assert (out / "runs" / "L1_d16_C3e08" / "metrics.jsonl").read_text() == curve_before
    table = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {"run_id", "n_params", "n_params_total", "tokens", "flops_6nd", "flops", "train_loss",
            "val_loss", "budget", "curve", "wall_time_s", "probe_acc"} <= set(table[0])
    assert all((out / row["curve"]).is_file() for row in table)
    assert [{k: v for k, v in row.items() if k.startswith("probe_")} for row in table] == [
        result for _, result in probed]
    assert [examples for examples, _ in probed] == [8] * 6
    # more compute at a fixed size lowers the loss
    loss = {row["run_id"]: row["val_loss"] for row in table}
    assert loss["L2_d32_C9e08"] < loss["L2_d32_C3e08"]

    # the sweep command itself, with every run done, fits and plots
    assert main(["sweep", str(sweep_file), "--out", str(out), "--bootstrap", "5"]) == 0
    assert "6 of 6 runs" in capsys.readouterr().out
    assert json.loads((out / "fit.json").read_text())["n_runs"] == 6
    assert "alpha" in (out / "fit.txt").read_text()
    assert len(list((out / "plots").glob("*.png"))) >= 4

    assert main(["fit", str(out / "results.jsonl"), "--bootstrap", "5"]) == 0
    assert "alpha" in capsys.readouterr().out
    assert main(["plot", str(out / "results.jsonl"), "--out", str(tmp_path / "plots"),
                 "--bootstrap", "5"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert len(pngs) >= 4 and len(list((tmp_path / "plots").glob("*.svg"))) == len(pngs)


def test_explicit_sizes_with_a_batch_each_and_a_tokens_per_param_window(sweep_file):
    overrides = ["grid.sizes=[[1,16,4],[2,16],[1,32,16]]", "grid.budgets=[9.0e8]",
                 "grid.min_tokens_per_param=0.5", "grid.max_tokens_per_param=1.5",
                 "grid.warmup_fraction=0.05"]
    runs = plan_runs(*load_grid(sweep_file, overrides))
    every = plan_runs(*load_grid(sweep_file, overrides[:2] + ["grid.warmup_fraction=0.05"]))
    assert [r.size for r in every] == ["L1_d16", "L2_d16", "L1_d32"]
    assert [r.config.train.batch_size for r in every] == [4, 8, 16]   # the size's, else the base's
    for r in every:
        assert r.tokens == r.config.train.steps * r.config.train.batch_size * 32
        assert r.config.schedule.warmup_steps == 0.05   # a share of each run's own length
    kept = {r.size for r in every if 0.5 <= r.tokens / r.n_compute <= 1.5}
    assert kept != {r.size for r in every}                # the window drops someone here...
    assert {r.size for r in runs} == kept                 # ... and only those outside it


def test_gutenberg_grid_fits_the_design(capsys):
    """The default sweep: >= 5 budgets over >= 2 decades, each with >= 3 sizes (>= 4 but at the
    smallest budget) whose D/N lies in [2.5, 160] and brackets 20 (so its profile can have an
    interior minimum), >= 300 steps a run (fewer stay on the unigram plateau), a batch per size
    (the same at every budget), warmup 5% and cosine to each run's length."""
    from pathlib import Path
    sweep = Path(__file__).parent.parent / "experiments" / "scaling" / "gutenberg.yaml"
    runs = plan_runs(*load_grid(sweep))
    budgets = sorted({r.budget for r in runs})
    assert len(budgets) >= 5 and budgets[-1] / budgets[0] >= 99
    batch = {}
    for r in runs:
        ratio = r.tokens / r.n_compute
        assert 2.5 <= ratio <= 160 and r.config.train.steps >= 300, (r.run_id, ratio)
        assert abs(r.flops - r.budget) / r.budget < 0.02
        assert r.config.schedule.warmup_steps == 0.05 and r.config.schedule.kind == "cosine"
        assert batch.setdefault(r.size, r.config.train.batch_size) == r.config.train.batch_size
    for C in budgets:
        ratios = [r.tokens / r.n_compute for r in runs if r.budget == C]
        assert (3 if C == budgets[0] else 4) <= len(ratios) <= 6, (C, ratios)
        assert min(ratios) < 20 < max(ratios), (C, ratios)
    ladder = sorted({r.n_compute for r in runs})
    assert ladder[0] < 15e3 and ladder[-1] > 300e3
    assert max(b / a for a, b in zip(ladder, ladder[1:])) < 1.8   # a fine ladder
    assert len({r.run_id for r in runs}) == len(runs)
    assert main(["sweep", str(sweep), "--plan"]) == 0
    assert f"{len(runs)} runs" in capsys.readouterr().out

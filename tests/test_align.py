"""`foundations align`: the typed align YAML, the task's data (held-out prompts fixed across seeds
and never trained on), and the whole lifecycle end to end on a tiny override, rerun skipped."""

import json
from pathlib import Path

import pytest

from foundations.cli import main
from foundations.config import ConfigError
from foundations.post import align

RECIPE = Path(__file__).parent.parent / "experiments" / "align" / "recipe.yaml"
TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "train.batch_size=8",
        "checkpoint.async_save=false", "checkpoint.every=0", "data.seq_len=32",
        "train.log_every=1", "train.eval_batches=1", "schedule.warmup_steps=0"]


def write_yaml(path: Path, extra: str = "") -> Path:
    path.write_text(f"""
task: {{pretrain_examples: 300, train_examples: 120, eval_prompts: 16}}
recipe: {RECIPE}
overrides: [{", ".join(TINY)}]
stages:
  base: {{overrides: [train.steps=2]}}
  sft: {{overrides: [train.steps=2]}}
  reward: {{overrides: [train.steps=1]}}
  dpo: {{overrides: [train.steps=1]}}
  ppo: {{overrides: [train.steps=1, ppo.max_new_tokens=4]}}
self_consistency: {{k: 2}}
few_shot: {{shots: 1}}
{extra}""")
    return path


def test_the_default_recipe_loads_and_every_stage_config_checks(tmp_path):
    config = align.load_align(RECIPE.parent / "addition.yaml", seed=3)
    assert config.task.seed == 3 and Path(config.recipe).is_file()
    data = align.write_data(config.task, tmp_path / "data")
    configs = align.stage_configs(config, tmp_path, data)
    assert set(configs) == set(align.STAGES)
    assert configs["ppo"].train.init_from == str(tmp_path / "sft")
    assert configs["reward"].reward.val_file == str(data["heldout_pairs"])
    assert all(c.train.seed == 3 for c in configs.values())


def test_a_wrong_key_is_one_line(tmp_path, capsys):
    bad = write_yaml(tmp_path / "bad.yaml", "self_consistensy: {k: 4}\n")
    with pytest.raises(ConfigError, match="self_consistency"):
        align.load_align(bad)
    assert main(["align", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown section 'self_consistensy'" in err
    nested = write_yaml(tmp_path / "nested.yaml", "").read_text().replace(" train_examples",
                                                                         " train_exmples")
    (tmp_path / "nested.yaml").write_text(nested)
    assert main(["align", str(tmp_path / "nested.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "task.train_exmples" in capsys.readouterr().err
    # a bad override of a later stage fails before anything trains
    stage = write_yaml(tmp_path / "stage.yaml").read_text().replace(
        "ppo.max_new_tokens=4", "ppo.max_new_tokenz=4")
    (tmp_path / "stage.yaml").write_text(stage)
    assert main(["align", str(tmp_path / "stage.yaml"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stage ppo" in err
    assert not (tmp_path / "s" / "base").exists()


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_held_out_prompts_are_fixed_across_seeds_and_never_trained_on(tmp_path):
    task = align.AlignTask(pretrain_examples=500, train_examples=300, eval_prompts=50)
    seeds = [align.write_data(align.AlignTask(**{**task.__dict__, "seed": s}), tmp_path / str(s))
             for s in (0, 1)]
    held = [read_jsonl(d["heldout"]) for d in seeds]
    assert held[0] == held[1] and len({e["prompt"] for e in held[0]}) == 50
    assert read_jsonl(seeds[0]["sft"]) != read_jsonl(seeds[1]["sft"])
    prompts = {e["prompt"] for e in held[0]}
    for d in seeds:
        assert not prompts & {e["prompt"] for e in read_jsonl(d["sft"])}
        assert not prompts & {line.split(" ")[1] for line in
                              d["pretrain"].read_text().splitlines()}
        assert all(p["chosen"] != p["rejected"] for p in read_jsonl(d["pairs"]))


@pytest.mark.slow
def test_align_runs_every_stage_then_skips_them(tmp_path, capsys):
    config = write_yaml(tmp_path / "align.yaml")
    out = tmp_path / "out"
    assert main(["align", str(config), "--out", str(out), "--seed", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 1 and results["task"] == "addition"
    expected = {"base": {"accuracy"}, "sft": {"accuracy"},
                "reward_model": {"pairwise_accuracy"}, "dpo": {"accuracy"},
                "ppo": {"accuracy"}, "self_consistency": {"accuracy", "k"},
                "few_shot": {"accuracy"}}
    assert list(results["stages"]) == list(expected)
    for name, metrics in results["stages"].items():
        assert set(metrics) == expected[name], name
        for key, value in metrics.items():
            if key != "k":
                assert 0.0 <= value <= 1.0, (name, key)
    assert results["stages"]["self_consistency"]["k"] == 2
    # each stage's number is its own run's, on the held-out problems
    from foundations.post.answers import run_accuracy
    for name in ("base", "sft", "dpo", "ppo"):
        assert results["stages"][name]["accuracy"] == run_accuracy(
            out / name, str(out / "data" / "heldout.jsonl"), stop="\n"), name
    rm = json.loads((out / "reward_model" / "summary.json").read_text())
    assert results["stages"]["reward_model"]["pairwise_accuracy"] == rm["val_pairwise_accuracy"]
    assert (out / "stages.png").stat().st_size > 0
    for name in ("base", "sft", "reward_model", "dpo", "ppo"):
        assert (out / name / "summary.json").is_file(), name
    checkpoints = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/**/*")}
    capsys.readouterr()

    assert main(["align", str(config), "--out", str(out), "--seed", "1"]) == 0
    log = capsys.readouterr().out
    assert log.count("; skipped") == 5 and log.count("; reused") == 5
    assert "training" not in log
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/**/*")} == checkpoints
    assert json.loads((out / "results.json").read_text()) == results
    # a complete stage trained with other settings is refused in one line, and kept
    changed = config.read_text().replace("dpo: {overrides: [train.steps=1]}",
                                         "dpo: {overrides: [train.steps=1, dpo.nll_coef=0.5]}")
    (tmp_path / "changed.yaml").write_text(changed)
    assert main(["align", str(tmp_path / "changed.yaml"), "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stage dpo" in err and "dpo.nll_coef: 0.0 -> 0.5" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/**/*")} == checkpoints

"""Config loading: YAML + overrides, and one-line errors that name the bad key."""

from pathlib import Path

import pytest
import yaml

from foundations.cli import main
from foundations.config import ConfigError, load_config, parse_override

DATA = Path(__file__).parent / "data"
EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def test_overrides_are_typed_and_applied(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {d_model: 64}\ntrain: {steps: 5}\n")
    cfg = load_config(path, ["train.steps=80", "schedule.warmup_steps=8", "optimizer.lr=1e-4",
                             "mesh.tensor=2", "data.train_files=[a.txt, b.txt]",
                             "model.tie_embeddings=false"])
    assert cfg.model.d_model == 64 and cfg.train.steps == 80 and cfg.mesh.tensor == 2
    assert cfg.optimizer.lr == pytest.approx(1e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.data.train_files == ("a.txt", "b.txt") and cfg.model.tie_embeddings is False
    assert parse_override("schedule.kind=wsd") == (("schedule", "kind"), "wsd")
    assert parse_override("model.moe.num_experts=8") == (("model", "moe", "num_experts"), 8)


@pytest.mark.parametrize("override, message", [
    ("train.stpes=3", "unknown key 'train.stpes' (did you mean 'steps'"),
    ("trian.steps=3", "unknown section 'trian' (did you mean 'train'"),
    ("train.steps=abc", "train.steps: expected int, got 'abc'"),
    ("train.steps=1.5", "train.steps: expected int"),
    ("model.tie_embeddings=3", "model.tie_embeddings: expected bool"),
    ("model.norm=batchnorm", "model.norm: 'batchnorm' is not one of layernorm, rmsnorm"),
    ("train.batch_size=10", "train.batch_size=10 is not divisible by train.grad_accum=4"),
    ("steps=3", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    extra = ["train.grad_accum=4", "train.batch_size=16"]
    with pytest.raises(ConfigError) as info:
        load_config(None, extra + [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model.d_modle' \(did you mean 'd_model'"):
        load_config(path)


def test_cli_prints_one_line_error_and_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 1}\n")
    code = main(["train", str(path), "train.batchsize=8", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("foundations train: error: unknown key 'train.batchsize'")
    assert "'batch_size'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_data_axes_is_refused(tiny_config):
    from foundations.train.loop import build
    cfg = tiny_config("train.batch_size=6", "mesh.data=4")
    with pytest.raises(ConfigError, match=r"train.batch_size=6 .* does not divide over "
                                          r"mesh.data x mesh.fsdp = 4"):
        build(cfg)


def test_width_not_divisible_by_tensor_axis_is_refused(tiny_config):
    from foundations.train.loop import build
    cfg = tiny_config("model.num_heads=2", "model.d_model=32", "mesh.tensor=4")
    with pytest.raises(ConfigError, match=r"parameter blocks/attention/\w+/\w+ has shape "
                                          r"\(.*\): dimension \d \(2\) does not divide by mesh "
                                          r"axes \('tensor',\) \(4 ways\)"):
        build(cfg)


def test_mesh_larger_than_the_machine_is_refused(tiny_config):
    from foundations.train.loop import build
    with pytest.raises(ConfigError, match="needs 16 devices, but 8 are available"):
        build(tiny_config("mesh.data=16"))


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=-1", "optimizer.lr=-1.0 must be > 0"),
    ("objective.mask_prob=1.5", "objective.mask_prob=1.5 must be in (0, 1)"),
    ("model.dropout=1", "model.dropout=1.0 must be in [0, 1)"),
    ("mesh.data=0", "mesh.data=0 must be -1 or > 0"),
    ("train.batch_size=0", "train.batch_size=0 must be > 0"),
    ("schedule.warmup_steps=7", "schedule.warmup_steps=7 exceeds train.steps=6"),
    ("schedule.warmup_steps=2.5", "schedule.warmup_steps=2.5 must be a whole number of steps"),
    ("model.moe.experts_per_token=3", "model.moe.experts_per_token=3 exceeds"),
    ("model.positions.kind=rotary", "model.positions.kind: 'rotary' is not one of learned, "
                                    "sinusoidal, rope, alibi, t5_bias, none"),
    ("model.moe.num_expert=2", "unknown key 'model.moe.num_expert' (did you mean "
                               "'num_experts'?); keys of 'model.moe': num_experts,"),
    ("model.d_model.x=2", "model.d_model is a value, not a section"),
    ("train.init_step=3", "train.init_step is set but train.init_from"),
    ("model.positions.scaling=linear", "model.positions.scaling='linear' needs "
                                       "model.positions.kind=rope"),
])
def test_values_are_checked_not_only_types(tiny_config, override, message):
    extra = ["model.moe.num_experts=2"] if "experts_per_token" in override else []
    with pytest.raises(ConfigError) as info:
        tiny_config(*extra, override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_choices_come_from_the_types():
    import typing
    from foundations.config import PositionKind
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.positions.kind=nope"])
    assert str(info.value).endswith(", ".join(typing.get_args(PositionKind)))


def test_config_is_resolved_and_frozen(tiny_config):
    import dataclasses
    cfg = tiny_config("model.mlp=swiglu", "model.num_heads=4", "model.d_model=48")
    m = cfg.model
    assert (m.vocab_size, m.num_kv_heads, m.head_dim, m.d_ff) == (320, 4, 12, 128)
    assert m.num_decoder_layers is None and tiny_config(
        "model.family=encdec", "objective.kind=span").model.num_decoder_layers == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3
    # a resolved config loads back to itself
    from foundations.config import replace
    assert replace(cfg, {}) == cfg


def test_a_config_of_the_previous_release_still_loads():
    """The flat layout (train.objective, model.rope_theta, 0 = derive) of older run dirs."""
    cfg = load_config(DATA / "old_release_config.yaml")
    m = cfg.model
    assert (m.positions.kind, m.positions.theta, m.moe.num_experts) == ("rope", 5000.0, 0)
    assert (m.vocab_size, m.num_kv_heads, m.head_dim, m.d_ff) == (320, 2, 8, 128)
    assert cfg.objective.kind == "clm" and cfg.objective.mask_prob == 0.15
    assert cfg.data.train_files == ("shakespeare_60k.txt",)


@pytest.mark.slow  # two trainings; test_a_config_of_the_previous_release_still_loads is quick
def test_an_old_run_directory_resumes_and_evaluates(tiny_config, corpus, tmp_path):
    """A run directory whose config.yaml is in the old layout: eval reads it, train resumes."""
    from foundations.run import load_run
    from foundations.train.loop import train
    same_model = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
                  "model.positions.theta=5000", "model.num_kv_heads=2", "model.use_bias=false",
                  "model.tie_embeddings=false"]
    train(tiny_config(*same_model, "train.steps=3"), tmp_path, progress=False)
    (tmp_path / "config.yaml").write_text((DATA / "old_release_config.yaml").read_text())
    run = load_run(tmp_path)
    assert run.step == 3 and run.config.model.positions.theta == 5000.0
    summary = train(tiny_config(*same_model), tmp_path, progress=False)
    assert summary["step"] == 6


def test_config_command_prints_the_resolved_config_and_the_keys(capsys):
    assert main(["config", str(EXPERIMENTS / "mixtral_tiny.yaml"), "model.moe.num_experts=8"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["moe"]["num_experts"] == 8 and printed["model"]["d_ff"] == 256
    assert printed["model"]["vocab_size"] == 320 and printed["objective"]["kind"] == "clm"
    assert main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "model.moe.num_experts: int = 0 (>= 0)\n    experts per MoE layer" in keys
    assert "model.positions.kind: learned | sinusoidal | rope | alibi | t5_bias | none" in keys


def test_generate_refuses_a_negative_temperature(capsys, tmp_path):
    assert main(["generate", "--run-dir", str(tmp_path), "--temperature", "-1"]) == 2
    assert "--temperature must be >= 0" in capsys.readouterr().err


# Checks that once lived in the trainers (post/trainer.py, train/trainer.py, post/ppo.py): each
# needs only the config, so `foundations config` (and every command, on loading) refuses them
# now, with one line naming the key; before, only the run itself found them.
MOVED_CHECKS = [
    ("train", ["lora.rank=4", "prompt_tuning.num_tokens=2"],
     "choose one of lora.rank, prompt_tuning.num_tokens, prefix_tuning.num_tokens"),
    ("train", ["model.max_seq_len=64", "data.seq_len=64", "prompt_tuning.num_tokens=8"],
     "data.seq_len=64 + prompt_tuning.num_tokens=8 exceeds model.max_seq_len=64"),
    ("train", ["prefix_tuning.num_tokens=4", "model.positions.kind=alibi"],
     "prefix tuning needs attention without a sliding window or a position bias"),
    ("train", ["lora.rank=4", "model.family=encoder", "objective.kind=mlm"],
     "post-training runs decoder models (model.family=decoder)"),
    ("train", ["mesh.stage=2", "model.positions.kind=alibi"],
     "mesh.stage > 1 runs causal decoders (objective.kind=clm)"),
    ("sft", ["model.family=encoder", "objective.kind=mlm"],
     "post-training runs decoder models (model.family=decoder)"),
    ("dpo", ["mesh.stage=2"], "post-training runs decoder models (model.family=decoder) with "
                              "mesh.stage=1"),
    ("ppo", ["ppo.reward=model"], "ppo.reward=model needs ppo.reward_model"),
    ("ppo", ["ppo.advantage=group"], "ppo.advantage=group compares samples of one prompt: set "
                                     "ppo.samples >= 2"),
    ("ppo", ["ppo.minibatches=3"], "a rollout's 32 rows (train.batch_size x ppo.samples) do not "
                                   "split into ppo.minibatches=3"),
]


@pytest.mark.parametrize("command, overrides, message", MOVED_CHECKS)
def test_config_command_refuses_what_the_run_would(capsys, command, overrides, message):
    smoke = str(EXPERIMENTS / "smoke.yaml")
    args = ["config", smoke, *overrides] + (["--for", command] if command != "train" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("foundations config: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert main(["config", smoke, "--for", command]) == 0   # the recipe itself passes
    capsys.readouterr()


def test_a_stage_refuses_its_config_before_reading_data(tmp_path):
    """`sft` makes the same check (config.validate_for) before it looks for its data file."""
    from foundations.post.stages import Stage
    config = load_config(EXPERIMENTS / "smoke.yaml", ["model.family=encoder", "objective.kind=mlm",
                                                      f"sft.train_file={tmp_path / 'none.jsonl'}"])
    with pytest.raises(ConfigError, match="post-training runs decoder models"):
        Stage("sft").build(config)

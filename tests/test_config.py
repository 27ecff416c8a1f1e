"""Config loading: YAML + overrides, and one-line errors that name the bad key."""

import pytest

from foundations.cli import main
from foundations.config import ConfigError, load_config, parse_override


def test_overrides_are_typed_and_applied(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {d_model: 64}\ntrain: {steps: 5}\n")
    cfg = load_config(path, ["train.steps=80", "optimizer.lr=1e-4", "mesh.tensor=2",
                             "data.train_files=[a.txt, b.txt]", "model.tie_embeddings=false"])
    assert cfg.model.d_model == 64 and cfg.train.steps == 80 and cfg.mesh.tensor == 2
    assert cfg.optimizer.lr == pytest.approx(1e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.data.train_files == ["a.txt", "b.txt"] and cfg.model.tie_embeddings is False
    assert parse_override("schedule.kind=wsd") == ("schedule", "kind", "wsd")


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

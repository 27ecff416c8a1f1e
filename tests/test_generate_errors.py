"""`foundations generate` on an encoder-only run (BERT, ELECTRA): one line naming the family and
the objective (exit 2), refused from the run's config before any checkpoint is restored."""

import pytest

from foundations.cli import main
from foundations.config import save_config
from foundations.train.loop import train

BERT = ["model.family=encoder", "objective.kind=mlm", "model.norm_position=post"]
ELECTRA = ["model.family=encoder", "objective.kind=electra", "model.norm_position=post"]


@pytest.fixture
def bert_run(tiny_config, tmp_path):
    """A tiny BERT trained for 2 steps (with its final checkpoint)."""
    train(tiny_config(*BERT, "train.steps=2"), tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "2").is_dir()
    return tmp_path


def generate_error(capsys, run_dir) -> str:
    """Runs `foundations generate` on `run_dir`; asserts exit 2 and one line on stderr only."""
    assert main(["generate", "--run-dir", str(run_dir), "--max-new-tokens", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("foundations generate: error: "), err
    return err


def test_generate_refuses_a_trained_encoder_run(bert_run, capsys):
    err = generate_error(capsys, bert_run)
    assert (f"{bert_run} is a model.family=encoder run (objective.kind=mlm): it has no "
            "generative head") in err


def test_generate_refuses_an_electra_run_from_its_config(tiny_config, tmp_path, capsys):
    """Only config.yaml: refusing must not need the checkpoint (a restore would report none)."""
    save_config(tiny_config(*ELECTRA), tmp_path / "config.yaml")
    err = generate_error(capsys, tmp_path)
    assert "model.family=encoder run (objective.kind=electra): it has no generative head" in err

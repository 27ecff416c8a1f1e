"""Checkpoints: exact resume, restore onto another mesh, and clear errors for broken ones."""

import jax
import numpy as np
import pytest

from foundations.config import CheckpointConfig
from foundations.train.checkpoint import CheckpointError, checkpoint_manager, save
from foundations.run import load_run
from foundations.train.loop import train
from foundations.train.metrics import read_metrics


def losses_by_step(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    """One tiny run of 6 steps straight through, on one device: the reference."""
    from conftest import TINY
    from foundations.config import load_config
    cfg = load_config(None, TINY + [f"data.train_files=[{corpus}]"])
    run_dir = tmp_path_factory.mktemp("straight")
    train(cfg, run_dir, progress=False)
    return cfg, run_dir


def test_resume_reaches_exactly_the_uninterrupted_run(uninterrupted, tiny_config, tmp_path):
    _, straight_dir = uninterrupted
    cfg = tiny_config()
    train(cfg, tmp_path, progress=False, stop_at=3)
    assert sorted(losses_by_step(tmp_path)) == [1, 2, 3]
    summary = train(cfg, tmp_path, progress=False)  # picks up at step 4
    assert summary["step"] == 6
    resumed, straight = losses_by_step(tmp_path), losses_by_step(straight_dir)
    assert resumed == straight  # bit-identical losses at every step, 1..6
    run_a, run_b = load_run(straight_dir), load_run(tmp_path)
    assert run_a.step == run_b.step == 6
    for a, b in zip(jax.tree.leaves(run_a.params), jax.tree.leaves(run_b.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # two meshes of 8 devices, each compiled
def test_checkpoint_from_8x1x1_restores_onto_2x2x2(uninterrupted, tiny_config, tmp_path):
    _, straight_dir = uninterrupted
    train(tiny_config("mesh.data=8"), tmp_path, progress=False, stop_at=3)
    summary = train(tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), tmp_path,
                    progress=False)
    assert summary["step"] == 6
    resumed, straight = losses_by_step(tmp_path), losses_by_step(straight_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    # same data order and numbers on any mesh: the losses follow the 1-device run
    np.testing.assert_allclose([resumed[s] for s in range(1, 7)],
                               [straight[s] for s in range(1, 7)], rtol=1e-5)


def saved_steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_saves_every_n_steps_and_keeps_the_last_k(uninterrupted, tmp_path):
    _, straight_dir = uninterrupted
    assert saved_steps(straight_dir) == [3, 6]  # every 3 steps (keep 3: both remain)
    assert (straight_dir / "config.yaml").is_file()
    assert list((straight_dir / "tensorboard").glob("events.out.tfevents.*"))
    manager = checkpoint_manager(tmp_path, CheckpointConfig(keep=2, async_save=False))
    for step in range(1, 5):
        save(manager, step, {"step": np.int32(step)})
    manager.wait_until_finished()
    assert saved_steps(tmp_path) == [3, 4]


def test_corrupt_checkpoint_is_named_and_left_in_place(uninterrupted, tiny_config, tmp_path):
    import shutil
    shutil.copytree(uninterrupted[1], tmp_path, dirs_exist_ok=True)   # saved at steps 3 and 6
    state_dir = tmp_path / "checkpoints" / "6" / "state"
    damaged = 0
    for f in state_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 4)
            damaged += 1
    assert damaged
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint .*checkpoints/6 .*left "
                                              r"in place: move it aside to resume from step 3"):
        train(tiny_config("train.steps=8"), tmp_path, progress=False)
    assert state_dir.is_dir()  # nothing deleted: the user can inspect or remove it
    shutil.rmtree(tmp_path / "checkpoints" / "3")   # the only checkpoint: start afresh
    with pytest.raises(CheckpointError,
                       match=r"cannot restore checkpoint .*checkpoints/6 .*start afresh"):
        train(tiny_config("train.steps=8"), tmp_path, progress=False)
    assert state_dir.is_dir()


def test_resuming_with_another_model_is_refused_and_keeps_the_run(uninterrupted, tiny_config,
                                                                   tmp_path):
    import shutil

    from foundations.config import ConfigError, load_config
    from foundations.run import check_resumable
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted[1], run_dir)
    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"holds checkpoints of another model "
                                          r"\(model.d_model: 32 -> 64, model.head_dim: 8 -> 16, "
                                          r"model.d_ff: 128 -> 256\); use a new --run-dir"):
        train(tiny_config("model.d_model=64", "train.steps=8"), run_dir, progress=False)
    assert (run_dir / "config.yaml").read_text() == saved  # the run's record is untouched
    # settings that leave the arrays' meaning alone may change; they are reported
    changes = check_resumable(load_config(run_dir / "config.yaml", [
        "train.steps=8", "model.remat=full", "mesh.data=2"]), run_dir)
    assert changes == [("model.remat", "none", "full"), ("mesh.data", 1, 2),
                       ("train.steps", 6, 8)]


def test_a_run_keeps_its_tokenizer_and_needs_no_training_text(tiny_config, corpus, tmp_path):
    import shutil

    from foundations.config import ConfigError
    from foundations.tokenizers.bpe import BPETokenizer
    text = tmp_path / "text.txt"
    shutil.copy(corpus, text)
    tok, other = tmp_path / "tok", tmp_path / "other"
    BPETokenizer.train([text], 300).save(tok)
    BPETokenizer.train([text], 320).save(other)

    def config(tokenizer, steps):
        return tiny_config(f"data.tokenizer={tokenizer}", f"data.train_files=[{text}]",
                           f"train.steps={steps}")

    run_dir = tmp_path / "run"
    train(config(tok, 2), run_dir, progress=False)
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    # the same tokenizer at another path resumes the run; another tokenizer is refused
    moved = tmp_path / "moved"
    shutil.move(tok, moved)
    assert train(config(moved, 3), run_dir, progress=False)["step"] == 3
    with pytest.raises(ConfigError, match=r"another model \(data.tokenizer: "):
        train(config(other, 4), run_dir, progress=False)
    # eval and generate need neither the tokenizer's own directory nor the training text
    shutil.rmtree(moved)
    text.unlink()
    run = load_run(run_dir)
    assert run.tokenizer.vocab_size == 300 and run.step == 3

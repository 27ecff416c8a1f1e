"""`foundations eval`'s sliding-window loss, against per-token losses computed by hand with the
converted tiny Hugging Face models (tests/data/hf): GPT-2, BERT (masked LM) and T5."""

from pathlib import Path

import numpy as np
import optax
import pytest

from foundations.cli import main
from foundations.config import ConfigError
from foundations.convert import from_hf
from foundations.data.text import tokenize_files
from foundations.run import load_run
from foundations.train.loop import make_trainer
from foundations.train.score import TextScorer, score_run, score_text, sliding_windows

DATA = Path(__file__).parent / "data" / "hf"
SEQ_LEN = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """family -> (run directory converted from tests/data/hf, HF-style model and params)."""
    out = {}
    for name in ("gpt2", "bert", "t5"):
        run = tmp_path_factory.mktemp(name) / "run"
        assert main(["convert", "from-hf", str(DATA / name), "--run-dir", str(run)]) == 0
        out[name] = (run, *from_hf(DATA / name))
    return out


def scored(run, tokens, stride, batch_size=4):
    return score_run(load_run(run, [f"data.seq_len={SEQ_LEN}"]), tokens, 1.0, batch_size,
                     stride)


def nll(logits, targets) -> np.ndarray:
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
        np.asarray(logits, np.float32), np.asarray(targets)))


def test_windows_score_every_position_once():
    assert sliding_windows(10, 4, 2) == [(0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert sliding_windows(9, 4, 4) == [(0, 0, 4), (4, 4, 8), (5, 8, 9)]
    for n, size, stride in [(37, 8, 3), (8, 8, 1), (50, 16, 16)]:
        windows = sliding_windows(n, size, stride)
        scored = np.concatenate([np.arange(first, end) for _, first, end in windows])
        assert np.array_equal(scored, np.arange(n))
        assert all(end - start <= size and first - start >= min(first, size - stride)
                   for start, first, end in windows)
    with pytest.raises(ConfigError, match="--stride must be between 1 and"):
        sliding_windows(10, 4, 5)


def test_decoder_stride_one_equals_full_context_losses_by_hand(runs):
    run, model, params = runs["gpt2"]
    tokens = np.random.default_rng(0).integers(0, 300, 2 * SEQ_LEN + 5).astype(np.int32)
    # stride 1: target t is predicted from the SEQ_LEN tokens before it (all of them if fewer)
    first = np.asarray(model.apply(params, tokens[None, :SEQ_LEN]))[0]
    by_hand = list(nll(first, tokens[1:SEQ_LEN + 1]))
    for t in range(SEQ_LEN + 1, len(tokens)):
        logits = np.asarray(model.apply(params, tokens[None, t - SEQ_LEN:t]))[0, -1]
        by_hand.append(float(nll(logits[None], tokens[t:t + 1])[0]))
    result = scored(run, tokens, stride=1)
    assert result["tokens"] == len(tokens) - 1
    np.testing.assert_allclose(result["loss"], np.mean(by_hand), rtol=1e-5)
    assert result["ppl"] == pytest.approx(np.exp(result["loss"]))


def test_decoder_windows_side_by_side_differ_from_stride_one(runs):
    run, model, params = runs["gpt2"]
    tokens = np.random.default_rng(0).integers(0, 300, 2 * SEQ_LEN + 5).astype(np.int32)
    # default stride: windows side by side (targets 1..16, 17..32), then the last one ends at
    # the text's end and scores its 4 new targets 33..36 from tokens 20..
    first = np.asarray(model.apply(params, tokens[None, :SEQ_LEN]))[0]
    second = np.asarray(model.apply(params, tokens[None, SEQ_LEN + 4:-1]))[0]
    middle = np.asarray(model.apply(params, tokens[None, SEQ_LEN:2 * SEQ_LEN]))[0]
    by_hand = np.concatenate([nll(first, tokens[1:SEQ_LEN + 1]),
                              nll(middle, tokens[SEQ_LEN + 1:2 * SEQ_LEN + 1]),
                              nll(second[-4:], tokens[-4:])])
    result = scored(run, tokens, stride=0, batch_size=2)
    np.testing.assert_allclose(result["loss"], by_hand.mean(), rtol=1e-5)
    assert result["loss"] != pytest.approx(scored(run, tokens, stride=1)["loss"], rel=1e-4)


def test_t5_encoder_reads_the_context_and_decoder_predicts_the_rest(runs):
    run, model, params = runs["t5"]
    tokens = np.random.default_rng(1).integers(2, 100, SEQ_LEN + 4).astype(np.int32)
    # targets 1..SEQ_LEN from token 0; targets SEQ_LEN+1.. from tokens 3..SEQ_LEN (stride 3)
    def decoder_nll(context, targets):
        decoder_inputs = np.concatenate([[0], targets[:-1]])[None]
        logits = np.asarray(model.apply(params, context[None], decoder_input_ids=decoder_inputs))
        return nll(logits[0], targets)
    by_hand = np.concatenate([decoder_nll(tokens[:1], tokens[1:SEQ_LEN + 1]),
                              decoder_nll(tokens[3:SEQ_LEN + 1], tokens[SEQ_LEN + 1:])])
    result = scored(run, tokens, stride=3)
    assert result["tokens"] == len(tokens) - 1
    np.testing.assert_allclose(result["loss"], by_hand.mean(), rtol=1e-5)


def test_bert_masked_lm_loss_by_hand(runs):
    run, model, params = runs["bert"]
    loaded = load_run(run, [f"data.seq_len={SEQ_LEN}"])
    trainer = make_trainer(loaded.config, loaded.tokenizer, loaded.mesh)
    scorer = TextScorer(trainer)
    size = SEQ_LEN - 2   # [CLS] window [SEP]
    tokens = np.random.default_rng(2).integers(5, 140, 2 * size).astype(np.int32)
    selected = scorer.masked_positions(tokens)
    ids = trainer.objective.ids
    by_hand = []
    for window in (slice(0, size), slice(size, 2 * size)):
        inputs = np.where(selected[window], ids["mask"], tokens[window])
        row = np.concatenate([[ids["cls"]], inputs, [ids["sep"]]])[None]
        logits = np.asarray(model.apply(params, row, token_type_ids=np.zeros_like(row)))[0]
        by_hand.extend(nll(logits[1:-1], tokens[window])[selected[window]])
    result = score_text(trainer, loaded.params, tokens, 1.0, 2)
    assert result["tokens"] == selected.sum() == len(by_hand) > 0
    np.testing.assert_allclose(result["loss"], np.mean(by_hand), rtol=1e-5)
    assert "ppl" not in result


def test_eval_command_scores_each_family_and_refuses_electra(runs, tmp_path, capsys,
                                                             tiny_config):
    text = tmp_path / "text.txt"
    text.write_text((DATA / "make_references.py").read_text()[:3000])
    for name, (run, _, _) in runs.items():
        assert main(["eval", str(text), "--run-dir", str(run), "--stride", "8",
                     "--override", f"data.seq_len={SEQ_LEN}"]) == 0
        line = capsys.readouterr().out
        loss = float(line.split("loss ")[1].split()[0].rstrip(","))
        # the loss score_run (checked by hand above) gives the file's tokens, windows 8 apart
        loaded = load_run(run, [f"data.seq_len={SEQ_LEN}"])
        tokens, n_bytes = tokenize_files([text], loaded.tokenizer)
        expected = score_run(loaded, tokens, n_bytes / len(tokens), 4, 8)
        assert loss == pytest.approx(expected["loss"], abs=1e-4), line
        assert f" {expected['tokens']} " in line
        assert ("masked-LM loss" in line) == (name == "bert")
    assert main(["eval", str(text), "--run-dir", str(runs["gpt2"][0]), "--stride", "99",
                 "--override", f"data.seq_len={SEQ_LEN}"]) == 2
    assert "--stride must be between 1 and the context of 16" in capsys.readouterr().err
    electra = tiny_config("model.family=encoder", "objective.kind=electra",
                          "model.norm_position=post")
    import jax
    from foundations.parallel.mesh import make_mesh
    trainer = make_trainer(electra, None, make_mesh(electra.mesh, jax.devices()[:1]))
    with pytest.raises(ConfigError, match="objective.kind=electra .* no token probabilities"):
        TextScorer(trainer)

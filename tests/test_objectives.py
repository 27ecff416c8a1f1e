"""Objective transforms: MLM masking statistics, span corruption round trips, prefix-LM masks."""

import numpy as np
import pytest

from foundations.config import load_config
from foundations.data.files import BUNDLED_CORPORA
from foundations.objectives import make_objective
from foundations.objectives.base import PrefixLM
from foundations.objectives.mlm import mask_tokens, word_starts
from foundations.objectives.span import (random_spans_noise_mask, reconstruct, span_counts)
from foundations.tokenizers.byte import ByteTokenizer

TEXT = (BUNDLED_CORPORA / "tinyshakespeare" / "input.txt").read_bytes()[:200_000]


def objective(*overrides, seq_len=128):
    config = load_config(None, [f"data.seq_len={seq_len}", f"model.max_seq_len={seq_len}",
                                *overrides])
    tokenizer = ByteTokenizer()
    return make_objective(config, tokenizer)


def windows(rows, length, offset=0):
    tokens = np.frombuffer(TEXT, np.uint8).astype(np.int32)
    return tokens[offset:offset + rows * length].reshape(rows, length)


def test_mlm_masking_statistics():
    mlm = objective("model.family=encoder", "objective.kind=mlm")
    ids = mlm.ids
    assert (ids["cls"], ids["sep"], ids["mask"], ids["pad"]) == (258, 259, 260, 257)
    batches = [mlm.prepare(windows(64, 129, offset=64 * 129 * i), step=i) for i in range(6)]
    inputs = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    selected = np.concatenate([b["weights"] for b in batches]) > 0
    special = np.isin(targets, [ids["cls"], ids["sep"]])
    assert special.sum() == 3 * len(targets) and not (selected & special).any()
    assert (inputs[special] == targets[special]).all()
    assert not (inputs[~selected] != targets[~selected]).any()   # only selected tokens change
    share = selected.sum() / (~special).sum()
    assert share == pytest.approx(0.15, abs=0.005)                 # ~48k candidate tokens
    chosen_inputs, chosen_targets = inputs[selected], targets[selected]
    masked = (chosen_inputs == ids["mask"]).mean()
    kept = (chosen_inputs == chosen_targets).mean()
    randomized = 1 - masked - kept
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 256, abs=0.015)       # a random id can equal it
    assert randomized == pytest.approx(0.1 * 255 / 256, abs=0.015)
    assert (chosen_inputs[chosen_inputs != ids["mask"]] < 256).all()  # random ids: real bytes


def test_mlm_batches_are_a_function_of_seed_and_step():
    mlm = objective("model.family=encoder", "objective.kind=mlm")
    rows = windows(8, 129)
    a, b, c = mlm.prepare(rows, 3), mlm.prepare(rows, 3), mlm.prepare(rows, 4)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert (a["inputs"] != c["inputs"]).any()
    # layout: [CLS] A [SEP] B [SEP], segment ids 0 then 1
    row, segments = a["targets"][0], a["segments"][0]
    assert row[0] == 258 and row[-1] == 259 and (row == 259).sum() == 2
    first_sep = int(np.flatnonzero(row == 259)[0])
    assert (segments[:first_sep + 1] == 0).all() and (segments[first_sep + 1:] == 1).all()


def test_whole_word_masking_takes_whole_words():
    tokens = windows(32, 128)
    starts = word_starts(tokens, ByteTokenizer())
    special = np.zeros(320, bool)
    special[256:] = True
    inputs, selected = mask_tokens(tokens, np.random.default_rng(0), special, 260,
                                   np.arange(256), 0.15, (0.8, 0.1), starts)
    word = np.cumsum(starts, axis=1)
    for r in range(len(tokens)):
        for w in np.unique(word[r]):
            chosen = selected[r][word[r] == w]
            assert chosen.all() or not chosen.any()
    # "the" in " the " is one word of three bytes
    row = np.frombuffer(b"to the king", np.uint8)[None].astype(np.int32)
    assert word_starts(row, ByteTokenizer())[0].tolist() == [1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert abs(selected[~special[tokens]].mean() - 0.15) < 0.03


def test_span_corruption_reconstructs_the_original():
    span = objective("model.family=encdec", "objective.kind=span")
    rows = windows(16, 129)
    batch = span.prepare(rows, step=0)
    num_noise, num_spans = span_counts(128, 0.15, 3.0)
    assert (num_noise, num_spans) == (19, 6)
    assert batch["inputs"].shape == (16, 128 - num_noise + num_spans)
    assert batch["targets"].shape == (16, num_noise + num_spans)
    np.testing.assert_array_equal(span.sentinels, 319 - np.arange(6))   # <extra_id_i>
    for i in range(16):
        np.testing.assert_array_equal(
            reconstruct(batch["inputs"][i], batch["targets"][i], span.sentinels), rows[i, :128])
        assert batch["targets"][i, 0] == span.sentinels[0]
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["targets"][:, :-1])


def test_span_noise_mask_statistics():
    rng = np.random.default_rng(0)
    masks = np.stack([random_spans_noise_mask(100, 0.15, 3.0, rng) for _ in range(500)])
    assert (masks.sum(1) == 15).all() and not masks[:, 0].any()
    starts = masks & ~np.concatenate([np.zeros((500, 1), bool), masks[:, :-1]], 1)
    assert (starts.sum(1) == 5).all()                     # 15 noise tokens / mean length 3
    # T5's layout alternates kept/noise starting with kept, so it ends with noise; between the
    # ends every position is noise about 15% of the time
    assert masks[:, -1].all()
    middle = masks[:, 10:90].mean(0)
    assert (middle > 0.05).all() and (middle < 0.25).all() and abs(middle.mean() - 0.13) < 0.02


# query i (row) may see key j (column): the prefix's 3 tokens see each other, the rest causally
PREFIX_3_OF_5 = np.array([[1, 1, 1, 0, 0],
                          [1, 1, 1, 0, 0],
                          [1, 1, 1, 0, 0],
                          [1, 1, 1, 1, 0],
                          [1, 1, 1, 1, 1]], bool)


def test_prefix_lm_mask_is_bidirectional_over_the_prefix():
    prefix = objective("objective.kind=prefix_lm").prepare(windows(4, 17), 0)["prefix"]
    assert ((1 <= prefix) & (prefix < 16)).all()
    mask = np.asarray(PrefixLM.mask(np.array([3, 1]), 5))
    np.testing.assert_array_equal(mask[0, 0], PREFIX_3_OF_5)
    np.testing.assert_array_equal(mask[1, 0], np.tril(np.ones((5, 5), bool)))  # causal


def test_electra_masks_every_selected_token():
    batch = objective("model.family=encoder", "objective.kind=electra").prepare(
        windows(16, 129), 0)
    assert (batch["inputs"][batch["selected"]] == 260).all()
    assert (batch["inputs"][~batch["selected"]] == batch["targets"][~batch["selected"]]).all()


def test_prefix_lm_loss_counts_only_the_predictions_past_the_prefix():
    """Windows of 6 tokens, prefix 3: the outputs at positions 2, 3, 4 predict tokens 3, 4, 5
    (the rest). The stand-in model gives those targets probability 1/2, 1/4, 1/8 (losses 1, 2
    and 3 x ln 2) and the prefix's targets ~0, so only the right three average to 2 ln 2."""
    lm = objective("objective.kind=prefix_lm", seq_len=5)
    tokens = np.array([[3, 4, 5, 6, 7, 8]])
    vocab = 16
    logits = np.zeros((1, 5, vocab), np.float32)
    logits[0, :2, 0] = 50.0                                      # the prefix's: wrong
    for position, p in zip((2, 3, 4), (1 / 2, 1 / 4, 1 / 8)):    # p = e^l / (e^l + vocab - 1)
        logits[0, position, tokens[0, position + 1]] = np.log(p / (1 - p) * (vocab - 1))
    seen = {}

    def apply(params, rng, inputs, mask):
        seen["inputs"], seen["mask"] = np.asarray(inputs), np.asarray(mask)
        return logits, 0.0

    loss, metrics = lm.loss(apply, None, {"tokens": tokens, "prefix": np.array([3])}, None)
    assert float(loss) == pytest.approx(2 * np.log(2), rel=1e-5)
    assert float(metrics["accuracy"]) == 1.0
    np.testing.assert_array_equal(seen["inputs"], tokens[:, :-1])
    np.testing.assert_array_equal(seen["mask"][0, 0], PREFIX_3_OF_5)

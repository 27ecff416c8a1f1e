"""Generation with a stand-in model whose answers are known: greedy picks the argmax, the window
slides over a long context, table padding is never sampled, stop_id ends early, and temperature
sampling draws from softmax(logits / temperature)."""

import numpy as np
import pytest

from foundations.inference.generate import generate, sample_next

VOCAB, PADDED = 10, 16


class CountingModel:
    """Predicts (last token + 1) mod VOCAB, with the table's padding ids scored highest; records
    the window it was shown at each step."""

    seq_len = 4

    def __init__(self):
        self.windows = []

    def next_token_logits(self, params, tokens, index):
        assert tokens.shape == (1, self.seq_len)
        self.windows.append(tokens[0, :index + 1].tolist())
        logits = np.zeros((1, PADDED), np.float32)
        logits[0, VOCAB:] = 9.0
        logits[0, (tokens[0, index] + 1) % VOCAB] = 5.0
        return logits


def test_greedy_continues_and_the_window_slides():
    model = CountingModel()
    assert generate(model, None, [7, 1, 2], 5, vocab_size=VOCAB) == [3, 4, 5, 6, 7]
    # the model saw the last seq_len tokens of the prompt and what was generated so far
    assert model.windows == [[7, 1, 2], [7, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
    assert generate(CountingModel(), None, [0, 1, 2, 3, 4, 5, 8], 2, vocab_size=VOCAB) == [9, 0]


def test_padding_ids_are_never_sampled_and_stop_id_stops():
    assert generate(CountingModel(), None, [1], 3) == [VOCAB] * 3  # what the slice prevents
    assert generate(CountingModel(), None, [1], 8, vocab_size=VOCAB, stop_id=5) == [2, 3, 4]
    model = CountingModel()  # an empty prompt starts from stop_id
    assert generate(model, None, [], 2, vocab_size=VOCAB, stop_id=9) == [0, 1]
    assert model.windows[0] == [9]


def test_temperature_sampling_follows_the_softmax():
    logits = np.log(np.array([1.0, 3.0, 1e-12]))  # probabilities 1/4, 3/4, 0
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(logits, 1.0, rng) for _ in range(4000)])
    assert np.bincount(draws, minlength=3) / 4000 == pytest.approx([0.25, 0.75, 0.0], abs=0.02)
    # temperature 2 takes the square root of the odds: 1 : sqrt(3)
    draws = np.array([sample_next(logits, 2.0, rng) for _ in range(4000)])
    share = 1 / (1 + np.sqrt(3))
    assert (draws == 0).mean() == pytest.approx(share, abs=0.02)
    assert sample_next(logits, 0.0, rng) == 1

    def twenty_draws(seed):
        rng = np.random.default_rng(seed)
        return [sample_next(logits, 1.0, rng) for _ in range(20)]
    assert twenty_draws(3) == twenty_draws(3) != twenty_draws(4)

"""The sweep's next-word probe, scored by hand on a periodic text with stand-in models whose
answers are known: one that knows the text scores 1, one that always writes "the" scores the
share of "the" among the words, and an untrained model scores 0."""

import jax
import numpy as np
import pytest

from foundations.config import MeshConfig
from foundations.parallel.mesh import make_mesh
from foundations.scaling.probe import (next_word_accuracy, next_word_probe, sample_word_positions,
                                       wilson_interval)
from foundations.tokenizers.byte import ByteTokenizer
from foundations.train.loop import make_trainer

# 12 periods of 24 characters. The probe needs 4 windows (4 x 24 = 96 characters) before a
# word, so it sees periods 4..11: 8 x 6 words ("the cat sat on the mat"), 16 of them "the".
TEXT = "the cat sat on the mat. " * 12
WINDOW, NEW_TOKENS = 24, 8
WORDS, THE = 48, 16
PADDED_VOCAB = 320   # the model's table is padded past the tokenizer's 258 ids


class StandInTrainer:
    """What the probe uses of a Trainer: `seq_len` and `next_token_logits`, here answered by
    `next_char(text so far) -> char`. The table's padding ids get the highest logits, so a probe
    that reads past the tokenizer's vocabulary writes nothing."""

    seq_len = WINDOW

    def __init__(self, next_char):
        self.next_char, self.tokenizer = next_char, ByteTokenizer()

    def next_token_logits(self, params, tokens, index):
        logits = np.zeros((len(tokens), PADDED_VOCAB), np.float32)
        logits[:, self.tokenizer.vocab_size:] = 100.0
        for row, last in enumerate(np.broadcast_to(index, (len(tokens),))):
            assert not tokens[row, last + 1:].any(), "the probe asks before the end of its text"
            so_far = self.tokenizer.decode(tokens[row, :last + 1])
            logits[row, ord(self.next_char(so_far))] = 50.0
        return logits


def knows_the_text(so_far: str) -> str:
    """The character that follows `so_far` in TEXT (which must occur there)."""
    position = TEXT.find(so_far)
    assert position >= 0, f"the probe's context {so_far!r} is not from the text"
    return TEXT[position + len(so_far)]


def chain(word: str):
    """A model that, after a space, always writes `word` then a space."""
    follows = dict(zip(" " + word, word + " "))
    return lambda so_far: follows.get(so_far[-1], " ")


def probe(next_char, **kwargs):
    return next_word_accuracy(StandInTrainer(next_char), None, ByteTokenizer(), TEXT,
                              max_new_tokens=NEW_TOKENS, **kwargs)


def test_word_positions_are_words_with_enough_context():
    everything = sample_word_positions(TEXT, 1000, min_context=4 * WINDOW, seed=0)
    assert len(everything) == WORDS
    assert sum(word == "the" for _, word in everything) == THE
    assert [start for start, _ in everything] == sorted({start for start, _ in everything})
    assert all(start >= 4 * WINDOW and TEXT[start:start + len(word)] == word
               for start, word in everything)
    some = sample_word_positions(TEXT, 10, min_context=4 * WINDOW, seed=0)
    assert len(some) == 10 and set(some) < set(everything)
    assert some == sample_word_positions(TEXT, 10, min_context=4 * WINDOW, seed=0)
    assert some != sample_word_positions(TEXT, 10, min_context=4 * WINDOW, seed=1)


def test_a_model_that_knows_the_text_scores_one():
    assert probe(knows_the_text, num_examples=1000) == 1.0
    assert probe(knows_the_text, num_examples=5) == 1.0


def test_a_model_that_always_writes_the_scores_its_share_by_hand():
    assert probe(chain("the"), num_examples=1000) == pytest.approx(THE / WORDS)
    assert probe(chain("then"), num_examples=1000) == 0.0   # a longer word is not a match
    assert probe(chain("th"), num_examples=1000) == 0.0     # nor is a prefix of one


def test_an_untrained_model_scores_zero(tiny_config):
    config = tiny_config(f"model.max_seq_len={WINDOW}", f"data.seq_len={WINDOW}")
    trainer = make_trainer(config, ByteTokenizer(), make_mesh(MeshConfig(), jax.devices()[:1]))
    params = trainer.init_state()["params"]
    # chance is the odds of writing one exact word of this text from 258 ids: about 0
    assert next_word_accuracy(trainer, params, ByteTokenizer(), TEXT, num_examples=1000,
                              max_new_tokens=NEW_TOKENS) == 0.0


def test_the_continuous_score_is_the_teacher_forced_log_probability():
    """knows_the_text puts logit 50 on the right character and 0 on the 257 others: log p =
    -log(1 + 257 e^-50), 0 to 1e-19, per token. chain("the") has the rules " "->t, t->h, h->e and
    " " otherwise: every character of "the" is right (log p ~ 0), and every character of cat, sat,
    on and mat gets logit 0 against 50 (log p ~ -50)."""
    knows = next_word_probe(StandInTrainer(knows_the_text), None, ByteTokenizer(), TEXT,
                            num_examples=1000, max_new_tokens=NEW_TOKENS)
    assert knows["probe_acc"] == 1.0 and knows["probe_logprob"] == pytest.approx(0.0, abs=1e-12)
    the = next_word_probe(StandInTrainer(chain("the")), None, ByteTokenizer(), TEXT,
                          num_examples=1000, max_new_tokens=NEW_TOKENS)
    assert the["probe_logprob"] == pytest.approx(-50.0 * (WORDS - THE) / WORDS, rel=1e-6)
    assert the["probe_acc"] == pytest.approx(THE / WORDS)


def test_wilson_interval_by_hand():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)

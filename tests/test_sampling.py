"""The logit processors keep exactly the right support on small hand-computed distributions, in
Hugging Face's order; sampling at temperature -> 0 is greedy; rows stop at EOS."""

import jax
import numpy as np
import pytest

from foundations.config import load_config
from foundations.inference import generate, process_logits
from foundations.inference.sampling import choose
from foundations.models.families import build_model

PROBS = np.array([[0.5, 0.3, 0.15, 0.05]])
LOGITS = np.log(PROBS)


def kept(logits) -> list[int]:
    out = np.asarray(logits)[0]
    assert np.all(np.isfinite(out) | np.isneginf(out))   # filtered entries are exactly -inf
    return np.flatnonzero(np.isfinite(out)).tolist()


@pytest.mark.parametrize("k, support", [(1, [1, 3]), (2, [1, 3]), (3, [1, 2, 3]),
                                        (9, [0, 1, 2, 3, 4])])
def test_top_k_keeps_the_k_largest_and_their_ties(k, support):
    logits = np.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert kept(process_logits(logits, None, top_k=k)) == support


@pytest.mark.parametrize("p, support", [(0.4, [0]), (0.7, [0, 1]), (0.9, [0, 1, 2]),
                                        (0.99, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, support):
    # ascending cumulative mass: 0.05, 0.20, 0.50, 1.00; HF drops a token while it is <= 1 - p
    assert kept(process_logits(LOGITS, None, top_p=p)) == support


@pytest.mark.parametrize("min_p, support", [(0.5, [0, 1]), (0.2, [0, 1, 2]),
                                            (0.09, [0, 1, 2, 3]), (1.0, [0])])
def test_min_p_keeps_tokens_near_the_best(min_p, support):
    # thresholds min_p * 0.5: 0.25, 0.1, 0.045, 0.5
    assert kept(process_logits(LOGITS, None, min_p=min_p)) == support


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([[2.0, -2.0, 1.0, 0.5]])
    prev = np.array([[0, 1, 1, -1]])                        # repeats count once; -1: no token
    out = np.asarray(process_logits(logits, prev, repetition_penalty=2.0))
    np.testing.assert_allclose(out, [[1.0, -4.0, 1.0, 0.5]])


def test_temperature_scales_the_logits():
    np.testing.assert_allclose(np.asarray(process_logits(LOGITS, None, temperature=0.5)),
                               LOGITS / 0.5, rtol=1e-6)


def test_processors_apply_in_hugging_face_order():
    # temperature before top-p: at T=0.5 the mass is [0.68, 0.25, 0.06, 0.01], so top-p 0.6
    # keeps one token (on the raw distribution it would keep two)
    assert kept(process_logits(LOGITS, None, top_p=0.6)) == [0, 1]
    assert kept(process_logits(LOGITS, None, temperature=0.5, top_p=0.6)) == [0]
    # top-k before top-p: of [0.4, 0.3, 0.2, 0.1], top-2 renormalises to [0.57, 0.43], and top-p
    # 0.5 keeps one (top-p first would keep two, then top-k two)
    logits = np.log([[0.4, 0.3, 0.2, 0.1]])
    assert kept(process_logits(logits, None, top_p=0.5)) == [0, 1]
    assert kept(process_logits(logits, None, top_k=2, top_p=0.5)) == [0]
    # the repetition penalty comes first: the penalised best token drops out of the top-1
    assert kept(process_logits(LOGITS, np.array([[0]]), repetition_penalty=10.0, top_k=1)) == [1]


def test_draws_follow_the_renormalised_kept_distribution():
    processed = process_logits(np.repeat(LOGITS, 4000, axis=0), None, top_p=0.9)
    draws = np.asarray(choose(processed, jax.random.PRNGKey(0), temperature=1.0))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.03)


@pytest.fixture(scope="module")
def tiny_decoder():
    cfg = load_config(None, ["model.num_layers=1", "model.d_model=32", "model.num_heads=2",
                             "model.max_seq_len=32", "model.vocab_size=64",
                             "model.init_std=0.3", "data.seq_len=32"])
    model = build_model(cfg)
    prompts = np.array([[0, 3, 4, 5], [6, 7, 8, 9]], np.int32)
    return model, jax.jit(model.init)(jax.random.PRNGKey(1), prompts), prompts


def test_temperature_towards_zero_is_greedy(tiny_decoder):
    model, params, prompts = tiny_decoder
    mask = prompts > 0
    greedy = generate(model, params, prompts, attention_mask=mask, max_new_tokens=8)
    for seed in range(2):
        cold = generate(model, params, prompts, attention_mask=mask, max_new_tokens=8,
                        temperature=1e-4, seed=seed)
        np.testing.assert_array_equal(cold, greedy)
    warm = [generate(model, params, prompts, attention_mask=mask, max_new_tokens=8,
                     temperature=5.0, seed=seed) for seed in (0, 0, 1)]
    np.testing.assert_array_equal(warm[0], warm[1])   # a seed reproduces its sample
    assert (warm[0] != warm[2]).any() and (warm[0] != greedy).any()


def test_a_row_that_writes_eos_is_padded_after_it(tiny_decoder):
    model, params, prompts = tiny_decoder
    mask = prompts > 0
    free = generate(model, params, prompts, attention_mask=mask, max_new_tokens=8)
    eos = int(free[0, 2])
    stopped = generate(model, params, prompts, attention_mask=mask, max_new_tokens=8,
                       eos_token_id=eos, pad_token_id=63)
    for row, tokens in zip(stopped, free):
        hits = np.flatnonzero(tokens == eos)
        end = hits[0] + 1 if len(hits) else len(tokens)
        np.testing.assert_array_equal(row[:end], tokens[:end])
        assert (row[end:] == 63).all()
    assert (stopped[0, 3:] == 63).all() and len(np.flatnonzero(free[0] == eos)) >= 1

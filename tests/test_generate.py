"""KV-cached generation equals recomputing the whole sequence for every token, for each family.

Tiny random models with a large init (decisive logits, so greedy choices are not near-ties);
prompts of different lengths, left-padded into one batch, and one prompt alone (unpadded).
"""

import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from foundations.config import ConfigError, load_config
from foundations.inference import generate
from foundations.inference.generate import cache_slots
from foundations.models.families import build_model
from foundations.models.kv_cache import ring_write

TINY = ["model.num_layers=2", "model.d_model=32", "model.num_heads=4", "model.max_seq_len=32",
        "model.vocab_size=64", "model.init_std=0.3", "data.seq_len=32"]
LLAMA = ["model.norm=rmsnorm", "model.mlp=swiglu", "model.positions.kind=rope",
         "model.use_bias=false", "model.tie_embeddings=false", "model.num_kv_heads=2"]
FAMILIES = {
    "gpt2": [],
    "llama": LLAMA + ["model.positions.theta=500000.0"],
    "mixtral": LLAMA + ["model.moe.num_experts=4", "model.moe.experts_per_token=2"],
    "sliding_window": LLAMA + ["model.local_window_size=3"],   # a window shorter than the prompt
    "t5": ["model.family=encdec", "model.norm=rmsnorm", "model.positions.kind=t5_bias",
           "model.use_bias=false", "objective.kind=span"],
}
PROMPTS = np.array([[0, 0, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 9, 3, 1]],
                   np.int32)
MASK = PROMPTS > 0
NEW = 6


def tiny_model(name):
    model = build_model(load_config(None, TINY + FAMILIES[name]))
    decoder_inputs = (PROMPTS[:, :2],) if name == "t5" else ()
    return model, jax.jit(model.init)(jax.random.PRNGKey(0), PROMPTS, *decoder_inputs)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, *tiny_model(request.param)


def test_cached_generation_equals_full_recomputation(family):
    name, model, params = family
    cached = generate(model, params, PROMPTS, attention_mask=MASK, max_new_tokens=NEW)
    full = generate(model, params, PROMPTS, attention_mask=MASK, max_new_tokens=NEW,
                    use_cache=False)
    assert cached.shape == (3, NEW) and cached.dtype == np.int32
    np.testing.assert_array_equal(cached, full)
    assert len(np.unique(cached)) > 3   # the model does not just repeat one token
    # unpadded: the last prompt alone writes what it wrote in the padded batch
    alone = generate(model, params, PROMPTS[2:, 4:], max_new_tokens=NEW)
    np.testing.assert_array_equal(alone, cached[2:])


def test_full_recomputation_is_the_plain_model():
    """The reference itself: greedy argmax of model.apply on the growing sequence."""
    model, params = tiny_model("llama")
    ids = PROMPTS[1:2]
    for _ in range(3):
        logits = model.apply(params, ids)
        ids = np.concatenate([ids, np.argmax(logits[:, -1:], axis=-1)], axis=1)
    full = generate(model, params, PROMPTS[1:2], max_new_tokens=3, use_cache=False)
    np.testing.assert_array_equal(full, ids[:, -3:])


def test_sliding_window_keeps_only_the_window():
    cfg = load_config(None, TINY + FAMILIES["sliding_window"]).model
    assert cache_slots(cfg, prompt_length=7, max_new_tokens=NEW) == 3
    assert cache_slots(load_config(None, TINY).model, 7, NEW) == 7 + NEW


def test_ring_write_puts_token_t_in_slot_t_mod_size():
    tokens = np.arange(1, 8)[None, :, None]                 # positions 0..6, 7 tokens
    ring = np.asarray(ring_write(np.zeros((1, 3, 1)), tokens, 0, "prefill"))
    assert ring[0, :, 0].tolist() == [7, 5, 6]              # the last 3: 4, 5, 6 -> slots 1, 2, 0
    ring = np.asarray(ring_write(ring, np.array([[[8]]]), 7, "step"))
    assert ring[0, :, 0].tolist() == [7, 8, 6]              # token 7 -> slot 1


def test_bad_input_is_one_line():
    model, params = tiny_model("gpt2")
    with pytest.raises(ConfigError, match="pad prompts on the left"):
        generate(model, params, PROMPTS, attention_mask=PROMPTS[:, ::-1] > 0)
    with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\] \(got 0.0\)"):
        generate(model, params, PROMPTS, top_p=0.0)
    with pytest.raises(ConfigError, match="exceed model.max_seq_len=32"):
        generate(model, params, PROMPTS, max_new_tokens=30)
    encoder = build_model(load_config(None, TINY + ["model.family=encoder",
                                                    "objective.kind=mlm"]))
    with pytest.raises(ConfigError, match="not Encoder"):
        generate(encoder, params, PROMPTS)


@pytest.mark.slow  # trains a T5 run and runs the generate command end to end
def test_generate_command_streams_t5_and_refuses_an_encoder(tiny_config, tmp_path, capsys):
    from foundations.cli import main
    from foundations.config import save_config
    from foundations.train.loop import train
    config = tiny_config("model.family=encdec", "model.norm=rmsnorm", "model.use_bias=false",
                         "model.positions.kind=t5_bias", "objective.kind=span",
                         "train.steps=1", "schedule.warmup_steps=1", "train.eval_batches=1")
    train(config, tmp_path / "t5", progress=False)
    capsys.readouterr()
    assert main(["generate", "--run-dir", str(tmp_path / "t5"), "--prompt", "To be",
                 "--max-new-tokens", "5", "--top-k", "3", "--temperature", "0.7"]) == 0
    out, err = capsys.readouterr()
    # what generate samples with those flags (seed 0), decoded up to its end-of-text
    from foundations.run import load_run
    run = load_run(tmp_path / "t5")
    tok = run.tokenizer
    new = generate(run.model, run.params, np.asarray([tok.encode("To be")], np.int32),
                   max_new_tokens=5, temperature=0.7, top_k=3, seed=0, eos_token_id=tok.eos_id,
                   pad_token_id=tok.pad_id, vocab_size=tok.vocab_size)[0].tolist()
    count = new.index(tok.eos_id) + 1 if tok.eos_id in new else 5
    assert out == tok.decode([i for i in new[:count] if i != tok.eos_id]) + "\n"
    # time to first token and the steady tokens/s after it, both numbers
    found = re.search(r"\[(\d+) tokens; the first after ([\d.]+) s, then ([\d,.]+) tokens/s\]",
                      err)
    assert found, err
    assert int(found[1]) == count and float(found[2]) > 0 and float(found[3].replace(",", "")) > 0
    (tmp_path / "bert").mkdir()
    save_config(tiny_config("model.family=encoder", "objective.kind=mlm"),
                tmp_path / "bert" / "config.yaml")
    assert main(["generate", "--run-dir", str(tmp_path / "bert")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.family=encoder run (objective.kind=mlm): it has no" in err


# one decoder (GQA, a ring cache reordered by beam) and T5 are enough
@pytest.mark.parametrize("family", ["sliding_window", "t5"], indirect=True)
def test_beam_search_with_the_cache_equals_without(family):
    name, model, params = family
    greedy = generate(model, params, PROMPTS, attention_mask=MASK, max_new_tokens=NEW)
    eos = int(greedy[0, 1])   # some beams finish early, some prompts never do
    kwargs = dict(attention_mask=MASK, max_new_tokens=NEW, num_beams=3, eos_token_id=eos,
                  pad_token_id=1, length_penalty=0.5)
    cached = generate(model, params, PROMPTS, **kwargs)
    np.testing.assert_array_equal(cached, generate(model, params, PROMPTS, use_cache=False,
                                                   **kwargs))
    assert (cached != greedy).any()


def test_beam_search_with_every_token_as_a_beam_is_exhaustive():
    """num_beams = vocabulary over two tokens: the best of all 64 x 64 continuations."""
    model, params = tiny_model("gpt2")
    prompt = PROMPTS[1:2]
    first = jax.nn.log_softmax(model.apply(params, prompt)[0, -1])
    both = np.concatenate([np.repeat(prompt, 64, axis=0), np.arange(64)[:, None]], axis=1)
    second = jax.nn.log_softmax(model.apply(params, both)[:, -1], axis=-1)
    total = np.asarray(first[:, None] + second)
    best = np.unravel_index(np.argmax(total), total.shape)
    beams = generate(model, params, prompt, max_new_tokens=2, num_beams=64)
    assert beams[0].tolist() == [int(best[0]), int(best[1])]


# a decoder with a ring cache, a plain one and T5: the one-jit loop against the streaming one
@pytest.mark.parametrize("family", ["gpt2", "sliding_window", "t5"], indirect=True)
@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.8, top_k=20, seed=3),
                                      dict(temperature=1.0, top_p=0.9, seed=5,
                                           repetition_penalty=1.3)])
def test_one_jit_loop_equals_the_streaming_loop(family, sampling):
    name, model, params = family
    columns = []
    kwargs = dict(attention_mask=MASK, max_new_tokens=NEW, **sampling)
    streamed = generate(model, params, PROMPTS, on_token=columns.append, **kwargs)
    fused = generate(model, params, PROMPTS, **kwargs)   # no on_token: one jit
    np.testing.assert_array_equal(fused, streamed)
    np.testing.assert_array_equal(np.stack(columns, axis=1), streamed)


@pytest.mark.parametrize("family", ["gpt2", "t5"], indirect=True)
def test_one_jit_loop_stops_at_eos_like_the_streaming_loop(family):
    name, model, params = family
    greedy = generate(model, params, PROMPTS, attention_mask=MASK, max_new_tokens=NEW)
    for eos in (int(greedy[0, 1]), int(greedy[1, 0])):   # some rows end early; maybe all
        kwargs = dict(attention_mask=MASK, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=1)
        if name == "t5":   # its decoder starts from the pad token unless told
            kwargs["decoder_start_token_id"] = 0
        columns = []
        streamed = generate(model, params, PROMPTS, on_token=columns.append, **kwargs)
        np.testing.assert_array_equal(generate(model, params, PROMPTS, **kwargs), streamed)
        assert (streamed == 1).any()


@pytest.mark.parametrize("unroll", [1, 2])   # scanned, and unrolled (the CPU's auto)
def test_per_layer_decoding_equals_the_stacked_model(unroll):
    """The cached path decodes from per-layer weights (decoding_layout): the same logits as the
    stacked (scanned) model, prefill and steps, and the same greedy tokens as recomputation."""
    from foundations.inference.generate import _decoder_cached, _decoder_prefill, decoding_layout
    model = build_model(load_config(None, TINY + [f"model.scan_unroll={unroll}"]))
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), PROMPTS))
    per_model, per_vars = decoding_layout(model, variables, backend="cpu")
    blocks = per_vars["params"]["blocks"]
    assert per_model.per_layer and sorted(blocks) == ["layer_0", "layer_1"]
    np.testing.assert_array_equal(blocks["layer_1"]["mlp"]["up"]["kernel"],
                                  variables["params"]["blocks"]["mlp"]["up"]["kernel"][1])
    np.testing.assert_allclose(per_model.apply(per_vars, PROMPTS), model.apply(variables, PROMPTS),
                               rtol=1e-5, atol=1e-5)
    runs = []
    for m, v in ((model, variables), (per_model, per_vars)):
        logits, cache, first = _decoder_prefill(m, v, PROMPTS, MASK, NEW)
        seen = [logits]
        for t in range(3):
            token = np.asarray(seen[-1].argmax(-1), np.int32)
            logits, cache = _decoder_cached(m, "step", v, cache, token[:, None],
                                            (first + t)[:, None])
            seen.append(logits)
        runs.append(np.stack(seen))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-5)
    cached = generate(model, variables, PROMPTS, attention_mask=MASK, max_new_tokens=NEW)
    np.testing.assert_array_equal(cached, generate(model, variables, PROMPTS, attention_mask=MASK,
                                                   max_new_tokens=NEW, use_cache=False))
    assert decoding_layout(model, variables, backend="tpu")[0].per_layer   # 2 <= 12 layers

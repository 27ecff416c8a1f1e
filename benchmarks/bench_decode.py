"""Decode tokens/s with and without the KV cache, interleaved in one process (not a test).

    python benchmarks/bench_decode.py                      # GPT-2 124M shape, batch 1 and 8
    python benchmarks/bench_decode.py --shape tiny         # a quick look

Random weights, greedy, a 64-token prompt and 32 new tokens (flags change them). With the cache:
the prefill and every step are timed. Without it, each token recomputes the whole fixed window
(prompt + new tokens), as the project's previous sampler did, so every step costs the same: a few
steps are timed and give its rate. A third variant is `generate` without `on_token`: all the cached
steps inside one jit (`lax.while_loop`, the cache donated), no host round trip per token, from
per-layer weights (generate's decoding_layout); its rate is the time for all the new tokens less
that for one. `--stacked` adds the same one-jit loop reading the stacked (layers, ...) weights, the
layout before decoding_layout, for comparison. Compilation is excluded (each variant runs once
first).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from foundations.config import load_config
from foundations.inference.generate import decoder_steps, generate
from foundations.models.families import build_model

SHAPES = {
    "gpt2-124m": ["model.num_layers=12", "model.d_model=768", "model.num_heads=12",
                  "model.vocab_size=50257", "model.max_seq_len=1024", "data.seq_len=1024"],
    "small": ["model.num_layers=4", "model.d_model=256", "model.num_heads=4",
              "model.vocab_size=8192", "model.max_seq_len=512", "data.seq_len=512"],
    "tiny": ["model.num_layers=2", "model.d_model=64", "model.num_heads=2",
             "model.vocab_size=512", "model.max_seq_len=512", "data.seq_len=512"],
}


def time_steps(model, variables, prompts, new_tokens, use_cache, timed_steps):
    """Seconds per generated token column, over `timed_steps` steps after the first token."""
    engine = decoder_steps(model, variables, prompts, np.ones(prompts.shape, bool), new_tokens,
                           use_cache)
    logits = next(engine)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32).block_until_ready()
    start = time.perf_counter()
    for _ in range(timed_steps):
        logits = engine.send(token)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32).block_until_ready()
    elapsed = time.perf_counter() - start
    engine.close()
    return elapsed / timed_steps


def time_fused(model, variables, prompts, new_tokens, stacked=False):
    """Seconds per token column of the steps after the first, all inside one jit: `generate`
    without on_token, for all the new tokens less for one (the prefill and the first pick).
    stacked: the weights as the model stores them (decoding_layout off), for comparison."""
    def run(tokens):
        off = mock.patch("foundations.inference.generate.decoding_layout", lambda m, v: (m, v))
        with off if stacked else contextlib.nullcontext():
            start = time.perf_counter()
            generate(model, variables, prompts, max_new_tokens=tokens)
            return time.perf_counter() - start
    full = statistics.median(run(new_tokens) for _ in range(3))
    first = statistics.median(run(1) for _ in range(3))
    return (full - first) / (new_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-124m")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--stacked", action="store_true",
                        help="also the one-jit loop over the stacked weights")
    parser.add_argument("--full-steps", type=int, default=3,
                        help="timed steps without the cache (each costs the same)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = load_config(None, SHAPES[args.shape])
    model = build_model(config)
    example = np.zeros((1, args.prompt_tokens), np.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), example)
    params = sum(x.size for x in jax.tree.leaves(variables))
    print(f"{args.shape}: {params:,} parameters, {jax.devices()[0].device_kind}, "
          f"prompt {args.prompt_tokens}, {args.new_tokens} new tokens, greedy")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        prompts = rng.integers(0, config.model.vocab_size, (batch, args.prompt_tokens),
                               dtype=np.int32)
        for use_cache in (True, False):   # compile every variant first
            time_steps(model, variables, prompts, args.new_tokens, use_cache, 1)
        time_fused(model, variables, prompts, args.new_tokens)
        if args.stacked:
            time_fused(model, variables, prompts, args.new_tokens, stacked=True)
        cached, fused, full, stacked = [], [], [], []
        for _ in range(args.rounds):      # interleaved
            cached.append(time_steps(model, variables, prompts, args.new_tokens, True,
                                     args.new_tokens - 1))
            fused.append(time_fused(model, variables, prompts, args.new_tokens))
            if args.stacked:
                stacked.append(time_fused(model, variables, prompts, args.new_tokens, True))
            full.append(time_steps(model, variables, prompts, args.new_tokens, False,
                                   args.full_steps))
        with_cache = batch / statistics.median(cached)
        one_jit = batch / statistics.median(fused)
        without = batch / statistics.median(full)
        print(f"batch {batch}: with the cache {with_cache:,.1f} tokens/s ({one_jit:,.1f} in one "
              f"jit), without {without:,.2f} tokens/s: {with_cache / without:,.0f}x "
              f"({one_jit / without:,.0f}x)  (per step: {[round(t * 1e3, 1) for t in cached]}, "
              f"one jit {[round(t * 1e3, 1) for t in fused]} ms vs "
              f"{[round(t * 1e3) for t in full]} ms)", flush=True)
        if stacked:
            rate = batch / statistics.median(stacked)
            print(f"batch {batch}: one jit from the stacked weights {rate:,.1f} tokens/s: "
                  f"{rate / without:,.0f}x (per step {[round(t * 1e3, 1) for t in stacked]} ms)",
                  flush=True)


if __name__ == "__main__":
    main()

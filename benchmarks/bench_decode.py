"""Decode tokens/s with and without the KV cache, interleaved in one process (not a test).

    python benchmarks/bench_decode.py                      # GPT-2 124M shape, batch 1 and 8
    python benchmarks/bench_decode.py --shape tiny         # a quick look

Random weights, greedy, a 16-token prompt and 256 new tokens. With the cache: the prefill and
every one of the 256 steps are timed. Without it, each token recomputes the whole fixed window
(prompt + 256), as the project's previous sampler did, so every step costs the same: a few steps
are timed and give its rate. A third variant is `generate` without `on_token`: all the cached steps
inside one jit (`lax.while_loop`, the cache donated), no host round trip per token; its rate is
the time for all the new tokens less that for one. Compilation is
excluded (each variant runs once first).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from foundations.config import load_config
from foundations.inference.generate import decoder_steps, generate
from foundations.models.families import build_model

SHAPES = {
    "gpt2-124m": ["model.num_layers=12", "model.d_model=768", "model.num_heads=12",
                  "model.vocab_size=50304", "model.max_seq_len=1024", "data.seq_len=1024"],
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


def time_fused(model, variables, prompts, new_tokens):
    """Seconds per token column of the steps after the first, all inside one jit: `generate`
    without on_token, for all the new tokens less for one (the prefill and the first pick)."""
    def run(tokens):
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
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
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
        cached, fused, full = [], [], []
        for _ in range(args.rounds):      # interleaved
            cached.append(time_steps(model, variables, prompts, args.new_tokens, True,
                                     args.new_tokens - 1))
            fused.append(time_fused(model, variables, prompts, args.new_tokens))
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


if __name__ == "__main__":
    main()

"""`foundations bench`: times the real train step against a plain Flax step of the same shape.

The project's step is the one `foundations train` runs (config -> Trainer -> objective -> Optax,
sharded and jitted), fed synthetic tokens. The reference is `train/plain_gpt.py`, a GPT-2 as
a user would write it without the project; both run in this process in interleaved rounds, so a
busy machine slows both alike and the ratio stays meaningful.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from foundations.config import Config
from foundations.tokenizers import configured_tokenizer
from foundations.models.layers import DTYPES
from foundations.train import plain_gpt
from foundations.train.loop import make_trainer
from foundations.train.metrics import peak_flops_per_device

def memory_bytes(compiled) -> int:
    """Peak device memory of a compiled step from XLA's memory analysis (the sum of its
    arguments, outputs and temporaries, less donated buffers, where no peak is reported)."""
    m = compiled.memory_analysis()
    return int(getattr(m, "peak_memory_in_bytes", 0) or (
        m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        + m.temp_size_in_bytes))


def project_step(config: Config, rows: np.ndarray):
    """(trainer, compiled step, compile seconds, run() -> one timed step) of the real trainer."""
    trainer = make_trainer(config, configured_tokenizer(config.data.tokenizer))
    start = time.perf_counter()
    compiled = trainer.lower_train_step().compile()
    compile_s = time.perf_counter() - start
    state, batch = trainer.init_state(), trainer.put_batch(rows)
    call = trainer.in_mesh(compiled)

    def run():
        nonlocal state
        state, metrics = call(state, batch)
        jax.block_until_ready(metrics)
    return trainer, compiled, compile_s, run


def plain_reference(config: Config):
    """(compiled plain step, compile seconds, run(), parameter count) at the config's shape, or
    None when the config is not a GPT-2 (tied, learned positions, LayerNorm, GELU, causal LM)
    that the plain model can stand in for."""
    m = config.model
    if (m.family, config.objective.kind, m.norm, m.mlp, m.positions.kind) != (
            "decoder", "clm", "layernorm", "gelu", "learned") or not m.tie_embeddings \
            or m.moe.num_experts or m.num_kv_heads != m.num_heads:
        return None
    step, params, opt_state, tokens = plain_gpt.plain_step(
        m.num_layers, m.d_model, m.num_heads, m.d_ff, m.vocab_size, config.train.batch_size,
        config.data.seq_len, DTYPES[m.dtype], config.optimizer.lr,
        config.optimizer.weight_decay, config.optimizer.clip_norm, config.train.seed)
    start = time.perf_counter()
    compiled = step.lower(params, opt_state, tokens).compile()
    compile_s = time.perf_counter() - start

    parameters = sum(x.size for x in jax.tree.leaves(params))

    def run():
        nonlocal params, opt_state
        params, opt_state, loss = compiled(params, opt_state, tokens)
        loss.block_until_ready()
    return compiled, compile_s, run, parameters


def timings(seconds: list[float], tokens_per_step: int) -> dict:
    times = np.asarray(seconds)
    median = float(np.median(times))
    return {"step_ms_median": median * 1e3, "step_ms_p10": float(np.percentile(times, 10)) * 1e3,
            "step_ms_p90": float(np.percentile(times, 90)) * 1e3,
            "tokens_per_sec": tokens_per_step / median}


def bench(config: Config, steps: int = 20, rounds: int = 4, plain: bool = True) -> dict:
    """Compiles both steps, warms them up, then times `steps` steps of each in `rounds`
    alternating rounds (each step waited for); returns the report."""
    tokens_per_step = config.train.batch_size * config.data.seq_len
    vocab = configured_tokenizer(config.data.tokenizer).vocab_size
    rows = np.random.default_rng(config.train.seed).integers(
        0, vocab, (config.train.batch_size, config.data.seq_len + 1), dtype=np.int32)
    trainer, compiled, compile_s, run_project = project_step(config, rows)
    reference = plain_reference(config) if plain else None
    runs = {"project": run_project}
    if reference is not None:
        runs["plain"] = reference[2]
    for run in runs.values():  # warm-up: first calls allocate and fill caches
        run()
    seconds = {name: [] for name in runs}
    per_round = math.ceil(steps / rounds)
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            for _ in range(per_round):
                start = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - start)

    project = timings(seconds["project"], tokens_per_step)
    peak = peak_flops_per_device(config.train.peak_flops) * trainer.mesh.size
    flops_per_sec = project["tokens_per_sec"] * trainer.flops_per_token
    report = {
        "parameters": trainer.counts.total, "mesh": dict(trainer.mesh.shape),
        "device": jax.devices()[0].device_kind, "tokens_per_step": tokens_per_step,
        "steps": len(seconds["project"]), "rounds": rounds, **project,
        "model_flops_per_sec": flops_per_sec, "mfu": flops_per_sec / peak if peak else None,
        "compile_s": compile_s, "peak_memory_bytes": memory_bytes(compiled),
    }
    if reference is not None:
        plain_times = timings(seconds["plain"], tokens_per_step)
        report["plain"] = {**plain_times, "compile_s": reference[1], "parameters": reference[3],
                           "peak_memory_bytes": memory_bytes(reference[0])}
        report["ratio"] = project["tokens_per_sec"] / plain_times["tokens_per_sec"]
    return report


def format_report(r: dict) -> str:
    mib = 2**20
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (unknown peak: train.peak_flops)"

    def line(name, t):
        return (f"{name:8s} {t['tokens_per_sec']:>12,.0f} tokens/s  step {t['step_ms_median']:.1f} "
                f"ms (p10 {t['step_ms_p10']:.1f}, p90 {t['step_ms_p90']:.1f})  compile "
                f"{t['compile_s']:.1f} s  peak memory {t['peak_memory_bytes'] / mib:,.1f} MiB")
    lines = [f"{r['parameters'] / 1e6:.2f}M parameters, {r['tokens_per_step']:,} tokens/step, "
             f"{r['steps']} steps in {r['rounds']} interleaved rounds, {r['device']}, mesh "
             f"{r['mesh']}", line("project", r), f"MFU {mfu}"]
    if "plain" in r:
        lines += [line("plain", r["plain"]), f"project/plain: {r['ratio']:.2f}x"]
    else:
        lines.append("no plain reference: the config is not a GPT-2 (see plain_reference)")
    return "\n".join(lines)

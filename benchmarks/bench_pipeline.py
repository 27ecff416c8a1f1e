"""Step time of the pipelined train step against (stages S, microbatches M) on 8 simulated CPU
devices, and the measured bubble against the GPipe prediction (S-1)/(M+S-1).

On simulated devices every "device" shares this machine's cores, so a step costs the work of all
devices together. Idle pipeline slots are not idle here: the vmap over stages computes them (on
data that is thrown away), so the bubble shows up as extra work, and
    measured bubble = 1 - T(S=1) / T(S, M)
with T(S=1) the same model and batch with no pipeline (data parallel over the same devices).
Only ratios mean anything; absolute times say nothing about real accelerators.

    python benchmarks/bench_pipeline.py [--steps 5] [--layers 8] [--d-model 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from foundations.config import load_config  # noqa: E402
from foundations.parallel.gpipe import bubble_fraction  # noqa: E402
from foundations.train import build  # noqa: E402

GRID = [(1, 1), (2, 1), (2, 2), (2, 4), (2, 8), (4, 1), (4, 2), (4, 4), (4, 8)]


def step_time(args, stages: int, microbatches: int, data):
    """The fastest of `args.steps` train steps (after the compiling one) in seconds; the data."""
    config = load_config(None, [
        f"model.num_layers={args.layers}", f"model.d_model={args.d_model}", "model.num_heads=4",
        f"model.max_seq_len={args.seq_len}", f"data.seq_len={args.seq_len}",
        "data.train_files=[tinyshakespeare/input.txt]", f"train.batch_size={args.batch}",
        f"mesh.stage={stages}", f"mesh.data={8 // stages}", f"mesh.microbatches={microbatches}"])
    data, trainer = build(config, data=data)
    state = trainer.init_state()
    rows = args.batch * (args.seq_len + 1)
    batch = trainer.put_batch(data.train_tokens[:rows].reshape(args.batch, -1))
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return min(times), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"{args.layers} layers, d_model {args.d_model}, batch {args.batch} x {args.seq_len} "
          f"tokens, 8 simulated {jax.devices()[0].platform} devices (mesh data = 8 / S)")
    print(f"{'S':>2} {'M':>2} {'step ms':>8} {'vs S=1':>7} {'bubble measured':>16} "
          f"{'predicted':>10}")
    data, baseline = None, None
    for stages, microbatches in GRID:
        seconds, data = step_time(args, stages, microbatches, data)
        baseline = baseline or seconds
        measured = 1 - baseline / seconds
        print(f"{stages:>2} {microbatches:>2} {seconds * 1e3:>8.1f} {seconds / baseline:>7.2f} "
              f"{measured:>16.2f} {bubble_fraction(stages, microbatches):>10.2f}", flush=True)


if __name__ == "__main__":
    main()

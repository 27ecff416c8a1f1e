"""The train step with the fused q/k/v projection (model.fuse_qkv) against the three
separate einsums and against the plain Flax GPT step, interleaved in one process (not a test).
Each step's wall time and the process's CPU time (all threads) are both recorded: on a shared
machine the CPU time moves less with the other jobs' load.

    python benchmarks/bench_qkv.py experiments/smoke.yaml [overrides ...] [--steps 24 --rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from foundations.config import load_config
from foundations.train.bench import plain_reference, project_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    runs = {}
    for name, extra in (("fused", "model.fuse_qkv=true"), ("separate", "model.fuse_qkv=false")):
        config = load_config(args.config, [*args.overrides, extra])
        rows = np.random.default_rng(0).integers(
            0, 256, (config.train.batch_size, config.data.seq_len + 1)).astype(np.int32)
        trainer, _, compile_s, run = project_step(config, rows)
        runs[name] = (compile_s, run)
    reference = plain_reference(config)
    if reference is None:
        raise SystemExit(f"{args.config}: not a GPT-2 shape the plain step can stand in for "
                         "(foundations/train/bench.py plain_reference)")
    _, compile_s, run, _ = reference
    runs["plain"] = (compile_s, run)
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _, run in runs.values():
        run()
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):   # interleaved, the order reversed every other round
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            for _ in range(per_round):
                start, start_cpu = time.perf_counter(), time.process_time()
                runs[name][1]()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    tokens = config.train.batch_size * config.data.seq_len
    median = {name: statistics.median(t) for name, t in times.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    print(f"{jax.devices()[0].device_kind}, {trainer.counts.total / 1e6:.2f}M parameters, "
          f"{tokens} tokens/step, {len(times['plain'])} steps each")
    for name, (compile_s, _) in runs.items():
        print(f"{name:9s} step {median[name] * 1e3:8.1f} ms  {tokens / median[name]:9,.0f} tokens/s"
              f"  compile {compile_s:5.1f} s  vs plain {median['plain'] / median[name]:.3f}x"
              f"  (CPU time {median_cpu[name] * 1e3:8.1f} ms, "
              f"{median_cpu['plain'] / median_cpu[name]:.3f}x)")


if __name__ == "__main__":
    main()

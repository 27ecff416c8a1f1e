"""Compile time and step time of the layer stack scanned (scan_unroll=1) and fully unrolled, at
4, 12 and 24 layers of a tiny width, interleaved in one process (not a test).

    python benchmarks/bench_unroll.py [--layers 4 12 24] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from foundations.config import load_config
from foundations.train.bench import project_step

SHAPE = ["model.d_model=64", "model.num_heads=2", "model.vocab_size=512", "model.max_seq_len=128",
         "data.seq_len=128", "train.batch_size=8", "data.tokenizer=byte"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 12, 24])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(jax.devices()[0].device_kind)
    for layers in args.layers:
        runs = {}
        for unroll in (1, layers):
            config = load_config(None, [*SHAPE, f"model.num_layers={layers}",
                                        f"model.scan_unroll={unroll}"])
            rows = np.random.default_rng(0).integers(0, 256, (8, 129)).astype(np.int32)
            _, _, compile_s, run = project_step(config, rows)
            run()
            runs[unroll] = (compile_s, run, [])
        for _ in range(args.steps):   # interleaved
            for unroll, (_, run, times) in runs.items():
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
        (c1, _, t1), (cl, _, tl) = runs[1], runs[layers]
        print(f"{layers} layers: scanned compile {c1:.2f} s, step {statistics.median(t1) * 1e3:.1f}"
              f" ms; unrolled compile {cl:.2f} s, step {statistics.median(tl) * 1e3:.1f} ms "
              f"({statistics.median(t1) / statistics.median(tl):.2f}x)", flush=True)


if __name__ == "__main__":
    main()

"""The data pipeline at scale: start-up time and peak memory of the training input against corpus
size (text files tokenized at start vs prepared shards read lazily), and the input pipeline's
own tokens/s at the GPT-2 124M shape (seq_len 1024).

Each measurement runs in a fresh process: the seconds from the start of `load_text_data` to the
first batch in hand, and that process's peak RSS (ru_maxrss). No model is built: compiling the
model costs the same whatever the corpus size.

    python benchmarks/bench_data.py --small DIR_OR_FILE --large DIR_OR_FILE [--text]
    python benchmarks/bench_data.py --throughput SHARDS_DIR [--batch 16] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def first_batch(source: str, seq_len: int, batch: int) -> dict:
    """Start-up of the training input from `source` (a prepared directory, or text files)."""
    from pathlib import Path

    from foundations.config import load_config
    from foundations.data.pipeline import load_text_data, train_iterator
    key = "data.shards" if (Path(source) / "manifest.json").is_file() else "data.train_files"
    value = source if key == "data.shards" else f"[{source}]"
    config = load_config(None, [f"{key}={value}", f"data.seq_len={seq_len}",
                                "model.max_seq_len=1024", "data.fallback_encoding=latin-1"])
    started = time.perf_counter()
    data = load_text_data(config.data)
    next(train_iterator(data.train_tokens, seq_len, batch, 0))
    seconds = time.perf_counter() - started
    return {"source": source, "seconds": round(seconds, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def throughput(shards: str, seq_len: int, batch: int, batches: int) -> dict:
    from foundations.config import load_config
    from foundations.data.pipeline import load_text_data, train_iterator
    config = load_config(None, [f"data.shards={shards}", f"data.seq_len={seq_len}",
                                "model.max_seq_len=1024"])
    data = load_text_data(config.data)
    iterator = train_iterator(data.train_tokens, seq_len, batch, 0)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": round(batches * batch * seq_len / seconds),
            "batch": batch, "seq_len": seq_len}


def in_fresh_process(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small")
    parser.add_argument("--large")
    parser.add_argument("--throughput")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        source, seq_len, batch = args.child
        print(json.dumps(first_batch(source, int(seq_len), int(batch))))
        return
    if args.throughput:
        print(json.dumps(throughput(args.throughput, args.seq_len, args.batch, args.batches)))
        return
    for source in (args.small, args.large):
        print(json.dumps(in_fresh_process(source, str(args.seq_len), str(args.batch))))


if __name__ == "__main__":
    main()

"""Benchmark: the project's BPE trainer vs SentencePiece's, and encode speed of each path.

    python benchmarks/bench_tokenizers.py [DIR] [--vocab-size 8192]

DIR (default: the bundled foundations/data/corpora/gutenberg) holds *.txt books. Files that are not UTF-8 are read as
Latin-1 and re-written as UTF-8 to a scratch folder first, since all trainers require UTF-8.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foundations.data.files import BUNDLED_CORPORA  # noqa: E402
from foundations.tokenizers.bpe import BPETokenizer  # noqa: E402
from foundations.tokenizers.spm import SentencePieceTokenizer  # noqa: E402

GPT2_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "gpt2"


def utf8_copies(directory: Path, scratch: Path) -> list[Path]:
    """UTF-8 copies of directory/*.txt in scratch (Latin-1 fallback), in sorted order."""
    copies = []
    for path in sorted(directory.glob("*.txt")):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
            print(f"  note: {path.name} is not UTF-8; read as Latin-1")
        copy = scratch / path.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    if not copies:
        raise SystemExit(f"no *.txt files in {directory}")
    return copies


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def encode_all(encode, texts):
    return sum(len(encode(text)) for text in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(BUNDLED_CORPORA / "gutenberg"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--spm-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        files = utf8_copies(Path(args.directory), Path(scratch))
        texts = [path.read_text(encoding="utf-8") for path in files]
        megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
        words = sum(len(text.split()) for text in texts)
        print(f"corpus: {len(files)} files, {megabytes:.2f} MB, {words:,} words; "
              f"vocab size {args.vocab_size:,}; {os.cpu_count()} CPUs")

        bpe, bpe_seconds = timed(BPETokenizer.train, files, args.vocab_size)
        spm, spm_seconds = timed(SentencePieceTokenizer.train, files, args.vocab_size,
                                 model_type="bpe", num_threads=args.spm_threads)
        print(f"\ntraining (vocab {args.vocab_size:,})")
        print(f"  project BPE trainer (1 thread, Python): {bpe_seconds:7.2f} s")
        print(f"  sentencepiece BPE ({args.spm_threads} threads, C++):    {spm_seconds:7.2f} s")
        print(f"  ratio: {bpe_seconds / spm_seconds:.1f}x")

        rows = []
        reference_tokens, seconds = timed(encode_all, bpe.encode_reference, texts)
        rows.append(("project BPE, reference path (Python)", reference_tokens, seconds))
        fast_tokens, seconds = timed(encode_all, bpe._tiktoken.encode_ordinary, texts)
        rows.append(("project BPE, tiktoken fast path", fast_tokens, seconds))
        assert all(bpe.encode_reference(t) == bpe._tiktoken.encode_ordinary(t) for t in texts[:2])
        tokens, seconds = timed(encode_all, spm.encode, texts)
        rows.append(("sentencepiece BPE", tokens, seconds))
        if (GPT2_DIR / "encoder.json").is_file():
            gpt2 = BPETokenizer.from_gpt2_files(GPT2_DIR / "encoder.json", GPT2_DIR / "vocab.bpe")
            tokens, seconds = timed(encode_all, gpt2.encode, texts)
            rows.append(("GPT-2 (50,257, tiktoken) for scale", tokens, seconds))

        print(f"\n{'encoder':<38} {'MB/s':>8} {'tokens':>11} {'tokens/word':>12}")
        for name, tokens, seconds in rows:
            print(f"{name:<38} {megabytes / seconds:>8.2f} {tokens:>11,} {tokens / words:>12.3f}")
        if reference_tokens != fast_tokens:
            raise SystemExit("reference and tiktoken paths disagree!")


if __name__ == "__main__":
    main()

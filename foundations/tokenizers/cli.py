"""`foundations tokenize ...`: train a tokenizer, show how one splits text, compare several on files.

`add_tokenize_parser(subparsers)` plugs the commands into the main CLI; each leaf parser sets
`func`, so the caller runs `args.func(args)`.
"""

from __future__ import annotations

import argparse
import time

from foundations.tokenizers import load_tokenizer
from foundations.tokenizers.corpus import NEWLINES, read_text_file, with_newlines

KINDS = ("bpe", "spm", "wordpiece")


def add_tokenize_parser(subparsers) -> argparse.ArgumentParser:
    """Add `tokenize` with sub-commands train / encode / stats to an argparse subparsers object."""
    tokenize = subparsers.add_parser("tokenize", help="train, inspect and compare tokenizers")
    commands = tokenize.add_subparsers(dest="tokenize_command", metavar="{train,encode,stats}")
    commands.required = True

    train = commands.add_parser("train", help="train a tokenizer on text files")
    train.add_argument("--kind", choices=KINDS, default="bpe")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="directory to save the tokenizer in")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                       help="SentencePiece model type (only for --kind spm)")
    train.add_argument("--newlines", choices=NEWLINES, default="normalize",
                       help="normalize: \\r\\n and lone \\r are read as \\n (like data.newlines)")
    train.add_argument("files", nargs="+", help="UTF-8 text files")
    train.set_defaults(func=train_command)

    encode = commands.add_parser("encode", help="print the pieces and ids of a text")
    encode.add_argument("--tokenizer", required=True, help="'byte' or a saved tokenizer directory")
    encode.add_argument("text")
    encode.set_defaults(func=encode_command)

    stats = commands.add_parser("stats", help="compare tokenizers on text files")
    stats.add_argument("--tokenizer", action="append", required=True, dest="tokenizers",
                       help="'byte' or a saved tokenizer directory; repeat to compare")
    stats.add_argument("files", nargs="+", help="UTF-8 text files")
    stats.set_defaults(func=stats_command)
    return tokenize


def train_tokenizer(kind: str, files: list[str], vocab_size: int, model_type: str = "bpe",
                    newlines: str = "normalize"):
    """Train a tokenizer of `kind` ("bpe", "spm" or "wordpiece") on `files`, their line endings
    normalised unless newlines="keep"."""
    with with_newlines(files, newlines) as readable:
        return _train(kind, readable, vocab_size, model_type)


def _train(kind: str, files: list[str], vocab_size: int, model_type: str):
    if kind == "bpe":
        from foundations.tokenizers.bpe import BPETokenizer
        return BPETokenizer.train(files, vocab_size)
    if kind == "spm":
        from foundations.tokenizers.spm import SentencePieceTokenizer
        return SentencePieceTokenizer.train(files, vocab_size, model_type=model_type)
    if kind == "wordpiece":
        from foundations.tokenizers.wordpiece import WordPieceTokenizer
        return WordPieceTokenizer.train(files, vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; known: {KINDS}")


def train_command(args) -> None:
    start = time.perf_counter()
    tokenizer = train_tokenizer(args.kind, args.files, args.vocab_size, args.model_type,
                                args.newlines)
    tokenizer.save(args.out)
    print(f"trained {args.kind} tokenizer, vocab size {tokenizer.vocab_size}, "
          f"in {time.perf_counter() - start:.1f}s; saved to {args.out}")


def piece_of(tokenizer, token_id: int) -> str:
    """Printable form of one token: a quoted string, or b'...' for bytes that are not whole UTF-8."""
    if hasattr(tokenizer, "decode_bytes") or (getattr(tokenizer, "kind", None) == "byte" and token_id < 256):
        data = tokenizer.decode_bytes([token_id]) if hasattr(tokenizer, "decode_bytes") \
            else bytes([token_id])
        try:
            return repr(data.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(data)
    if hasattr(tokenizer, "id_to_piece"):
        return repr(tokenizer.id_to_piece(token_id))
    return repr(tokenizer.decode([token_id]))


def encode_command(args) -> None:
    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(args.text)
    print(f"{len(ids)} tokens")
    for token_id in ids:
        print(f"{token_id:>8}  {piece_of(tokenizer, token_id)}")


def tokenizer_stats(tokenizer, texts: list[str]) -> dict:
    """Tokens per whitespace-separated word, UTF-8 bytes per token, and share of the vocab used."""
    tokens, used = 0, set()
    for text in texts:
        ids = tokenizer.encode(text)
        tokens += len(ids)
        used.update(ids)
    words = sum(len(text.split()) for text in texts)
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return {"tokens": tokens, "tokens_per_word": tokens / max(words, 1),
            "bytes_per_token": num_bytes / max(tokens, 1), "vocab_size": tokenizer.vocab_size,
            "vocab_used": len(used) / tokenizer.vocab_size}


def stats_command(args) -> None:
    texts = [read_text_file(path) for path in args.files]
    header = f"{'tokenizer':<30} {'vocab':>7} {'tokens':>10} {'tok/word':>9} {'bytes/tok':>10} {'vocab used':>11}"
    print(header)
    print("-" * len(header))
    for spec in args.tokenizers:
        row = tokenizer_stats(load_tokenizer(spec), texts)
        name = spec if len(spec) <= 30 else "..." + spec[-27:]
        print(f"{name:<30} {row['vocab_size']:>7} {row['tokens']:>10} "
              f"{row['tokens_per_word']:>9.3f} {row['bytes_per_token']:>10.3f} "
              f"{row['vocab_used']:>10.1%}")


def main(argv=None) -> None:
    """Run the tokenize commands alone: `python -m foundations.tokenizers.cli train ...`."""
    parser = argparse.ArgumentParser(prog="foundations")
    add_tokenize_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tokenize", *(argv if argv is not None else __import__("sys").argv[1:])])
    args.func(args)


if __name__ == "__main__":
    main()

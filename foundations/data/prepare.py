"""`foundations prepare`: tokenize a corpus once into ArrayRecord shards that training streams.

Documents (a file, a JSONL record, or the text between separators) are deduplicated by content
hash, split into training and held-out validation *documents*, tokenized in worker processes and
joined (end-of-text after each) into one token stream per split. A stream is cut into records of
`RECORD_TOKENS` tokens, written to shards of whole records; `manifest.json` (written last) holds a
copy of the tokenizer, the token counts per shard and per source, the document boundaries and a
content hash. Shards are written under a temporary name and renamed once complete, so an
interrupted prepare leaves nothing that training would read; a rerun on unchanged inputs is a
no-op.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from foundations.config import ConfigError, PrepareConfig, section_from_flags
from foundations.data.encode import encode_task, start_worker
from foundations.data.files import expand_files, jsonl_records, read_text
from foundations.tokenizers import configured_tokenizer

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
RECORD_TOKENS = 4096           # tokens per ArrayRecord record (the unit of a random read)
TEXT_SUFFIXES = (".txt", ".jsonl")
TASK_CHARS = 1 << 22           # about this much text per worker task
SPLITS = ("train", "val")


class PrepareOptions(PrepareConfig):
    """The options (config.PrepareConfig: their defaults, checks and docs live there)."""

    def settings(self) -> dict:
        """What the output depends on besides the inputs and the tokenizer's files."""
        return {"val_fraction": self.val_fraction, "text_key": self.text_key,
                "separator": self.separator, "min_chars": self.min_chars,
                "fallback_encoding": self.fallback_encoding, "shard_tokens": self.shard_tokens,
                "newlines": self.newlines,
                "record_tokens": RECORD_TOKENS}


# ------------------------------------------------------------------ inputs and documents

def documents(path: Path, options: PrepareOptions) -> list[str]:
    """The documents of one file: JSONL records' `text_key`, pieces between separators, or the
    whole file."""
    text = read_text(path, options.fallback_encoding, "--fallback-encoding", options.newlines)
    if path.suffix == ".jsonl":
        docs = []
        for line_number, record in jsonl_records(path, text):
            if not isinstance(record, dict) or not isinstance(record.get(options.text_key), str):
                raise ConfigError(f"{path}:{line_number}: no string field "
                                  f"{options.text_key!r} (set --text-key)")
            docs.append(record[options.text_key])
        return docs
    if options.separator:
        return text.split(options.separator)
    return [text]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_validation(doc_hash: str, val_fraction: float) -> bool:
    """A document's split from its hash: stable whatever the order or number of inputs."""
    return int(doc_hash[:8], 16) < val_fraction * 2 ** 32


@dataclass
class SourceStats:
    """Counts for one input file, as the manifest reports them."""
    documents: int = 0
    bytes: int = 0
    duplicates: int = 0
    too_short: int = 0
    tokens: dict = field(default_factory=lambda: {split: 0 for split in SPLITS})


def kept_documents(files: list[Path], options: PrepareOptions, stats: list | None = None):
    """(source index, text, utf-8 bytes, content hash) of each document kept, in input order:
    exact duplicates and documents under min_chars are dropped (and counted into `stats`)."""
    seen = set()
    for index, path in enumerate(files):
        for text in documents(path, options):
            if len(text.strip()) < options.min_chars:
                if stats is not None:
                    stats[index].too_short += 1
                continue
            doc_hash = content_hash(text)
            if doc_hash in seen:
                if stats is not None:
                    stats[index].duplicates += 1
                continue
            seen.add(doc_hash)
            n_bytes = len(text.encode("utf-8"))
            if stats is not None:
                stats[index].documents += 1
                stats[index].bytes += n_bytes
            yield index, text, n_bytes, doc_hash


def plan_splits(files: list[Path], options: PrepareOptions):
    """A first pass that holds only hashes: (the split of each kept document by hash, stats per
    source). Neither split is ever empty."""
    stats = [SourceStats() for _ in files]
    splits = {doc_hash: "val" if is_validation(doc_hash, options.val_fraction) else "train"
              for _, _, _, doc_hash in kept_documents(files, options, stats)}
    if len(splits) < 2:
        raise ConfigError(f"{len(splits)} document(s) left after dropping duplicates and "
                          f"documents under --min-chars={options.min_chars}; a training and a "
                          "validation split need at least two (use --separator or JSONL to "
                          "split a file)")
    for split, other, pick in (("val", "train", min), ("train", "val", max)):
        if split not in splits.values():  # by hash: still independent of the input order
            splits[pick(h for h, s in splits.items() if s == other)] = split
    return splits, stats


# ------------------------------------------------------------------ tokenizing in workers

def tasks(docs, chars: int = TASK_CHARS):
    """Consecutive documents grouped into tasks of about `chars` characters."""
    group, size = [], 0
    for doc in docs:
        group.append(doc)
        size += len(doc[1])
        if size >= chars:
            yield group
            group, size = [], 0
    if group:
        yield group


def encoded(groups, options: PrepareOptions, workers: int):
    """(task, its token arrays) in order, from a pool of worker processes that is fed a few
    tasks ahead (so the corpus is never all in memory). The byte tokenizer runs here: its ids
    are the bytes, and a pool would only copy them back and forth."""
    if options.tokenizer == "byte" or workers == 1:
        start_worker(options.tokenizer)
        for group in groups:
            yield group, encode_task([doc[1] for doc in group])
        return
    context = multiprocessing.get_context("spawn")  # safe next to JAX and tokenizer threads
    with context.Pool(workers, initializer=start_worker, initargs=(options.tokenizer,)) as pool:
        ahead = []
        for group in groups:
            ahead.append((group, pool.apply_async(encode_task, ([doc[1] for doc in group],))))
            if len(ahead) > 2 * workers:
                done, result = ahead.pop(0)
                yield done, result.get()
        for done, result in ahead:
            yield done, result.get()


# ------------------------------------------------------------------ writing shards

def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class ShardWriter:
    """Streams a split's tokens into records of RECORD_TOKENS and shards of whole records;
    each shard is written as `<name>.tmp` and renamed when prepare finishes (`commit`)."""

    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split = out, split
        self.records_per_shard = max(1, shard_tokens // RECORD_TOKENS)
        self.record, self.filled = np.empty(RECORD_TOKENS, dtype), 0
        self.shards, self.writer = [], None

    def add(self, tokens: np.ndarray) -> None:
        done = 0
        while done < len(tokens):
            take = min(RECORD_TOKENS - self.filled, len(tokens) - done)
            self.record[self.filled:self.filled + take] = tokens[done:done + take]
            self.filled, done = self.filled + take, done + take
            if self.filled == RECORD_TOKENS:
                self._write_record()

    def finish(self) -> None:
        if self.filled:
            self._write_record()
        self._close_shard()

    def _write_record(self) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter
        if self.writer is None:
            name = f"{self.split}-{len(self.shards):05d}.arrayrecord"
            self.writer = ArrayRecordWriter(str(self.out / f"{name}.tmp"),
                                            "group_size:1,uncompressed")
            self.digest = hashlib.sha256()
            self.shards.append({"file": name, "tokens": 0, "records": 0})
        data = self.record[:self.filled].tobytes()
        self.writer.write(data)
        self.digest.update(data)
        shard = self.shards[-1]
        shard["tokens"] += self.filled
        shard["records"] += 1
        self.filled = 0
        if shard["records"] == self.records_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        shard = self.shards[-1]
        shard["bytes"] = (self.out / f"{shard['file']}.tmp").stat().st_size
        shard["sha256"] = self.digest.hexdigest()

    def commit(self) -> None:
        for shard in self.shards:
            os.replace(self.out / f"{shard['file']}.tmp", self.out / shard["file"])


# ------------------------------------------------------------------ the command

def fingerprint(files: list[Path], options: PrepareOptions) -> str:
    """What a rerun compares: the inputs (path, size, modification time), the tokenizer's files
    and the settings."""
    digest = hashlib.sha256(json.dumps(options.settings(), sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    if options.tokenizer == "byte":
        digest.update(b"byte")
    else:
        for path in sorted(Path(options.tokenizer).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a readable manifest ({e}); delete {out} and prepare "
                          "again") from None


def prepare(inputs: list[str], out: str | Path, options: PrepareOptions,
            progress: bool = True) -> dict:
    """Tokenizes `inputs` into shards under `out`; returns the manifest (the existing one when
    the inputs, tokenizer and settings are unchanged)."""
    out = Path(out)
    files = expand_files(inputs, TEXT_SUFFIXES)
    tokenizer = configured_tokenizer(options.tokenizer, "--tokenizer")
    stamp = fingerprint(files, options)
    existing = read_manifest(out)
    if existing is not None:
        if existing.get("fingerprint") == stamp:
            return existing
        raise ConfigError(f"{out} holds shards of other inputs or settings; use a new --out or "
                          "delete it first")
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("*.tmp"):  # an interrupted prepare: start that shard afresh
        leftover.unlink()

    started = time.perf_counter()
    splits, stats = plan_splits(files, options)
    eos = getattr(tokenizer, "eos_id", None)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: ShardWriter(out, split, dtype, options.shard_tokens) for split in SPLITS}
    boundaries, split_bytes = {split: [] for split in SPLITS}, {split: 0 for split in SPLITS}
    total_bytes = sum(s.bytes for s in stats)
    workers = options.workers or os.cpu_count() or 1
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=not progress,
               dynamic_ncols=True)
    for group, arrays in encoded(tasks(kept_documents(files, options)), options, workers):
        for (source, _, n_bytes, doc_hash), ids in zip(group, arrays):
            split = splits[doc_hash]
            if eos is not None:
                ids = np.append(ids, np.int32(eos))
            writers[split].add(ids)
            boundaries[split].append(len(ids))
            split_bytes[split] += n_bytes
            stats[source].tokens[split] += len(ids)
            bar.update(n_bytes)
    for writer in writers.values():
        writer.finish()
    bar.close()
    seconds = time.perf_counter() - started

    tokenizer.save(out / TOKENIZER_DIR)
    for writer in writers.values():
        writer.commit()
    manifest = {
        "format": "foundations-shards-1",
        "fingerprint": stamp,
        "tokenizer": TOKENIZER_DIR, "tokenizer_kind": getattr(tokenizer, "kind", "byte"),
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
        "record_tokens": RECORD_TOKENS, "settings": options.settings(),
        "splits": {split: {
            "tokens": sum(s["tokens"] for s in writers[split].shards),
            "bytes": split_bytes[split],
            "documents": len(boundaries[split]),
            "shards": writers[split].shards,
            "document_tokens": boundaries[split],
        } for split in SPLITS},
        "sources": [{"file": str(path), "documents": s.documents, "bytes": s.bytes,
                     "duplicates_dropped": s.duplicates, "too_short_dropped": s.too_short,
                     "tokens": s.tokens} for path, s in zip(files, stats)],
        "duplicates_dropped": sum(s.duplicates for s in stats),
        "too_short_dropped": sum(s.too_short for s in stats),
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2),
    }
    manifest["content_hash"] = hashlib.sha256("".join(
        shard["sha256"] for split in SPLITS for shard in writers[split].shards).encode()
        + json.dumps(manifest["splits"], sort_keys=True).encode()).hexdigest()
    temporary = out / f"{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, out / MANIFEST)  # last: only now is the directory a dataset
    return manifest


def add_prepare_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="tokenize text files once into ArrayRecord shards "
                                              "(train with data.shards=DIR)")
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS",
                   help="text (*.txt) or JSONL (*.jsonl) files, or directories of them")
    option_flag(p, "tokenizer")
    p.add_argument("--out", required=True, help="directory for the shards and manifest.json")
    for name in ("val_fraction", "workers", "text_key", "separator", "min_chars",
                 "fallback_encoding", "newlines", "shard_tokens"):
        option_flag(p, name)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=prepare_command)


def option_flag(parser, name: str) -> None:
    """--NAME for the PrepareConfig field NAME: its type (or choices), default and doc."""
    f, hint = {f.name: f for f in fields(PrepareConfig)}[name], \
        typing.get_type_hints(PrepareConfig)[name]
    kwargs = {"help": f.metadata["doc"]}
    if f.default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
    if typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = typing.get_args(hint)
    elif hint in (int, float):
        kwargs["type"] = hint
    parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def prepare_command(args) -> None:
    values = {f.name: getattr(args, f.name) for f in fields(PrepareConfig)}
    if values["separator"]:
        values["separator"] = values["separator"].encode().decode("unicode_escape")
    options = section_from_flags(PrepareOptions, values)   # checked as a config's knobs are
    before = read_manifest(Path(args.out))
    manifest = prepare(args.inputs, args.out, options, progress=not args.no_progress)
    if before is not None:
        print(f"{args.out} is up to date ({MANIFEST} matches the inputs and settings)")
        return
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"{args.out}: {train['tokens']:,} training tokens ({train['documents']} documents, "
          f"{len(train['shards'])} shards), {val['tokens']:,} validation tokens "
          f"({val['documents']} documents); dropped {manifest['duplicates_dropped']} duplicate "
          f"and {manifest['too_short_dropped']} too-short documents; "
          f"{manifest['mb_per_s']:.1f} MB/s")

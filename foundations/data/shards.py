"""Training from `foundations prepare`'s shards: a split read lazily as one long token array.

`ShardTokens` looks like a 1-D array to `PackedWindows` (length and slices), but a slice reads
only the ArrayRecord records it covers, so memory and start-up do not grow with the corpus.
`load_shard_data` opens `data.shards` (or each dataset of `data.mixture`) after checking that
every shard is there, whole, and made with the configured tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from foundations.config import ConfigError, DataConfig
from foundations.data.prepare import MANIFEST, TOKENIZER_DIR, read_manifest
from foundations.data.text import TextData
from foundations.tokenizers import configured_tokenizer, same_tokenizer


class ShardTokens:
    """The token stream of one split of a prepared directory, read record by record."""

    def __init__(self, directory: str | Path, split: str, manifest: dict | None = None):
        self.directory = Path(directory)
        manifest = manifest or open_manifest(self.directory)
        info = manifest["splits"][split]
        self.shards = info["shards"]
        for shard in self.shards:  # a missing or truncated file is found now, not mid-run
            path = self.directory / shard["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                state = "missing" if size is None else f"{size} bytes, not {shard['bytes']}"
                raise ConfigError(f"shard {path} is {state} as {MANIFEST} records; prepare "
                                  "the data again")
        self.dtype = np.dtype(manifest["dtype"])
        self.record_tokens = manifest["record_tokens"]
        self.num_tokens = info["tokens"]
        self.first_record = np.cumsum([0] + [s["records"] for s in self.shards])
        paths = [str(self.directory / s["file"]) for s in self.shards]
        try:
            self.source = grain.sources.ArrayRecordDataSource(paths)
        except Exception:  # a damaged header or index: find which file it is
            for path in paths:
                try:
                    grain.sources.ArrayRecordDataSource([path])
                except Exception as e:
                    raise ConfigError(f"shard {path} is corrupt ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0]})") from None
            raise
        if len(self.source) != self.first_record[-1]:
            raise ConfigError(f"the {split} shards of {self.directory} hold {len(self.source)} "
                              f"records, not {self.first_record[-1]} as {MANIFEST} records")

    def __len__(self) -> int:
        return self.num_tokens

    def shard_of(self, record: int) -> Path:
        return self.directory / self.shards[int(np.searchsorted(self.first_record, record,
                                                                "right")) - 1]["file"]

    def record(self, index: int) -> np.ndarray:
        """Record `index` as tokens; a record of the wrong size or one that fails to read is a
        one-line error naming its shard."""
        expected = min(self.record_tokens, self.num_tokens - index * self.record_tokens)
        try:
            data = self.source[index]
        except Exception as e:
            raise ConfigError(f"shard {self.shard_of(index)} is corrupt (record {index}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0]})") from None
        if len(data) != expected * self.dtype.itemsize:
            raise ConfigError(f"shard {self.shard_of(index)} is corrupt (record {index} holds "
                              f"{len(data)} bytes, not {expected * self.dtype.itemsize})")
        return np.frombuffer(data, self.dtype)

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, step = window.indices(self.num_tokens)
        if step != 1:
            raise ValueError("ShardTokens reads contiguous slices only")
        if stop <= start:
            return np.zeros(0, np.int32)
        first, last = start // self.record_tokens, (stop - 1) // self.record_tokens
        tokens = np.concatenate([self.record(i) for i in range(first, last + 1)])
        offset = first * self.record_tokens
        return tokens[start - offset:stop - offset].astype(np.int32)


def open_manifest(directory: Path) -> dict:
    """A prepared directory's manifest; a directory without one (not prepared, or a prepare
    that never finished) is refused."""
    if not directory.is_dir():
        raise ConfigError(f"data.shards: {directory} is not a directory (make one with "
                          "`foundations prepare`)")
    manifest = read_manifest(directory)
    if manifest is None:
        raise ConfigError(f"data.shards: {directory} has no {MANIFEST} (not prepared, or a "
                          "prepare that did not finish: run it again)")
    return manifest


def check_tokenizer(spec: str, directory: Path) -> None:
    """data.tokenizer must be the tokenizer the shards were made with (their copy of it)."""
    kept = directory / TOKENIZER_DIR
    if not same_tokenizer(spec, kept):
        raise ConfigError(f"data.tokenizer={spec!r} is not the tokenizer {directory} was "
                          f"prepared with; set data.tokenizer={kept}")


def open_split(directory: str, split: str, tokenizer_spec: str) -> tuple[ShardTokens, dict]:
    path = Path(directory).expanduser()
    manifest = open_manifest(path)
    check_tokenizer(tokenizer_spec, path)
    return ShardTokens(path, split, manifest), manifest


def load_shard_data(cfg: DataConfig):
    """TextData whose token arrays are read lazily from data.shards (or, for a mixture, each
    dataset's training split, validating on the first dataset's held-out documents)."""
    tokenizer = configured_tokenizer(cfg.tokenizer)
    directories = [cfg.shards] if cfg.shards else [m.shards for m in cfg.mixture]
    train = [open_split(d, "train", cfg.tokenizer)[0] for d in directories]
    val, manifest = open_split(directories[0], "val", cfg.tokenizer)
    for name, tokens in [("validation", val)] + [("training", t) for t in train]:
        if len(tokens) < cfg.seq_len + 1:
            raise ConfigError(f"{name} shards of {tokens.directory} hold {len(tokens)} tokens, "
                              f"fewer than one window of data.seq_len + 1 = {cfg.seq_len + 1}")
    bytes_per_token = manifest["splits"]["val"]["bytes"] / manifest["splits"]["val"]["tokens"]
    return TextData(tokenizer, train[0] if cfg.shards else train, val, bytes_per_token)
